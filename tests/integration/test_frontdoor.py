"""The front-door engines with independent clients, on real sockets.

tests/tools/frontdoor_harness stacks the PROXY parser, the TLS engine and the
WebSocket engine in front of a plain Mosquitto (the backend), as a Starling
listener will: mosquitto_pub/mosquitto_sub with --cafile, --cert/--key, paho
over websockets (ws and wss), and raw sockets sending PROXY headers talk to
it. Certificates are made with the `openssl` command in a temporary
directory removed afterwards.
"""

import os
import queue
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import STARLING_BIN
from mosquitto_ref import RefMosquitto

HARNESS = Path(STARLING_BIN).resolve().parents[1] / "tests" / "tools" / "frontdoor_harness"
WAIT = 10
# MQTT.js from npm (`make npm-deps` installs it here).
NODE_MODULES = Path(os.environ.get("STARLING_TEST_NODE_MODULES",
                                   Path(__file__).resolve().parents[2] / "build" / "npm" /
                                   "node_modules"))

pytestmark = pytest.mark.skipif(
    not HARNESS.exists(), reason=f"{HARNESS} not built (it sits next to the tested starling)")

CONNECT_311 = bytes([0x10, 0x10, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C,
                                                                   0x00, 0x04]) + b"fd-1"


@pytest.fixture(scope="module")
def certs():
    d = tempfile.mkdtemp(prefix="starling_frontdoor_")
    script = r"""
set -e; exec >openssl.log 2>&1
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1; }
ca() { key $1.key; openssl req -x509 -new -key $1.key -out $1.pem -days 2 -subj "/CN=$2"; }
leaf() { key $1.key; openssl req -new -key $1.key -out $1.csr -subj "/CN=$3"
  printf 'subjectAltName=%s\n' "$4" > $1.ext
  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -days 2 \
    -extfile $1.ext -out $1.pem; }
ca ca 'Test CA'; ca ca2 'Other CA'
leaf server ca localhost 'DNS:localhost,IP:127.0.0.1'
leaf client ca client1 'DNS:client1.example'
leaf other ca2 intruder 'DNS:intruder.example'
"""
    subprocess.run(["sh", "-c", script], cwd=d, check=True, timeout=60)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def backend():
    d = tempfile.mkdtemp(prefix="starling_frontdoor_mq_")
    m = RefMosquitto(d, "allow_anonymous true\n")
    yield m
    m.stop()
    shutil.rmtree(d, ignore_errors=True)


