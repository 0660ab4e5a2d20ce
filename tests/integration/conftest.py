"""Harness for Starling's black-box integration tests.

Selects the broker under test with STARLING_TEST_BROKER ("starling", the
default, or "mosquitto" as a reference implementation) and provides the
`broker` factory fixture: every call starts a fresh broker on 127.0.0.1 on a
free port and returns a handle (with `admin=True`, Starling also serves its
admin API on another free port, `handle.admin_port`; free ports come from
free_port(), see tests/ports.py; otherwise the admin API
is off, so that no test binds the default port 18083); all brokers a test started are stopped (and,
for Starling, checked for a clean exit without sanitizer reports) when the
test ends.

Temporary files: the brokers' configurations, logs and stores go under
pytest's temporary directory (see tests/conftest.py: one directory under
$TMPDIR, removed when pytest exits) and are removed as soon as the test ends,
unless STARLING_TEST_KEEP_TMP=1.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # tests/: ports.py

import ports  # noqa: E402

BROKER_KIND = os.environ.get("STARLING_TEST_BROKER", "starling").strip().lower()
STARLING_BIN = os.environ.get("STARLING_TEST_BIN", str(REPO / "build" / "asan" / "node" / "starling"))
STARLING_WORKERS = int(os.environ.get("STARLING_TEST_WORKERS", "2"))
MOSQUITTO_BIN = os.environ.get("MOSQUITTO_BIN", "/usr/sbin/mosquitto")

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error")

STARLING_KEYS = {
    "max_packet_size", "receive_maximum", "max_inflight_messages", "max_queued_messages",
    "max_queued_bytes", "queue_full_policy", "queue_qos0_messages", "topic_alias_maximum",
    "max_keepalive", "connect_timeout", "sys_interval", "max_session_expiry",
    "retain_available", "max_qos", "allow_zero_length_clientid", "max_connections",
    "log_level", "persistence", "data_dir", "sync", "api_key", "metrics_auth", "admin_bind",
    "admin_tls", "log_format",
    # the front door (docs/security.md)
    "tls_port", "ws_port", "wss_port", "proxy_protocol", "tls_certfile", "tls_keyfile",
    "tls_cafile", "tls_require_certificate", "tls_use_identity_as_username", "tls_ciphers",
    "tls_min_version", "ws_origins", "allow_anonymous", "password_file", "acl_file",
    "max_connections_per_listener", "max_connection_rate", "max_subscriptions_per_client",
    "max_topic_length", "max_publish_rate",
    # flow control (docs/architecture.md)
    "slow_subscriber_policy", "max_publisher_pause", "max_write_buffer", "workers",
    "max_topic_levels",
}

# Starling key -> mosquitto key, for the options mosquitto has an equivalent of.
MOSQUITTO_EQUIV = {
    "max_packet_size": "max_packet_size",
    "max_inflight_messages": "max_inflight_messages",
    "max_queued_messages": "max_queued_messages",
    "max_queued_bytes": "max_queued_bytes",
    "queue_qos0_messages": "queue_qos0_messages",
    "max_keepalive": "max_keepalive",
    "sys_interval": "sys_interval",
    "retain_available": "retain_available",
    "max_qos": "max_qos",
    "allow_zero_length_clientid": "allow_zero_length_clientid",
    "topic_alias_maximum": "max_topic_alias",
    "max_connections": "max_connections",
}


def is_starling():
    return BROKER_KIND == "starling"


def is_mosquitto():
    return BROKER_KIND == "mosquitto"


def free_port():
    """A port for a node, reserved for this test (tests/ports.py): outside
    the ephemeral range, so no client connection or port-0 bind of any
    process is given it, and no other test process picks it until the test
    ends."""
    return ports.reserve(1)[0]


# Passed through to the broker (debug builds): STARLING_TEST_REGISTRY=deferred
# answers every claim of a client id later, from the worker's inbox, as the
# cluster's registry will (node/registry.h).
PASS_THROUGH = ("STARLING_TEST_REGISTRY",)


def clean_env(extra=None):
    """The environment for a broker process: no STARLING_* variables but
    those of PASS_THROUGH, and STARLING_ADMIN_PORT=0 (no admin API on the
    default port 18083, which parallel test runs would fight over) unless
    `extra` sets it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STARLING_") or k in PASS_THROUGH}
    env["STARLING_ADMIN_PORT"] = "0"
    if extra:
        env.update(extra)
    return env


