"""A small raw MQTT client for tests that must see or send exact bytes.

Builders return the bytes of one packet (any MQTT 3.1, 3.1.1 or 5.0 packet,
including deliberately broken ones); `Client` sends them over a socket and
reads and decodes what the broker sends. Every read is bounded by a timeout.

Protocol versions are the protocol level byte: 3 (MQTT 3.1, "MQIsdp"),
4 (3.1.1) and 5 (5.0).
"""

import socket
import struct
import time

# Packet types
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

TYPE_NAMES = {
    CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK",
    PUBREC: "PUBREC", PUBREL: "PUBREL", PUBCOMP: "PUBCOMP", SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK", UNSUBSCRIBE: "UNSUBSCRIBE", UNSUBACK: "UNSUBACK", PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP", DISCONNECT: "DISCONNECT", AUTH: "AUTH",
}

DEFAULT_TIMEOUT = 5.0

# Property identifiers: id -> (name, type)
BYTE, U16, U32, VARINT, UTF8, BINARY, PAIR = "byte", "u16", "u32", "varint", "utf8", "binary", "pair"
PROPERTIES = {
    0x01: ("payload_format_indicator", BYTE),
    0x02: ("message_expiry_interval", U32),
    0x03: ("content_type", UTF8),
    0x08: ("response_topic", UTF8),
    0x09: ("correlation_data", BINARY),
    0x0B: ("subscription_identifier", VARINT),
    0x11: ("session_expiry_interval", U32),
    0x12: ("assigned_client_identifier", UTF8),
    0x13: ("server_keep_alive", U16),
    0x15: ("authentication_method", UTF8),
    0x16: ("authentication_data", BINARY),
    0x17: ("request_problem_information", BYTE),
    0x18: ("will_delay_interval", U32),
    0x19: ("request_response_information", BYTE),
    0x1A: ("response_information", UTF8),
    0x1C: ("server_reference", UTF8),
    0x1F: ("reason_string", UTF8),
    0x21: ("receive_maximum", U16),
    0x22: ("topic_alias_maximum", U16),
    0x23: ("topic_alias", U16),
    0x24: ("maximum_qos", BYTE),
    0x25: ("retain_available", BYTE),
    0x26: ("user_property", PAIR),
    0x27: ("maximum_packet_size", U32),
    0x28: ("wildcard_subscription_available", BYTE),
    0x29: ("subscription_identifier_available", BYTE),
    0x2A: ("shared_subscription_available", BYTE),
}
PROPERTY_IDS = {name: pid for pid, (name, _t) in PROPERTIES.items()}
# Properties that may legitimately appear more than once; decoded into lists.
MULTI = {"user_property", "subscription_identifier"}


class MQTTError(Exception):
    pass


class ConnectionClosed(MQTTError):
    """The peer closed the connection (EOF or reset)."""


class Timeout(MQTTError, AssertionError):
    """Nothing (complete) arrived within the timeout."""


# ---------------------------------------------------------------- encoding

def varint(n):
    if n < 0 or n > 268435455:
        raise ValueError("varint out of range")
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def u16(n):
    return struct.pack("!H", n)


def u32(n):
    return struct.pack("!I", n)


def utf8(s):
    """A length-prefixed string; bytes are taken as-is (for invalid UTF-8)."""
    b = s if isinstance(s, (bytes, bytearray)) else s.encode("utf-8")
    return u16(len(b)) + bytes(b)


def binary(b):
    if isinstance(b, str):
        b = b.encode("utf-8")
    return u16(len(b)) + bytes(b)


def _prop_items(props):
    """Normalise properties to a list of (id, value) in order.

    `props` is None, a list of (name_or_id, value) pairs (order and repeats
    kept), or a dict name -> value where user_property / subscription_identifier
    may be lists."""
    if not props:
        return []
    items = []
    if isinstance(props, dict):
        seq = []
        for k, v in props.items():
            name = PROPERTIES[k][0] if isinstance(k, int) else k
            if name in MULTI and isinstance(v, list):
                seq.extend((k, x) for x in v)
            else:
                seq.append((k, v))
    else:
        seq = list(props)
    for k, v in seq:
        pid = k if isinstance(k, int) else PROPERTY_IDS[k]
        items.append((pid, v))
    return items


