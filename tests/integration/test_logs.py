"""The node's log: one line per client event (connect, disconnect with its
reason, takeover, auth failure) with the client id and address, as text or
as JSON lines (log_format json, STARLING_LOG_FORMAT) for log collectors.

The clients are raw MQTT 3.1.1 sockets, so that the test knows each one's
address (127.0.0.1 and its local port) and what it did.
"""

import json
import socket
import struct
import subprocess
import time

import pytest

from conftest import STARLING_BIN, clean_env, free_port

pytestmark = pytest.mark.starling_only

WAIT = 10.0


USER, PASSWORD = "u", "u-password"


def connect_packet(client_id, username=None, password=None):
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = struct.pack(">H", 4) + b"MQTT" + bytes([4, flags]) + struct.pack(">H", 60)
    for field in (client_id, username, password):
        if field is not None:
            body += struct.pack(">H", len(field)) + field.encode()
    return bytes([0x10, len(body)]) + body


@pytest.fixture
def pwfile(tmp_path):
    pw = tmp_path / "passwd"
    subprocess.run([STARLING_BIN, "passwd", "-c", "-b", str(pw), USER, PASSWORD], check=True,
                   timeout=30)
    return pw


class Client:
    """A raw MQTT 3.1.1 connection; .address is how the broker sees it."""

    def __init__(self, b, client_id, username=USER, password=PASSWORD):
        self.s = socket.create_connection((b.host, b.port), timeout=WAIT)
        self.address = "%s:%d" % self.s.getsockname()[:2]
        self.s.sendall(connect_packet(client_id, username, password))
        self.connack = self._read(4)

    def _read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.s.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def disconnect(self):
        self.s.sendall(b"\xe0\x00")
        self.closed_by_broker()

    def closed_by_broker(self):
        """Wait until the broker closes the connection (EOF)."""
        self.s.settimeout(WAIT)
        try:
            while self.s.recv(4096):
                pass
        except ConnectionResetError:
            pass
        self.s.close()

    def drop(self):
        self.s.close()


def wait_lines(b, pred, what):
    """The node's log lines once pred(lines) holds (bounded)."""
    deadline = time.monotonic() + WAIT
    while True:
        lines = b.stderr_text().splitlines()
        if pred(lines):
            return lines
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} in the log:\n" + "\n".join(lines[-40:]))
        time.sleep(0.02)


def json_events(lines):
    docs = [json.loads(line) for line in lines if line.strip()]
    return [d for d in docs if "event" in d]


def find(events, event, client_id):
    return [e for e in events if e["event"] == event and e["client_id"] == client_id]


def test_json_lines_carry_each_event_with_client_id_and_address(broker, pwfile):
    b = broker(log_format="json", password_file=pwfile)
    a = Client(b, "log-a")
    assert a.connack == b"\x20\x02\x00\x00"
    a.disconnect()
    c = Client(b, "log-c")
    assert c.connack == b"\x20\x02\x00\x00"
    c.drop()  # no DISCONNECT: the connection just closes
    refused = Client(b, "log-refused", username=None, password=None)  # anonymous
    assert refused.connack == b"\x20\x02\x00\x05"
    refused.closed_by_broker()
    wrong = Client(b, "log-wrong", password="not-it")  # checked off the event loop
    assert wrong.connack == b"\x20\x02\x00\x04"
    wrong.closed_by_broker()
    first = Client(b, "log-twice")
    second = Client(b, "log-twice")
    first.closed_by_broker()  # taken over by the second
    second.disconnect()

    def complete(lines):
        ev = json_events(lines)
        return (find(ev, "disconnect", "log-c") and find(ev, "auth_failure", "log-refused")
                and find(ev, "auth_failure", "log-wrong")
                and find(ev, "takeover", "log-twice") and len(find(ev, "disconnect", "log-twice")))

    lines = wait_lines(b, complete, "events")
    # every line is one JSON object with a time, a level and a message
    for line in lines:
        doc = json.loads(line)
        assert isinstance(doc, dict), line
        assert doc["level"] in ("error", "warn", "info", "debug"), line
        assert doc["time"].endswith("Z") and isinstance(doc["msg"], str), line
    ev = json_events(lines)

    (conn_a,) = find(ev, "connect", "log-a")
    assert conn_a["address"] == a.address and conn_a["level"] == "info"
    assert "MQTT 3.1.1" in conn_a["msg"] and "log-a" in conn_a["msg"]
    (disc_a,) = find(ev, "disconnect", "log-a")
    assert disc_a["address"] == a.address and disc_a["reason"] == "client disconnected"

    (disc_c,) = find(ev, "disconnect", "log-c")
    assert disc_c["address"] == c.address and disc_c["reason"] == "connection closed"

    (fail,) = find(ev, "auth_failure", "log-refused")
    assert fail["address"] == refused.address and fail["reason"] == "not authorized"
    assert not find(ev, "connect", "log-refused")
    (fail,) = find(ev, "auth_failure", "log-wrong")
    assert fail["address"] == wrong.address and fail["reason"] == "bad user name or password"
    assert PASSWORD not in "".join(lines) and "not-it" not in "".join(lines)

    (taken,) = find(ev, "takeover", "log-twice")
    assert taken["address"] == first.address and taken["reason"] == "session taken over"
    conns = find(ev, "connect", "log-twice")
    assert [e["address"] for e in conns] == [first.address, second.address]
    (disc2,) = find(ev, "disconnect", "log-twice")
    assert disc2["address"] == second.address


def test_text_lines_name_the_event_client_and_address(broker, pwfile):
    b = broker(password_file=pwfile)
    a = Client(b, "text-a")
    a.disconnect()
    refused = Client(b, "text-refused", username=None, password=None)
    refused.closed_by_broker()
    want = [f"{a.address}: connect client 'text-a': MQTT 3.1.1",
            f"{a.address}: disconnect client 'text-a' (client disconnected)",
            f"{refused.address}: auth_failure client 'text-refused' (not authorized)"]
    lines = wait_lines(b, lambda ls: all(any(w in x for x in ls) for w in want), "event lines")
    for w in want:
        (line,) = [x for x in lines if w in x]
        assert " INFO " in line and line.index(" INFO ") < line.index(w), line
    assert not any(x.startswith("{") for x in lines)


def test_log_format_from_the_environment(broker):
    b = broker(_env={"STARLING_LOG_FORMAT": "json"})
    a = Client(b, "env-a")
    a.disconnect()
    lines = wait_lines(b, lambda ls: find(json_events(ls), "disconnect", "env-a"), "JSON lines")
    assert all(json.loads(x) for x in lines)


def test_bad_log_format_stops_start_up(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(f"bind_address 127.0.0.1\nport {free_port()}\ndata_dir {tmp_path / 'd'}\n"
                    "log_format xml\n")
    r = subprocess.run([STARLING_BIN, "-c", str(conf)], capture_output=True, text=True,
                       timeout=30, env=clean_env())
    assert r.returncode == 1 and "log_format" in r.stderr and "text|json" in r.stderr, r.stderr
