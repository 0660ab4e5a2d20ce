"""The transports of the real broker with independent clients, on real sockets.

A Starling node with its TLS, WebSocket and secure WebSocket listeners (and
the PROXY protocol on some of them): mosquitto_pub/mosquitto_sub with
--cafile, --cert/--key, paho over websockets (ws and wss), MQTT.js over ws
and wss, raw sockets sending PROXY headers, and malformed input on every
listener. Certificates are made with the `openssl` command in a temporary
directory removed afterwards.
"""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

import queue
from conftest import STARLING_BIN, clean_env, free_port, is_starling

WAIT = 10
# MQTT.js from npm (`make npm-deps` installs it here).
NODE_MODULES = Path(os.environ.get("STARLING_TEST_NODE_MODULES",
                                   Path(__file__).resolve().parents[2] / "build" / "npm" /
                                   "node_modules"))

pytestmark = pytest.mark.starling_only

CONNECT_311 = bytes([0x10, 0x10, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C,
                                                                   0x00, 0x04]) + b"fd-1"
CONNACK_OK = b"\x20\x02\x00\x00"

CERT_SCRIPT = r"""
set -e; exec >openssl.log 2>&1
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1; }
ca() { key $1.key; openssl req -x509 -new -key $1.key -out $1.pem -days 2 -subj "/CN=$2"; }
leaf() { key $1.key; openssl req -new -key $1.key -out $1.csr -subj "/CN=$3"
  printf 'subjectAltName=%s\n' "$4" > $1.ext
  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -days 2 \
    -extfile $1.ext -out $1.pem; }
ca ca 'Test CA'; ca ca2 'Other CA'
leaf server ca localhost 'DNS:localhost,IP:127.0.0.1'
leaf server2 ca2 localhost 'DNS:localhost,IP:127.0.0.1'
leaf client ca client1 'DNS:client1.example'
leaf other ca2 intruder 'DNS:intruder.example'
"""


@pytest.fixture(scope="module")
def certs():
    d = tempfile.mkdtemp(prefix="starling_frontdoor_")
    subprocess.run(["sh", "-c", CERT_SCRIPT], cwd=d, check=True, timeout=60)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def tls_conf(certs, **kw):
    conf = dict(tls_port=free_port(), tls_certfile=certs / "server.pem",
                tls_keyfile=certs / "server.key")
    conf.update(kw)
    return conf