def encode_properties(props):
    """Encode a property block (length varint + properties)."""
    body = bytearray()
    for pid, v in _prop_items(props):
        body += varint(pid)
        t = PROPERTIES[pid][1] if pid in PROPERTIES else None
        if isinstance(v, (bytes, bytearray)) and t not in (BINARY, UTF8):
            body += v  # raw value bytes for odd cases
        elif t == BYTE:
            body.append(v)
        elif t == U16:
            body += u16(v)
        elif t == U32:
            body += u32(v)
        elif t == VARINT:
            body += varint(v)
        elif t == UTF8:
            body += utf8(v)
        elif t == BINARY:
            body += binary(v)
        elif t == PAIR:
            body += utf8(v[0]) + utf8(v[1])
        else:
            raise ValueError(f"unknown property {pid:#x}")
    return varint(len(body)) + bytes(body)


def packet(ptype, flags, body):
    """A complete packet: fixed header + remaining length + body."""
    return bytes([(ptype << 4) | (flags & 0x0F)]) + varint(len(body)) + bytes(body)


def connect(client_id="", version=5, clean=True, keepalive=60, username=None, password=None,
            will=None, properties=None, protocol_name=None, protocol_level=None,
            reserved_flag=False, connect_flags=None):
    """CONNECT. `will` is a dict: topic, payload, qos=0, retain=False,
    properties=None (5.0). `connect_flags` overrides the computed flags byte."""
    if protocol_name is None:
        protocol_name = "MQIsdp" if version == 3 else "MQTT"
    if protocol_level is None:
        protocol_level = version
    flags = 0
    if clean:
        flags |= 0x02
    if will is not None:
        flags |= 0x04 | ((will.get("qos", 0) & 3) << 3)
        if will.get("retain"):
            flags |= 0x20
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    if reserved_flag:
        flags |= 0x01
    if connect_flags is not None:
        flags = connect_flags
    body = bytearray(utf8(protocol_name))
    body.append(protocol_level)
    body.append(flags)
    body += u16(keepalive)
    if version == 5:
        body += encode_properties(properties)
    body += utf8(client_id)
    if will is not None:
        if version == 5:
            body += encode_properties(will.get("properties"))
        body += utf8(will["topic"])
        body += binary(will.get("payload", b""))
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += binary(password)
    return packet(CONNECT, 0, body)


def publish(topic, payload=b"", qos=0, retain=False, dup=False, packet_id=None, properties=None,
            version=5):
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    flags = (0x08 if dup else 0) | ((qos & 3) << 1) | (0x01 if retain else 0)
    body = bytearray(utf8(topic))
    if qos > 0:
        body += u16(packet_id if packet_id is not None else 1)
    if version == 5:
        body += encode_properties(properties)
    body += payload
    return packet(PUBLISH, flags, body)


def _ack(ptype, flags, packet_id, reason_code=None, properties=None, version=5):
    body = bytearray(u16(packet_id))
    if version == 5 and (reason_code is not None or properties):
        body.append(reason_code or 0)
        if properties:
            body += encode_properties(properties)
    return packet(ptype, flags, body)


def puback(packet_id, reason_code=None, properties=None, version=5):
    return _ack(PUBACK, 0, packet_id, reason_code, properties, version)


def pubrec(packet_id, reason_code=None, properties=None, version=5):
    return _ack(PUBREC, 0, packet_id, reason_code, properties, version)


def pubrel(packet_id, reason_code=None, properties=None, version=5):
    return _ack(PUBREL, 0x02, packet_id, reason_code, properties, version)


def pubcomp(packet_id, reason_code=None, properties=None, version=5):
    return _ack(PUBCOMP, 0, packet_id, reason_code, properties, version)


def sub_options(qos=0, nl=False, rap=False, rh=0):
    """The subscription options byte (5.0); for 3.1.1 only the QoS bits."""
    return (qos & 3) | (0x04 if nl else 0) | (0x08 if rap else 0) | ((rh & 3) << 4)


def subscribe(packet_id, filters, properties=None, version=5, flags=0x02):
    """`filters`: a list of (filter, options byte) or bare filter strings (QoS 0)."""
    body = bytearray(u16(packet_id))
    if version == 5:
        body += encode_properties(properties)
    for f in filters:
        if isinstance(f, (str, bytes)):
            f = (f, 0)
        body += utf8(f[0])
        body.append(f[1])
    return packet(SUBSCRIBE, flags, body)


