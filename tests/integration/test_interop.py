"""Interoperability with the Mosquitto command line clients (mosquitto_pub,
mosquitto_sub) over MQTT 3.1, 3.1.1 and 5.0."""

import queue
import shutil
import subprocess
import threading

import pytest

import mqttraw as M
from helpers import raw, raw_marker

pytestmark = pytest.mark.skipif(not shutil.which("mosquitto_sub"), reason="mosquitto-clients missing")

TIMEOUT = 8


class Sub:
    """A mosquitto_sub process; lines of its stdout go to a queue. With -d
    it reports the SUBACK, which is how a test knows it is subscribed."""

    def __init__(self, b, args):
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-h", b.host, "-p", str(b.port), "-d", "-W", str(TIMEOUT),
             "-F", "MSG|%t|%p|%q|%r", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines = queue.Queue()
        self.all = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.decode("utf-8", "replace").rstrip("\n")
            self.all.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, pred, timeout=TIMEOUT):
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"mosquitto_sub: no expected line; output: {self.all}") from None
            assert line is not None, f"mosquitto_sub ended; output: {self.all}"
            if pred(line):
                return line

    def subscribed(self):
        self.wait_line(lambda l: "received SUBACK" in l)
        return self

    def messages(self, n):
        return [self.wait_line(lambda l: l.startswith("MSG|")).split("|", 4)[1:] for _ in range(n)]

    def finish(self):
        try:
            rc = self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"mosquitto_sub did not exit; output: {self.all}")
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def pub(b, args, stdin=None):
    r = subprocess.run(["mosquitto_pub", "-h", b.host, "-p", str(b.port), *args],
                       input=stdin, capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr.decode()
    return r


@pytest.mark.parametrize("version", ["mqttv31", "mqttv311", "5"])
def test_cli_pub_sub_roundtrip(broker, version):
    """mosquitto_pub -> broker -> mosquitto_sub, QoS 1, for each version."""
    b = broker()
    s = Sub(b, ["-V", version, "-q", "1", "-C", "1", "-t", "cli/rt"]).subscribed()
    try:
        pub(b, ["-V", version, "-q", "1", "-t", "cli/rt", "-m", f"hello {version}"])
        assert s.messages(1) == [["cli/rt", f"hello {version}", "1", "0"]]
        assert s.finish() == 0
    finally:
        s.kill()


def test_cli_v5_properties_reach_raw_subscriber(broker):
    """mosquitto_pub -V mqttv5 -D publish ... : user properties, content type,
    response topic and message expiry arrive unchanged."""
    b = broker()
    r = raw(b)
    r.subscribe(("cli/props", 1))
    pub(b, ["-V", "mqttv5", "-q", "1", "-t", "cli/props", "-m", "p",
            "-D", "publish", "user-property", "k1", "v1",
            "-D", "publish", "user-property", "k2", "v2",
            "-D", "publish", "content-type", "text/plain",
            "-D", "publish", "response-topic", "cli/reply",
            "-D", "publish", "message-expiry-interval", "120"])
    p = r.recv_publish()
    assert p.payload == b"p" and p.qos == 1
    assert p.properties["user_property"] == [("k1", "v1"), ("k2", "v2")]
    assert p.properties["content_type"] == "text/plain"
    assert p.properties["response_topic"] == "cli/reply"
    assert 118 <= p.properties["message_expiry_interval"] <= 120


def test_cli_retained_and_clear(broker):
    """mosquitto_pub -r stores a retained message that a later
    mosquitto_sub --retained-only receives; -r -n clears it."""
    b = broker()
    pub(b, ["-V", "mqttv311", "-q", "1", "-r", "-t", "cli/ret", "-m", "kept"])
    s = Sub(b, ["-V", "mqttv311", "--retained-only", "-C", "1", "-t", "cli/ret"])
    try:
        assert s.messages(1) == [["cli/ret", "kept", "0", "1"]]
        assert s.finish() == 0
    finally:
        s.kill()
    pub(b, ["-V", "5", "-q", "1", "-r", "-n", "-t", "cli/ret"])
    r = raw(b)
    r.subscribe([("cli/ret", 0), ("cli/ret-marker", 0)])
    raw_marker(r, r, "cli/ret-marker")


def test_cli_pub_lines_in_order(broker):
    """mosquitto_pub -l sends each stdin line as a message, in order."""
    b = broker()
    r = raw(b, version=4)
    r.subscribe(("cli/lines", 1))
    lines = [f"line {i}" for i in range(10)]
    pub(b, ["-V", "mqttv311", "-q", "1", "-l", "-t", "cli/lines"],
        stdin=("\n".join(lines) + "\n").encode())
    got = [r.recv_publish().payload.decode() for _ in lines]
    assert got == lines


def test_cli_sub_receives_raw_v5_publish_with_wildcard(broker):
    """mosquitto_sub -V 5 on a wildcard receives QoS 2 messages from a raw
    5.0 publisher at QoS 2."""
    b = broker()
    s = Sub(b, ["-V", "5", "-q", "2", "-C", "2", "-t", "cli/wild/+"]).subscribed()
    try:
        c = raw(b)
        for i, t in enumerate(["cli/wild/a", "cli/other", "cli/wild/b"]):
            pid = c.publish(t, f"m{i}".encode(), qos=2)
            c.expect(M.PUBREC)
            c.pubrel(pid)
            c.expect(M.PUBCOMP)
        assert s.messages(2) == [["cli/wild/a", "m0", "2", "0"], ["cli/wild/b", "m2", "2", "0"]]
        assert s.finish() == 0
    finally:
        s.kill()