def mosq(tool, port, *args):
    return subprocess.run([tool, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv311", *args],
                          capture_output=True, text=True, timeout=30)


def wait_log(b, text, timeout=WAIT):
    """Wait (bounded) until the broker's log contains text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in b.stderr_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log:\n{b.stderr_text()[-3000:]}")


def test_tls_with_mosquitto_clients(certs, broker):
    conf = tls_conf(certs)
    b = broker(**conf)
    port = conf["tls_port"]
    tls = ["--cafile", str(certs / "ca.pem")]
    r = mosq("mosquitto_pub", port, *tls, "-t", "fd/tls", "-m", "over tls", "-r", "-q", "1")
    assert r.returncode == 0, r.stderr
    r = mosq("mosquitto_sub", port, *tls, "-t", "fd/tls", "-C", "1", "-W", "10")
    assert r.returncode == 0 and r.stdout == "over tls\n", r.stderr
    # The plain listener sees the same broker: the retained message is there.
    r = mosq("mosquitto_sub", b.port, "-t", "fd/tls", "-C", "1", "-W", "10")
    assert r.returncode == 0 and r.stdout == "over tls\n", r.stderr
    # A client that does not trust the server's CA gives up.
    r = mosq("mosquitto_pub", port, "--cafile", str(certs / "ca2.pem"), "-t", "x", "-m", "y")
    assert r.returncode != 0


def test_mutual_tls(certs, broker):
    conf = tls_conf(certs, tls_cafile=certs / "ca.pem", tls_require_certificate=True)
    broker(**conf)
    port = conf["tls_port"]
    tls = ["--cafile", str(certs / "ca.pem")]
    r = mosq("mosquitto_pub", port, *tls, "--cert", str(certs / "client.pem"), "--key",
             str(certs / "client.key"), "-t", "fd/mtls", "-m", "m", "-q", "1")
    assert r.returncode == 0, r.stderr
    r = mosq("mosquitto_pub", port, *tls, "-t", "fd/mtls", "-m", "m")
    assert r.returncode != 0
    r = mosq("mosquitto_pub", port, *tls, "--cert", str(certs / "other.pem"), "--key",
             str(certs / "other.key"), "-t", "fd/mtls", "-m", "m")
    assert r.returncode != 0


def test_identity_as_username_with_acl(certs, broker, tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("user client1\ntopic readwrite id/client1/#\n")
    conf = tls_conf(certs, tls_cafile=certs / "ca.pem", tls_require_certificate=True,
                    tls_use_identity_as_username=True, acl_file=acl, allow_anonymous=False)
    b = broker(**conf)
    port = conf["tls_port"]
    mtls = ["--cafile", str(certs / "ca.pem"), "--cert", str(certs / "client.pem"), "--key",
            str(certs / "client.key")]
    got = queue.Queue()
    c = mqtt.Client(client_id="fd-id", protocol=mqtt.MQTTv311)
    c.tls_set(ca_certs=str(certs / "ca.pem"), certfile=str(certs / "client.pem"),
              keyfile=str(certs / "client.key"))
    c.on_connect = lambda cl, u, f, rc: got.put(("connack", rc))
    c.on_subscribe = lambda cl, u, mid, g: got.put(("suback", g))
    c.on_message = lambda cl, u, m: got.put(("msg", m.topic, m.payload))
    c.connect("localhost", port)
    c.loop_start()
    try:
        assert got.get(timeout=WAIT) == ("connack", 0)
        c.subscribe("id/#", 1)
        assert got.get(timeout=WAIT) == ("suback", (1,))
        # The user client1 may write id/client1/x but not id/other.
        r = mosq("mosquitto_pub", port, *mtls, "-t", "id/other", "-m", "no", "-q", "1")
        assert r.returncode == 0, r.stderr
        r = mosq("mosquitto_pub", port, *mtls, "-t", "id/client1/x", "-m", "yes", "-q", "1")
        assert r.returncode == 0, r.stderr
        assert got.get(timeout=WAIT) == ("msg", "id/client1/x", b"yes")
    finally:
        c.disconnect()
        c.loop_stop()
    # Plain TCP, anonymous: refused (3.1.1 return code 5, not authorised).
    r = mosq("mosquitto_pub", b.port, "-t", "id/client1/x", "-m", "m")
    assert r.returncode != 0 and "not authorised" in (r.stdout + r.stderr).lower()


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


def test_websocket_with_paho(broker):
    port = free_port()
    broker(ws_port=port)
    paho_roundtrip(port, "fd/ws")


def test_secure_websocket_with_paho(certs, broker):
    port = free_port()
    broker(wss_port=port, tls_certfile=certs / "server.pem", tls_keyfile=certs / "server.key")
    paho_roundtrip(port, "fd/wss", tls_ca=certs / "ca.pem")


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


def test_proxy_protocol_v1_and_v2(broker):
    b = broker(proxy_protocol="tcp", log_level="debug")
    assert connack_after(b.port, b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 1883\r\n") == CONNACK_OK
    wait_log(b, "198.51.100.9:40000: connect client 'fd-1'")
    v2 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x24" + socket.inet_pton(socket.AF_INET6, "2001:db8::7")
          + socket.inet_pton(socket.AF_INET6, "::1") + b"\x30\x39\x07\x5b")
    assert connack_after(b.port, v2) == CONNACK_OK
    wait_log(b, "[2001:db8::7]:12345: connect client 'fd-1'")
    # No header: closed without an answer.
    assert connack_after(b.port, b"") == b""
    wait_log(b, "closed: ")


def test_proxy_protocol_under_tls(certs, broker):
    conf = tls_conf(certs, proxy_protocol="tls", log_level="debug")
    b = broker(**conf)
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    v2 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([203, 0, 113, 7, 127, 0, 0, 1])
          + b"\xdb\xf0\x22\xb3")
    got = connack_after(conf["tls_port"], v2,
                        wrap=lambda s: ctx.wrap_socket(s, server_hostname="localhost"))
    assert got == CONNACK_OK
    wait_log(b, "203.0.113.7:56304: connect client 'fd-1'")
    # The plain listener expects no header.
    assert connack_after(b.port, b"") == CONNACK_OK


def mqttjs(url, ca=None):
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    return subprocess.run(["node", str(Path(__file__).parent / "mqttjs_roundtrip.js"), url,
                           *([str(ca)] if ca else [])],
                          capture_output=True, text=True, timeout=40, env=env)


@pytest.mark.skipif(not (NODE_MODULES / "mqtt").exists() or not shutil.which("node"),
                    reason="MQTT.js not installed: make npm-deps")
def test_websocket_with_mqtt_js(certs, broker):
    ws, wss = free_port(), free_port()
    broker(ws_port=ws, wss_port=wss, tls_certfile=certs / "server.pem",
           tls_keyfile=certs / "server.key")
    r = mqttjs(f"ws://127.0.0.1:{ws}/mqtt")
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
    r = mqttjs(f"wss://localhost:{wss}/mqtt", certs / "ca.pem")
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


def read_until_closed(s, limit=65536):
    data = b""
    s.settimeout(WAIT)
    while len(data) < limit:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def test_malformed_input_on_every_listener(certs, broker):
    ws, wss = free_port(), free_port()
    # connect_timeout closes what is a valid prefix of something (an
    # incomplete MQTT packet, TLS record or HTTP request)
    conf = tls_conf(certs, ws_port=ws, wss_port=wss, connect_timeout=1)
    b = broker(**conf)
    garbage = [b"\x16\x03\x01\x00\x05hello", b"GET / HTTP/1.1\r\n\r\n", b"\xff" * 300,
               b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n", b"\x10\xff\xff\xff\xff\x7f"]
    for port in (b.port, conf["tls_port"], ws, wss):
        for g in garbage:
            s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            s.sendall(g)
            try:
                read_until_closed(s)  # the node closes (an alert, an HTTP error, nothing)
            except TimeoutError:
                raise AssertionError(f"port {port} {g!r}: not closed")
            s.close()
    # WebSocket: a text frame after a good upgrade is a protocol error.
    s = socket.create_connection(("127.0.0.1", ws), timeout=WAIT)
    s.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Protocol: mqtt\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1024)
    assert head.startswith(b"HTTP/1.1 101"), head
    s.sendall(b"\x81\x82abcd" + bytes([ord("h") ^ ord("a"), ord("i") ^ ord("b")]))
    read_until_closed(s)
    s.close()
    # Still serving on every listener.
    assert connack_after(b.port, b"") == CONNACK_OK
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    assert connack_after(conf["tls_port"], b"",
                         wrap=lambda s: ctx.wrap_socket(s, server_hostname="localhost")) \
        == CONNACK_OK
    paho_roundtrip(ws, "fd/after-garbage")


def start_raw(conf_lines, tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("\n".join(["bind_address 127.0.0.1", f"port {free_port()}",
                               f"data_dir {tmp_path / 'data'}", *conf_lines]) + "\n")
    return subprocess.run([STARLING_BIN, "-c", str(conf)], capture_output=True, text=True,
                          timeout=30, env=clean_env())


@pytest.mark.skipif(not is_starling(), reason="starling start-up")
def test_bad_certificate_or_key_stops_start_up(certs, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    port = free_port()
    r = start_raw([f"tls_port {port}", f"tls_certfile {bad}",
                   f"tls_keyfile {certs / 'server.key'}"], tmp_path)
    assert r.returncode == 1 and str(bad) in r.stderr and "tls_certfile" in r.stderr, r.stderr
    r = start_raw([f"tls_port {port}", f"tls_certfile {certs / 'server.pem'}",
                   f"tls_keyfile {certs / 'client.key'}"], tmp_path)
    assert r.returncode == 1 and "client.key" in r.stderr, r.stderr
    r = start_raw([f"tls_port {port}", f"tls_certfile {certs / 'server.pem'}",
                   f"tls_keyfile {tmp_path / 'missing.key'}"], tmp_path)
    assert r.returncode == 1 and "missing.key" in r.stderr, r.stderr
    r = start_raw([f"tls_port {port}"], tmp_path)
    assert r.returncode == 1 and "tls_certfile" in r.stderr, r.stderr


def test_sighup_swaps_the_certificate_without_dropping_connections(certs, broker, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(certs / "server.pem", cert)
    shutil.copy(certs / "server.key", key)
    conf = tls_conf(certs, tls_certfile=cert, tls_keyfile=key)
    b = broker(**conf)
    port = conf["tls_port"]
    got = queue.Queue()
    c = mqtt.Client(client_id="fd-kept", protocol=mqtt.MQTTv311)
    c.tls_set(ca_certs=str(certs / "ca.pem"))
    c.on_connect = lambda cl, u, f, rc: got.put(("connack", rc))
    c.on_subscribe = lambda cl, u, mid, g: got.put(("suback", g))
    c.on_message = lambda cl, u, m: got.put(("msg", m.payload))
    c.connect("localhost", port)
    c.loop_start()
    try:
        assert got.get(timeout=WAIT) == ("connack", 0)
        c.subscribe("fd/kept", 1)
        assert got.get(timeout=WAIT) == ("suback", (1,))
        # A certificate from another CA, then SIGHUP.
        shutil.copy(certs / "server2.pem", cert)
        shutil.copy(certs / "server2.key", key)
        b.send_signal(signal.SIGHUP)
        wait_log(b, "reload: TLS certificate")
        r = mosq("mosquitto_pub", port, "--cafile", str(certs / "ca2.pem"), "-t", "fd/kept",
                 "-m", "new cert", "-q", "1")
        assert r.returncode == 0, r.stderr
        r = mosq("mosquitto_pub", port, "--cafile", str(certs / "ca.pem"), "-t", "x", "-m", "y")
        assert r.returncode != 0
        # The connection made with the old certificate is still there.
        assert got.get(timeout=WAIT) == ("msg", b"new cert")
        # A broken key file: the old certificate stays.
        key.write_text("garbage\n")
        b.send_signal(signal.SIGHUP)
        wait_log(b, "the old certificate stays")
        r = mosq("mosquitto_pub", port, "--cafile", str(certs / "ca2.pem"), "-t", "fd/kept",
                 "-m", "still", "-q", "1")
        assert r.returncode == 0, r.stderr
        assert got.get(timeout=WAIT) == ("msg", b"still")
    finally:
        c.disconnect()
        c.loop_stop()


def ws_upgrade_status(port, origin=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        s.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  b"Sec-WebSocket-Protocol: mqtt\r\n" +
                  (f"Origin: {origin}\r\n".encode() if origin else b"") + b"\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1024)
            if not chunk:
                break
            head += chunk
        return head.split(b" ")[1] if head else b""
    finally:
        s.close()


def test_websocket_origin_allow_list(broker):
    port = free_port()
    broker(ws_port=port, ws_origins="https://app.example, https://other.example")
    assert ws_upgrade_status(port, "https://app.example") == b"101"
    assert ws_upgrade_status(port, "https://other.example") == b"101"
    assert ws_upgrade_status(port, "https://evil.example") == b"403"
    assert ws_upgrade_status(port) == b"101"  # not a browser


def ws_frame(opcode, payload):
    """A masked client frame (payload < 126 bytes)."""
    mask = b"\x01\x02\x03\x04"
    return (bytes([0x80 | opcode, 0x80 | len(payload)]) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def ws_read_frame(s, buf):
    """The next server frame (opcode, payload) from socket s; buf holds what
    was read past the previous one. b"" from the socket raises EOFError."""
    def need(n):
        while len(buf) < n:
            chunk = s.recv(4096)
            if not chunk:
                raise EOFError("the server closed its side")
            buf.extend(chunk)
    need(2)
    n, off = buf[1] & 0x7F, 2
    if n == 126:
        need(4)
        n, off = int.from_bytes(buf[2:4], "big"), 4
    need(off + n)
    frame = (buf[0] & 0x0F, bytes(buf[off:off + n]))
    del buf[:off + n]
    return frame


# well below the grace period a closing connection is given (5 s)
PROMPT = 2.5


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize("together", [False, True])
def test_websocket_close_waits_for_the_clients_close_frame(certs, broker, secure, together):
    """After DISCONNECT the server sends its WebSocket Close frame and then
    waits for the client's before it ends the stream (TLS close_notify, TCP
    FIN) [RFC 6455 7.1.1]. A client that sees the end of the stream first
    ends its own socket, and its Close frame then fails to go out (MQTT.js
    over wss: "write EPIPE", about 2 runs in 5 on a loaded machine). Once
    the client's Close frame is in, also when it came with the DISCONNECT
    (`together`, as MQTT.js sends them), the stream ends promptly, not at
    the end of the grace period."""
    port = free_port()
    conf = dict(tls_certfile=certs / "server.pem", tls_keyfile=certs / "server.key")
    conf["wss_port" if secure else "ws_port"] = port
    broker(**conf)
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    if secure:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        s = ctx.wrap_socket(s, server_hostname="localhost")
    try:
        s.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  b"Sec-WebSocket-Protocol: mqtt\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        buf = bytearray()
        s.sendall(ws_frame(2, b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05ws-cl"))
        assert ws_read_frame(s, buf) == (2, b"\x20\x02\x00\x00")  # CONNACK
        if together:
            s.sendall(ws_frame(2, b"\xe0\x00") + ws_frame(8, b"\x03\xe8"))
        else:
            s.sendall(ws_frame(2, b"\xe0\x00"))  # DISCONNECT
        opcode, payload = ws_read_frame(s, buf)
        assert opcode == 8 and payload[:2] == b"\x03\xe8", (opcode, payload)  # Close, 1000
        if not together:
            # The stream stays open until the client answers: nothing more
            # arrives (no EOF, no close_notify) while it has not.
            s.settimeout(1.0)
            try:
                more = s.recv(4096)
                raise AssertionError(f"the server ended the stream before the client's Close "
                                     f"frame: {more!r}")
            except (socket.timeout, TimeoutError):
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError) as e:
                raise AssertionError(f"the server ended the stream before the client's Close "
                                     f"frame: {e!r}")
            s.settimeout(WAIT)
            s.sendall(ws_frame(8, b"\x03\xe8"))
        # ... and ends it once the client did (TLS: close_notify, then EOF)
        deadline = time.monotonic() + PROMPT
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "not closed promptly after the client's Close frame"
            s.settimeout(left)
            try:
                if not s.recv(4096):
                    break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            except (socket.timeout, TimeoutError):
                raise AssertionError("not closed promptly after the client's Close frame")
    finally:
        s.close()