def unsubscribe(packet_id, filters, properties=None, version=5, flags=0x02):
    body = bytearray(u16(packet_id))
    if version == 5:
        body += encode_properties(properties)
    for f in filters:
        body += utf8(f)
    return packet(UNSUBSCRIBE, flags, body)


def pingreq():
    return packet(PINGREQ, 0, b"")


def disconnect(reason_code=None, properties=None, version=5):
    body = bytearray()
    if version == 5 and (reason_code is not None or properties):
        body.append(reason_code or 0)
        if properties:
            body += encode_properties(properties)
    return packet(DISCONNECT, 0, body)


def auth(reason_code=None, properties=None):
    body = bytearray()
    if reason_code is not None or properties:
        body.append(reason_code or 0)
        if properties:
            body += encode_properties(properties)
    return packet(AUTH, 0, body)


# ---------------------------------------------------------------- decoding

class Reader:
    def __init__(self, data):
        self.data = bytes(data)
        self.pos = 0

    def remaining(self):
        return len(self.data) - self.pos

    def take(self, n):
        if self.pos + n > len(self.data):
            raise MQTTError(f"truncated: need {n} bytes at {self.pos} of {len(self.data)}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def byte(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack("!H", self.take(2))[0]

    def u32(self):
        return struct.unpack("!I", self.take(4))[0]

    def varint(self):
        mult, value = 1, 0
        for _ in range(4):
            b = self.byte()
            value += (b & 0x7F) * mult
            if not b & 0x80:
                return value
            mult *= 128
        raise MQTTError("malformed varint")

    def utf8(self):
        return self.take(self.u16()).decode("utf-8", "surrogateescape")

    def binary(self):
        return self.take(self.u16())

    def rest(self):
        return self.take(self.remaining())


def decode_properties(r):
    """Decode a property block. Returns (dict, ordered list of (name, value)).

    In the dict user_property is a list of (key, value) pairs and
    subscription_identifier a list of ints; a property of any other kind that
    appears twice is kept as a list too (so tests can see the duplicate)."""
    length = r.varint()
    sub = Reader(r.take(length))
    d, seq = {}, []
    while sub.remaining():
        pid = sub.varint()
        if pid not in PROPERTIES:
            raise MQTTError(f"unknown property id {pid:#x}")
        name, t = PROPERTIES[pid]
        if t == BYTE:
            v = sub.byte()
        elif t == U16:
            v = sub.u16()
        elif t == U32:
            v = sub.u32()
        elif t == VARINT:
            v = sub.varint()
        elif t == UTF8:
            v = sub.utf8()
        elif t == BINARY:
            v = sub.binary()
        else:
            v = (sub.utf8(), sub.utf8())
        seq.append((name, v))
        if name in MULTI:
            d.setdefault(name, []).append(v)
        elif name in d:
            prev = d[name]
            d[name] = (prev if isinstance(prev, list) else [prev]) + [v]
        else:
            d[name] = v
    return d, seq


class Packet:
    """A decoded packet. Always: type, flags, body (raw bytes after the
    remaining length), raw (whole packet). Per type: see decode()."""

    def __init__(self, ptype, flags, body, raw):
        self.type = ptype
        self.flags = flags
        self.body = body
        self.raw = raw
        self.properties = {}
        self.property_list = []
        self.reason_code = None
        self.packet_id = None

    @property
    def name(self):
        return TYPE_NAMES.get(self.type, f"type{self.type}")

    def __repr__(self):
        fields = {k: v for k, v in self.__dict__.items()
                  if k not in ("body", "raw", "flags", "type", "property_list")
                  and v not in (None, {}, [])}
        return f"<{self.name} flags={self.flags:#x} {fields}>"


def decode(ptype, flags, body, version, raw=b""):
    p = Packet(ptype, flags, body, raw)
    r = Reader(body)
    v5 = version == 5
    if ptype == CONNACK:
        p.session_present = bool(r.byte() & 0x01)
        p.reason_code = r.byte()
        if v5 and r.remaining():
            p.properties, p.property_list = decode_properties(r)
    elif ptype == PUBLISH:
        p.dup = bool(flags & 0x08)
        p.qos = (flags >> 1) & 3
        p.retain = bool(flags & 0x01)
        p.topic = r.utf8()
        if p.qos > 0:
            p.packet_id = r.u16()
        if v5:
            p.properties, p.property_list = decode_properties(r)
        p.payload = r.rest()
    elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        p.packet_id = r.u16()
        p.reason_code = 0
        if v5 and r.remaining():
            p.reason_code = r.byte()
            if r.remaining():
                p.properties, p.property_list = decode_properties(r)
    elif ptype == SUBACK:
        p.packet_id = r.u16()
        if v5:
            p.properties, p.property_list = decode_properties(r)
        p.reason_codes = list(r.rest())
    elif ptype == UNSUBACK:
        p.packet_id = r.u16()
        p.reason_codes = []
        if v5:
            p.properties, p.property_list = decode_properties(r)
            p.reason_codes = list(r.rest())
    elif ptype in (DISCONNECT, AUTH):
        p.reason_code = 0
        if r.remaining():
            p.reason_code = r.byte()
            if r.remaining():
                p.properties, p.property_list = decode_properties(r)
    return p


# ---------------------------------------------------------------- client

class Client:
    """A raw MQTT connection. `version` selects how packets are decoded and
    the default for the builder helpers; `connect()` sets it."""

    def __init__(self, host, port=None, version=5, timeout=DEFAULT_TIMEOUT):
        if port is None:  # a broker handle
            host, port = host.host, host.port
        self.host, self.port = host, port
        self.version = version
        self.timeout = timeout
        self.buf = bytearray()
        self.closed = False
        self.pending = []  # decoded packets set aside while waiting for another
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._next_id = 0

    # -- sending
    def send(self, data):
        self.sock.sendall(bytes(data))

    def try_send(self, data):
        """Send, ignoring a connection the broker already closed."""
        try:
            self.sock.sendall(bytes(data))
            return True
        except OSError:
            return False

    def next_id(self):
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def connect(self, client_id="", version=None, expect=True, timeout=None, **kw):
        """Send CONNECT; with expect=True read and return the CONNACK."""
        if version is not None:
            self.version = version
        self.send(connect(client_id, version=self.version, **kw))
        if not expect:
            return None
        p = self.recv(timeout)
        assert p.type == CONNACK, f"expected CONNACK, got {p}"
        return p

    def publish(self, topic, payload=b"", qos=0, retain=False, dup=False, packet_id=None,
                properties=None):
        if qos > 0 and packet_id is None:
            packet_id = self.next_id()
        self.send(publish(topic, payload, qos, retain, dup, packet_id, properties, self.version))
        return packet_id

    def puback(self, pid, rc=None, properties=None):
        self.send(puback(pid, rc, properties, self.version))

    def pubrec(self, pid, rc=None, properties=None):
        self.send(pubrec(pid, rc, properties, self.version))

    def pubrel(self, pid, rc=None, properties=None):
        self.send(pubrel(pid, rc, properties, self.version))

    def pubcomp(self, pid, rc=None, properties=None):
        self.send(pubcomp(pid, rc, properties, self.version))

    def subscribe(self, filters, properties=None, packet_id=None, expect=True, timeout=None):
        """SUBSCRIBE; `filters` as for subscribe(); with expect=True returns the SUBACK."""
        if isinstance(filters, (str, tuple)):
            filters = [filters]
        pid = packet_id if packet_id is not None else self.next_id()
        self.send(subscribe(pid, filters, properties, self.version))
        if not expect:
            return pid
        p = self.recv(timeout)
        assert p.type == SUBACK, f"expected SUBACK, got {p}"
        assert p.packet_id == pid
        return p

    def unsubscribe(self, filters, properties=None, packet_id=None, expect=True, timeout=None):
        if isinstance(filters, str):
            filters = [filters]
        pid = packet_id if packet_id is not None else self.next_id()
        self.send(unsubscribe(pid, filters, properties, self.version))
        if not expect:
            return pid
        p = self.recv(timeout)
        assert p.type == UNSUBACK, f"expected UNSUBACK, got {p}"
        assert p.packet_id == pid
        return p

    def pingreq(self):
        self.send(pingreq())

    def disconnect(self, rc=None, properties=None, wait=True):
        """Send DISCONNECT and close. With wait=True (the default) half-close
        and wait (bounded) for the server to close its side, so that the
        server has processed the disconnect before the test goes on (e.g.
        reconnects with the same client id)."""
        self.try_send(disconnect(rc, properties, self.version))
        if wait:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            try:
                self.expect_closed(self.timeout)
            except (AssertionError, MQTTError):
                pass
        self.close()

    # -- receiving
    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout("timed out waiting for data")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise Timeout("timed out waiting for data") from None
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as e:
            self.closed = True
            raise ConnectionClosed(f"connection reset: {e}") from None
        if not data:
            self.closed = True
            raise ConnectionClosed("connection closed by peer (EOF)")
        self.buf += data

    def _parse(self):
        """Return (type, flags, body, raw) if a whole packet is buffered, else None."""
        if len(self.buf) < 2:
            return None
        mult, length, i = 1, 0, 1
        while True:
            if i >= len(self.buf):
                return None
            b = self.buf[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
            if i > 4:
                raise MQTTError("malformed remaining length from server")
        if len(self.buf) < i + length:
            return None
        raw = bytes(self.buf[:i + length])
        del self.buf[:i + length]
        return raw[0] >> 4, raw[0] & 0x0F, raw[i:], raw

    def recv(self, timeout=None):
        """The next packet, decoded; raises Timeout or ConnectionClosed."""
        if self.pending:
            return self.pending.pop(0)
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            got = self._parse()
            if got is not None:
                return decode(got[0], got[1], got[2], self.version, got[3])
            if self.closed:
                raise ConnectionClosed("connection closed by peer")
            self._fill(deadline)

    def expect(self, ptype, timeout=None):
        p = self.recv(timeout)
        assert p.type == ptype, f"expected {TYPE_NAMES[ptype]}, got {p}"
        return p

    def recv_publish(self, timeout=None, ack=True):
        """The next packet, which must be a PUBLISH; QoS 1 is PUBACKed and
        QoS 2 completed (PUBREC, wait PUBREL, PUBCOMP) when ack is True."""
        p = self.expect(PUBLISH, timeout)
        if ack and p.qos == 1:
            self.puback(p.packet_id)
        elif ack and p.qos == 2:
            self.pubrec(p.packet_id)
            aside = []
            while True:
                q = self.recv(timeout)
                if q.type == PUBREL and q.packet_id == p.packet_id:
                    break
                aside.append(q)
            self.pending = aside + self.pending
            self.pubcomp(p.packet_id)
        return p

    def expect_closed(self, timeout=DEFAULT_TIMEOUT):
        """Assert the server closes the connection within `timeout`.

        Returns the packets received before the close."""
        deadline = time.monotonic() + timeout
        got, self.pending = self.pending, []
        while True:
            try:
                while True:
                    p = self._parse()
                    if p is None:
                        break
                    got.append(decode(p[0], p[1], p[2], self.version, p[3]))
            except MQTTError:
                self.buf.clear()
            if self.closed:
                return got
            try:
                self._fill(deadline)
            except ConnectionClosed:
                continue
            except Timeout:
                raise AssertionError(
                    f"connection not closed within {timeout} s; received {got}") from None

    def expect_disconnect(self, reason_code, timeout=DEFAULT_TIMEOUT):
        """5.0: assert the next packet is DISCONNECT `reason_code` (an int or a
        collection of allowed codes), followed by the close. Returns it."""
        got = self.expect_closed(timeout)
        discs = [p for p in got if p.type == DISCONNECT]
        assert discs, f"expected DISCONNECT {reason_code}, got only {got} before close"
        d = discs[-1]
        allowed = reason_code if isinstance(reason_code, (set, list, tuple, frozenset)) else {reason_code}
        assert d.reason_code in allowed, \
            f"DISCONNECT reason {d.reason_code:#x}, expected {reason_code}; packets {got}"
        return d

    def expect_closed_without_disconnect(self, timeout=DEFAULT_TIMEOUT):
        """3.x: assert the server closes the connection and sent no DISCONNECT."""
        got = self.expect_closed(timeout)
        assert not [p for p in got if p.type == DISCONNECT], f"3.x got DISCONNECT: {got}"
        return got

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True

    def abort(self):
        """Close abruptly (RST), without DISCONNECT."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connected(broker, client_id="", version=5, **kw):
    """A Client connected successfully (CONNACK 0 asserted)."""
    c = Client(broker, version=version)
    ack = c.connect(client_id, **kw)
    assert ack.reason_code == 0, f"CONNACK {ack}"
    c.connack = ack
    return c