def _fmt(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "starling_only: Starling-specific behaviour, or a case where mosquitto 2.0.11 "
        "deviates from the MQTT specification; skipped when the broker is mosquitto")


def pytest_collection_modifyitems(config, items):
    if not is_mosquitto():
        return
    skip = pytest.mark.skip(reason="starling_only: not checked against mosquitto")
    for item in items:
        if "starling_only" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    if is_starling():
        return f"broker under test: starling {STARLING_BIN} (workers {STARLING_WORKERS})"
    return f"broker under test: {BROKER_KIND} {MOSQUITTO_BIN}"


class Broker:
    """One running broker process."""

    def __init__(self, config, tmpdir, admin=False, env=None):
        self.host = "127.0.0.1"
        self.config = dict(config)
        self.kind = BROKER_KIND
        self._tmpdir = tmpdir
        unknown = set(self.config) - STARLING_KEYS
        if unknown:
            raise ValueError(f"unknown broker config keys: {sorted(unknown)}")
        if self.kind not in ("starling", "mosquitto"):
            raise ValueError(f"STARLING_TEST_BROKER must be starling or mosquitto, not {self.kind!r}")
        if admin and self.kind != "starling":
            pytest.skip("the admin API is Starling's")
        # The ports this fixture and the tests pick (free_port) are reserved
        # against every other test process and never handed out by the
        # kernel (tests/ports.py). A program outside the tests may still
        # bind one first: then the broker exits "address already in use"
        # and is started again on new ones (never for a port the test
        # chose itself).
        for attempt in range(3):
            self.port = free_port()
            self.admin_port = free_port() if admin else None
            self._stopped = False
            self.returncode = None
            self.conf_path = os.path.join(tmpdir, f"broker-{self.port}.conf")
            self.stderr_path = os.path.join(tmpdir, f"broker-{self.port}.stderr")
            argv = self._starling_conf() if self.kind == "starling" else self._mosquitto_conf()
            self._stderr_file = open(self.stderr_path, "wb")
            extra = dict(env or {})
            if admin:
                extra["STARLING_ADMIN_PORT"] = str(self.admin_port)
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._stderr_file,
                                         stderr=self._stderr_file, env=clean_env(extra),
                                         cwd=tmpdir)
            if self._wait_ready(may_retry=attempt < 2):
                break
            self._stderr_file.close()
        if admin:
            self._wait_healthy()

    def _starling_conf(self):
        if not os.path.exists(STARLING_BIN):
            pytest.fail(f"Starling binary not found: {STARLING_BIN} (set STARLING_TEST_BIN)")
        lines = [
            "bind_address 127.0.0.1",
            f"port {self.port}",
            f"workers {STARLING_WORKERS}",
        ]
        cfg = dict(self.config)
        lines.append(f"log_level {cfg.pop('log_level', 'info')}")
        # each broker its own store unless the test shares one on purpose
        lines.append(f"data_dir {cfg.pop('data_dir', os.path.join(self._tmpdir, f'data-{self.port}'))}")
        for k, v in cfg.items():
            lines.append(f"{k} {_fmt(v)}")
        with open(self.conf_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return [STARLING_BIN, "-c", self.conf_path]

    def _mosquitto_conf(self):
        lines = [
            "per_listener_settings false",
            "persistence false",
            "log_dest stderr",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
        ]
        for k, v in self.config.items():
            mk = MOSQUITTO_EQUIV.get(k)
            if mk is not None:
                lines.append(f"{mk} {_fmt(v)}")
        with open(self.conf_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return [MOSQUITTO_BIN, "-c", self.conf_path]

    def stderr_text(self):
        try:
            self._stderr_file.flush()
        except Exception:
            pass
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def _lost_own_port(self):
        """The broker exited because a port this fixture picked was taken."""
        text = self.stderr_text()
        return "address already in use" in text.lower() and any(
            f":{p}" in text for p in (self.port, self.admin_port) if p)

    def _wait_ready(self, may_retry=False):
        """True once listening; False (may_retry) when the broker lost a port
        this fixture picked to another process and should be started again."""
        # every listener the test configured, not only the MQTT port: the
        # workers bind them one after the other
        ports = [self.port] + [int(self.config[k]) for k in ("tls_port", "ws_port", "wss_port")
                               if int(self.config.get(k, 0) or 0)]
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._stopped = True
                self.returncode = self.proc.returncode
                if may_retry and self._lost_own_port():
                    return False
                pytest.fail(f"{self.kind} exited with {self.proc.returncode} before listening; "
                            f"stderr:\n{self.stderr_text()}")
            try:
                for port in ports:
                    s = socket.create_connection((self.host, port), timeout=0.5)
                    s.close()
            except OSError:
                time.sleep(0.01)
                continue
            if not all(self._owns_port(port) for port in ports):
                # another process (a test session running beside this one)
                # took the port free_port() chose: this broker cannot bind
                # it and exits (reported above), never taken for ready
                time.sleep(0.01)
                continue
            return True
        self._kill()
        pytest.fail(f"{self.kind} did not listen on {self.port} within {READY_TIMEOUT} s; "
                    f"stderr:\n{self.stderr_text()}")

    def _owns_port(self, port):
        """Does this broker's process hold a socket listening on port?
        (/proc: its socket inodes against the listening TCP sockets.)"""
        try:
            mine = set()
            for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{self.proc.pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    mine.add(link[8:-1])
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                with open(table) as f:
                    for line in f.readlines()[1:]:
                        fields = line.split()
                        if (fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
                                and fields[9] in mine):
                            return True
        except OSError:
            return True  # no /proc to look in: the connection has to do
        return False

    def _wait_healthy(self):
        """Wait until GET /api/v1/health on the admin port answers 200 (the
        node's workers listen and its main loop runs)."""
        import http.client
        deadline = time.monotonic() + READY_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._stopped = True
                self.returncode = self.proc.returncode
                pytest.fail(f"starling exited with {self.proc.returncode}; "
                            f"stderr:\n{self.stderr_text()}")
            if self.config.get("admin_tls") in (True, "true", "on"):
                import ssl  # HTTPS: readiness only, the tests verify the certificate
                conn = http.client.HTTPSConnection(self.host, self.admin_port, timeout=2,
                                                   context=ssl._create_unverified_context())
            else:
                conn = http.client.HTTPConnection(self.host, self.admin_port, timeout=2)
            try:
                conn.request("GET", "/api/v1/health")
                r = conn.getresponse()
                last = (r.status, r.read())
                if r.status == 200:
                    return
            except OSError as e:
                last = e
            finally:
                conn.close()
            time.sleep(0.01)
        self._kill()
        pytest.fail(f"starling's admin API not healthy within {READY_TIMEOUT} s: {last}")

    def _kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._stopped = True

    def alive(self):
        return self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, check=True):
        """Stop the broker with `sig` (None: send nothing, it was already
        signalled), wait for it and check its exit.

        Returns the exit code. Idempotent."""
        if self._stopped:
            return self.returncode
        self._stopped = True
        if self.proc.poll() is None:
            if sig is not None:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self.returncode = self.proc.returncode
                self._stderr_file.close()
                if check:
                    pytest.fail(f"{self.kind} did not stop within {STOP_TIMEOUT} s of signal {sig}; "
                                f"stderr:\n{self.stderr_text()}")
                return self.returncode
        self.returncode = self.proc.returncode
        text = self.stderr_text()
        self._stderr_file.close()
        if check and self.kind == "starling":
            bad = [m for m in SANITIZER_MARKERS if m in text]
            if self.returncode != 0 or bad:
                print(f"---- starling stderr (port {self.port}) ----\n{text}")
                pytest.fail(f"starling exit code {self.returncode}, sanitizer reports: {bad}; "
                            f"stderr:\n{text[-20000:]}")
        return self.returncode

    def __repr__(self):
        return f"<Broker {self.kind} {self.host}:{self.port} pid {self.proc.pid}>"


@pytest.fixture
def broker(tmp_path_factory):
    """Factory: broker(**config) starts a fresh broker and returns its handle;
    broker(admin=True, **config) also serves the admin API on a free port;
    `_env` adds variables to the broker's environment."""
    started = []
    tmpdir = str(tmp_path_factory.mktemp("brokers"))

    def start(admin=False, _env=None, **config):
        b = Broker(config, tmpdir, admin=admin, env=_env)
        started.append(b)
        return b

    yield start
    failures = []
    for b in started:
        try:
            b.stop()
        except BaseException as e:  # pytest.fail raises an OutcomeException
            failures.append(str(e))
    if not os.environ.get("STARLING_TEST_KEEP_TMP"):
        shutil.rmtree(tmpdir, ignore_errors=True)
    if failures:
        pytest.fail("\n".join(failures))