class Harness:
    def __init__(self, backend, *args):
        self.proc = subprocess.Popen([str(HARNESS), "-b", str(backend.port), *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self.lines.get(timeout=WAIT)
        assert first.startswith("listening "), first
        self.port = int(first.split()[1])

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, line):
        got = self.lines.get(timeout=WAIT)
        assert got == line

    def stop(self):
        self.proc.terminate()
        self.proc.wait(WAIT)
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        bad = [l for l in rest if "Sanitizer" in l or "runtime error" in l]
        assert not bad, "\n".join(rest)


@pytest.fixture
def harness(backend):
    started = []

    def start(*args):
        h = Harness(backend, *args)
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


def mosq(tool, port, *args):
    return subprocess.run([tool, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv311", *args],
                          capture_output=True, text=True, timeout=30)


def test_tls_with_mosquitto_clients(certs, harness):
    h = harness("-t", certs / "server.pem", certs / "server.key")
    tls = ["--cafile", str(certs / "ca.pem")]
    r = mosq("mosquitto_pub", h.port, *tls, "-t", "fd/tls", "-m", "over tls", "-r", "-q", "1")
    assert r.returncode == 0, r.stderr
    r = mosq("mosquitto_sub", h.port, *tls, "-t", "fd/tls", "-C", "1", "-W", "10")
    assert r.returncode == 0 and r.stdout == "over tls\n", r.stderr
    # A client that does not trust the server's CA gives up.
    r = mosq("mosquitto_pub", h.port, "--cafile", str(certs / "ca2.pem"), "-t", "x", "-m", "y")
    assert r.returncode != 0


def test_mutual_tls(certs, harness):
    h = harness("-t", certs / "server.pem", certs / "server.key", "-a", certs / "ca.pem", "-r")
    tls = ["--cafile", str(certs / "ca.pem")]
    r = mosq("mosquitto_pub", h.port, *tls, "--cert", str(certs / "client.pem"), "--key",
             str(certs / "client.key"), "-t", "fd/mtls", "-m", "m", "-q", "1")
    assert r.returncode == 0, r.stderr
    h.expect("identity client1")
    r = mosq("mosquitto_pub", h.port, *tls, "-t", "fd/mtls", "-m", "m")
    assert r.returncode != 0
    h.expect("refused peer did not return a certificate")
    r = mosq("mosquitto_pub", h.port, *tls, "--cert", str(certs / "other.pem"), "--key",
             str(certs / "other.key"), "-t", "fd/mtls", "-m", "m")
    assert r.returncode != 0
    line = h.lines.get(timeout=WAIT)
    assert line.startswith("refused certificate verify failed"), line


def paho_roundtrip(port, topic, tls_ca=None):
    got = queue.Queue()
    c = mqtt.Client(client_id="fd-" + topic.replace("/", "-"), protocol=mqtt.MQTTv311,
                    transport="websockets")
    c.ws_set_options(path="/mqtt")
    if tls_ca:
        c.tls_set(ca_certs=str(tls_ca))
    c.on_connect = lambda cl, u, f, rc: got.put(("connack", rc))
    c.on_subscribe = lambda cl, u, mid, g: got.put(("suback", g))
    c.on_message = lambda cl, u, m: got.put(("msg", m.topic, m.payload))
    c.connect("localhost" if tls_ca else "127.0.0.1", port)
    c.loop_start()
    try:
        assert got.get(timeout=WAIT) == ("connack", 0)
        c.subscribe(topic, 1)
        assert got.get(timeout=WAIT) == ("suback", (1,))
        big = bytes(range(256)) * 300  # several frames' worth
        c.publish(topic, big, qos=1)
        assert got.get(timeout=WAIT) == ("msg", topic, big)
    finally:
        c.disconnect()
        c.loop_stop()


def test_websocket_with_paho(harness):
    h = harness("-w")
    paho_roundtrip(h.port, "fd/ws")


def test_secure_websocket_with_paho(certs, harness):
    h = harness("-t", certs / "server.pem", certs / "server.key", "-w")
    paho_roundtrip(h.port, "fd/wss", tls_ca=certs / "ca.pem")


def connack_after(port, first, wrap=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        s.sendall(first)
        if wrap:
            s = wrap(s)
        s.sendall(CONNECT_311)
        data = b""
        while len(data) < 4:
            chunk = s.recv(4 - len(data))
            if not chunk:
                break
            data += chunk
        return data
    finally:
        s.close()


def test_proxy_protocol_v1_and_v2(harness):
    h = harness("-p")
    assert connack_after(h.port, b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 1883\r\n") == \
        b"\x20\x02\x00\x00"
    h.expect("client 198.51.100.9:40000")
    v2 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x24" + socket.inet_pton(socket.AF_INET6, "2001:db8::7")
          + socket.inet_pton(socket.AF_INET6, "::1") + b"\x30\x39\x07\x5b")
    assert connack_after(h.port, v2) == b"\x20\x02\x00\x00"
    h.expect("client [2001:db8::7]:12345")
    # No header: closed without an answer.
    assert connack_after(h.port, b"") == b""
    h.expect("refused no PROXY protocol header")


def test_proxy_protocol_under_tls(certs, harness):
    h = harness("-p", "-t", certs / "server.pem", certs / "server.key")
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    v2 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([203, 0, 113, 7, 127, 0, 0, 1])
          + b"\xdb\xf0\x22\xb3")
    got = connack_after(h.port, v2, wrap=lambda s: ctx.wrap_socket(s, server_hostname="localhost"))
    assert got == b"\x20\x02\x00\x00"
    h.expect("client 203.0.113.7:56304")


def mqttjs(url, ca=None):
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    return subprocess.run(["node", str(Path(__file__).parent / "mqttjs_roundtrip.js"), url,
                           *([str(ca)] if ca else [])],
                          capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.skipif(not (NODE_MODULES / "mqtt").exists() or not shutil.which("node"),
                    reason="MQTT.js not installed: make npm-deps")
def test_websocket_with_mqtt_js(certs, harness):
    h = harness("-w")
    r = mqttjs(f"ws://127.0.0.1:{h.port}/mqtt")
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
    h = harness("-t", certs / "server.pem", certs / "server.key", "-w")
    r = mqttjs(f"wss://localhost:{h.port}/mqtt", certs / "ca.pem")
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
