"""The starling command line: options, config errors, signals (Starling only)."""

import os
import re
import signal
import socket
import subprocess
import tempfile
import time

import pytest

import mqttraw as M
from conftest import SANITIZER_MARKERS, STARLING_BIN, STARLING_WORKERS, clean_env, free_port
from helpers import raw, uid

pytestmark = pytest.mark.starling_only


def _run(args, env_extra=None, timeout=10):
    if not os.path.exists(STARLING_BIN):
        pytest.fail(f"Starling binary not found: {STARLING_BIN}")
    # a scratch working directory: a node that starts opens its store in
    # ./data, which must not land in the checkout
    with tempfile.TemporaryDirectory(prefix="starling-cli-") as cwd:
        r = subprocess.run([STARLING_BIN, *args], stdin=subprocess.DEVNULL, capture_output=True,
                           env=clean_env(env_extra), timeout=timeout, cwd=cwd)
    out = r.stdout.decode("utf-8", "replace")
    err = r.stderr.decode("utf-8", "replace")
    bad = [m for m in SANITIZER_MARKERS if m in out + err]
    assert not bad, f"sanitizer report: {bad}\n{err}"
    return r.returncode, out, err


def _conf(lines):
    fd, path = tempfile.mkstemp(prefix="starling-cli-", suffix=".conf")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_cli_version(broker):
    rc, out, err = _run(["-v"])
    assert rc == 0, err
    assert re.search(r"\d+\.\d+", out + err), (out, err)


def test_cli_help(broker):
    rc, out, err = _run(["-h"])
    assert rc == 0, err
    assert "usage" in (out + err).lower(), (out, err)


def test_cli_unknown_option(broker):
    rc, out, err = _run(["--no-such-option"])
    assert rc != 0
    assert err.strip() or out.strip()


def test_cli_config_unknown_key(broker):
    path = _conf(["# a comment", "", "port 1883", "no_such_key 12"])
    try:
        rc, out, err = _run(["-c", path])
    finally:
        os.unlink(path)
    assert rc != 0
    assert f"{path}:4" in err, err
    assert "no_such_key" in err, err


@pytest.mark.parametrize("line", ["port notaport", "max_qos 7", "queue_full_policy sometimes",
                                  "retain_available maybe", "port 70000"])
def test_cli_config_bad_value(broker, line):
    path = _conf(["bind_address 127.0.0.1", line])
    try:
        rc, out, err = _run(["-c", path])
    finally:
        os.unlink(path)
    assert rc != 0
    assert f"{path}:2" in err, err
    assert line.split()[0] in err, err


def test_cli_env_bad_port(broker):
    path = _conf(["bind_address 127.0.0.1", f"port {free_port()}"])
    try:
        rc, out, err = _run(["-c", path], env_extra={"STARLING_PORT": "abc"})
    finally:
        os.unlink(path)
    assert rc != 0
    assert "STARLING_PORT" in err, err


def test_cli_env_unknown_variable(broker):
    path = _conf(["bind_address 127.0.0.1", f"port {free_port()}"])
    try:
        rc, out, err = _run(["-c", path], env_extra={"STARLING_NO_SUCH_KEY": "1"})
    finally:
        os.unlink(path)
    assert rc != 0
    assert "STARLING_NO_SUCH_KEY" in err, err


def _wait_listening(port, proc, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.01)
    pytest.fail(f"not listening on {port}")


def test_cli_port_option_overrides_file(broker):
    """-p PORT takes precedence over the config file's port."""
    file_port, cli_port = free_port(), free_port()
    path = _conf(["bind_address 127.0.0.1", f"port {file_port}", f"workers {STARLING_WORKERS}"])
    errf = tempfile.TemporaryFile()
    cwd = tempfile.TemporaryDirectory(prefix="starling-cli-")
    proc = subprocess.Popen([STARLING_BIN, "-c", path, "-p", str(cli_port)],
                            stdin=subprocess.DEVNULL, stdout=errf, stderr=errf, env=clean_env(),
                            cwd=cwd.name)
    try:
        _wait_listening(cli_port, proc)
        c = M.Client("127.0.0.1", cli_port, version=4)
        assert c.connect(uid()).reason_code == 0
        c.close()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", file_port), timeout=1).close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = "timeout"
        os.unlink(path)
        cwd.cleanup()
        errf.seek(0)
        err = errf.read().decode("utf-8", "replace")
    assert rc == 0, err
    assert not [m for m in SANITIZER_MARKERS if m in err], err


def test_cli_sigint_exits_0(broker):
    b = broker()
    c = raw(b, version=4)
    assert b.stop(sig=signal.SIGINT) == 0
    c.expect_closed()


def test_cli_sigterm_disconnects_clients_0x8b(broker):
    """On SIGTERM a 5.0 client receives DISCONNECT 0x8B server shutting down
    before the close; a 3.1.1 client is just closed; exit code 0."""
    b = broker()
    c5 = raw(b, will={"topic": "shutdown/will", "payload": b"w"})
    c4 = raw(b, version=4)
    b.send_signal(signal.SIGTERM)
    c5.expect_disconnect(0x8B, timeout=10)
    c4.expect_closed_without_disconnect(timeout=10)
    assert b.stop(sig=None) == 0  # no second signal: wait for the exit


def test_cli_second_broker_on_same_port_refused(broker):
    """A second node on a port that a running node listens on exits 1 with a
    clear error; it must not join the first one's SO_REUSEPORT listeners and
    take a share of its connections."""
    b = broker()
    path = _conf(["bind_address 127.0.0.1", f"port {b.port}", "persistence false",
                  f"workers {STARLING_WORKERS}"])
    try:
        rc, out, err = _run(["-c", path])
    finally:
        os.unlink(path)
    assert rc == 1, err
    assert f"cannot listen on 127.0.0.1:{b.port}: address already in use" in err, err
    # every new connection still reaches the first broker
    for _ in range(8):
        c = M.Client("127.0.0.1", b.port, version=4)
        assert c.connect(uid()).reason_code == 0
        c.close()


def test_cli_port_held_by_reuseport_socket_refused(broker):
    """Another program's SO_REUSEPORT listener on the port: refused, not shared."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    port = s.getsockname()[1]
    path = _conf(["bind_address 127.0.0.1", f"port {port}", "persistence false"])
    try:
        rc, out, err = _run(["-c", path])
    finally:
        os.unlink(path)
        s.close()
    assert rc == 1, err
    assert "address already in use" in err, err
