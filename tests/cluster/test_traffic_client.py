"""The chaos runner's publishing client (traffic.py) against a scripted
server on 127.0.0.1: no broker runs here. Debian 12's paho 1.6.1 publishes
a QoS 2 message again, DUP 0, on the connection after one that got no
CONNACK, though the client had sent its PUBREL: the checker then counts the
client's new message as the server's duplicate. traffic._ReasonClient keeps
such a message awaiting PUBCOMP, and resends the PUBREL."""

import os
import socket
import struct
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, os.path.dirname(__file__))
import traffic  # noqa: E402

PUBLISH, PUBREC, PUBREL = 3, 5, 6


def read_packet(c):
    """(type, DUP flag, body) of the next packet, or None at the end."""
    head = c.recv(1)
    if not head:
        return None
    mult, length = 1, 0
    while True:
        b = c.recv(1)[0]
        length += (b & 127) * mult
        mult *= 128
        if not b & 128:
            break
    body = b""
    while len(body) < length:
        chunk = c.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return head[0] >> 4, (head[0] >> 3) & 1, body


def serve_once(ls, script, out):
    """Accepts one connection and reads its CONNECT. script "pubrec":
    CONNACK, PUBREC for the PUBLISH, close after the PUBREL; "refuse": close
    without CONNACK; "listen": CONNACK, then record what comes for 1 s."""
    c, _ = ls.accept()
    c.settimeout(5)
    try:
        read_packet(c)
        if script == "refuse":
            return
        c.sendall(bytes([0x20, 3, 0, 0, 0]))  # CONNACK 5.0: accepted, no properties
        if script == "listen":
            c.settimeout(1)
        while True:
            try:
                p = read_packet(c)
            except socket.timeout:
                return
            if p is None:
                return
            out.append(p[:2])
            if script == "pubrec" and p[0] == PUBLISH:
                tlen = struct.unpack("!H", p[2][:2])[0]
                c.sendall(bytes([0x50, 2]) + p[2][2 + tlen:4 + tlen])
            if script == "pubrec" and p[0] == PUBREL:
                return
    finally:
        c.close()


def run_connection(cl, ls, port, script, clean, out, publish=False):
    th = threading.Thread(target=serve_once, args=(ls, script, out))
    th.start()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    cl.connect("127.0.0.1", port, 4, clean_start=clean, properties=props)
    if publish:
        while not cl.is_connected():
            assert cl.loop(0.05) == mqtt.MQTT_ERR_SUCCESS
        cl.publish("t", b"m", 2)
    for _ in range(40):
        if cl.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
            break
    th.join()
    s = cl.socket()
    if s:
        s.close()
    cl._sock = None


def sent_after_a_refused_connection(client_class, refused):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    port = ls.getsockname()[1]
    try:
        cl = client_class(client_id="pubrel-kept", protocol=mqtt.MQTTv5)
        first, last = [], []
        run_connection(cl, ls, port, "pubrec", True, first, publish=True)
        assert first == [(PUBLISH, 0), (PUBREL, 0)], first
        for _ in range(refused):
            run_connection(cl, ls, port, "refuse", False, [])
        run_connection(cl, ls, port, "listen", False, last)
        return last
    finally:
        ls.close()


def test_paho_publishes_again_after_a_connection_without_connack():
    """What the workaround is for: plain paho 1.6.1 sends the PUBLISH again,
    DUP 0, where it had sent the PUBREL (if a later paho fixes it, this
    test says so and the workaround can go)."""
    assert sent_after_a_refused_connection(mqtt.Client, 1) == [(PUBLISH, 0)]


def test_traffic_client_resends_the_pubrel_after_connections_without_connack():
    for refused in (0, 1, 3):
        assert sent_after_a_refused_connection(traffic._ReasonClient, refused) == \
            [(PUBREL, 0)], f"after {refused} connection(s) without CONNACK"
