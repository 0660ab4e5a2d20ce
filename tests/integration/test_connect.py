"""CONNECT / CONNACK, client identifiers, sessions, takeover, keep alive."""

import socket
import time

import pytest

import mqttraw as M
from helpers import raw, raw_marker, uid


# ------------------------------------------------------------ protocol name / level

def test_MQTT_311_3_1_2_2_unsupported_level_gets_connack_0x01_and_close(broker):
    """[MQTT-3.1.1 3.1.2-2]: an unsupported protocol level is answered with
    CONNACK return code 0x01 (in the 3.1.1 format, the client's version is
    unknown) and the connection is closed."""
    b = broker()
    c = M.Client(b, version=4)
    c.send(M.connect(uid(), version=4, protocol_level=6))
    got = c.expect_closed()
    assert len(got) == 1 and got[0].type == M.CONNACK, got
    assert got[0].body == b"\x00\x01", got[0].raw


def test_MQTT_311_3_1_2_2_mqisdp_with_level_4_refused(broker):
    """The 3.1 protocol name with a level other than 3 is refused with 0x01."""
    b = broker()
    c = M.Client(b, version=4)
    c.send(M.connect(uid(), version=4, protocol_name="MQIsdp", protocol_level=4))
    got = c.expect_closed()
    assert [p.type for p in got] == [M.CONNACK], got
    assert got[0].reason_code == 0x01


def test_MQTT_50_3_1_2_2_v5_level_with_mqisdp_name_refused(broker):
    """A 5.0 CONNECT (level 5) under the 3.1 protocol name is refused: a
    CONNACK refusing it (3.1.1-form 0x01 or 5.0-form 0x84), then close."""
    b = broker()
    c = M.Client(b, version=5)
    c.send(M.connect(uid(), version=5, protocol_name="MQIsdp", protocol_level=5))
    got = c.expect_closed()
    assert [p.type for p in got] == [M.CONNACK], got
    assert got[0].body in (b"\x00\x01", b"\x00\x84\x00") or \
        (got[0].body[:2] == b"\x00\x84"), got[0].raw


def test_MQTT_50_3_1_2_1_bad_protocol_name_closed(broker):
    """[MQTT-3.1.1 3.1.2-1, MQTT-5.0 3.1.2-1]
    a protocol name that is not MQTT: the server may send a
    refusing CONNACK, and must close the connection; it never accepts it."""
    b = broker()
    c = M.Client(b, version=4)
    c.send(M.connect(uid(), version=4, protocol_name="MQTX"))
    got = c.expect_closed()
    assert all(p.type == M.CONNACK and p.reason_code != 0 for p in got), got


def test_MQTT_311_3_1_mqtt31_mqisdp_accepted(broker):
    """MQTT 3.1 (protocol name MQIsdp, level 3) clients are accepted and can
    publish and subscribe."""
    b = broker()
    c = M.Client(b, version=3)
    ack = c.connect(uid(), version=3)
    assert ack.body == b"\x00\x00"
    sub = c.subscribe(("t31/x", 1))
    assert sub.reason_codes == [1]
    c.publish("t31/x", b"hello 3.1", qos=1)
    # PUBLISH (to ourselves) and PUBACK may arrive in either order
    got = {p.type: p for p in (c.recv(), c.recv())}
    assert got[M.PUBLISH].payload == b"hello 3.1" and got[M.PUBLISH].qos == 1
    assert M.PUBACK in got


def test_MQTT_31_3_2_connack_byte_1_reserved_no_session_present(broker):
    """MQTT 3.1 (section 3.2, CONNACK): the first byte of the variable header
    is reserved ("not used") -- 3.1 has no session present flag, which came
    with 3.1.1. A 3.1 client resuming its session (clean session 0) gets
    0x00 there, not 0x01."""
    b = broker()
    cid = uid()
    c = M.Client(b, version=3)
    assert c.connect(cid, version=3, clean=False).body == b"\x00\x00"
    c.subscribe(("t31/keep", 1))
    c.disconnect()
    c = M.Client(b, version=3)
    assert c.connect(cid, version=3, clean=False).body == b"\x00\x00"
    # the session was resumed all the same: its subscription is there
    c.publish("t31/keep", b"kept", qos=1)
    got = {p.type: p for p in (c.recv(), c.recv())}
    assert got[M.PUBLISH].payload == b"kept"


# ------------------------------------------------------------ first / second CONNECT

@pytest.mark.parametrize("first", [M.pingreq(), M.publish("a", b"x", version=4),
                                   M.subscribe(1, [("a", 0)], version=4)],
                         ids=["pingreq", "publish", "subscribe"])
def test_MQTT_311_3_1_0_1_first_packet_must_be_connect(broker, first):
    b = broker()
    c = M.Client(b, version=4)
    c.send(first)
    got = c.expect_closed()
    assert got == [], f"server answered a non-CONNECT first packet: {got}"


def test_MQTT_311_3_1_0_2_second_connect_closes_311(broker):
    b = broker()
    c = raw(b, version=4)
    c.send(M.connect(uid(), version=4))
    c.expect_closed_without_disconnect()


@pytest.mark.starling_only  # mosquitto 2.0.11 closes without sending DISCONNECT 0x82
def test_MQTT_50_3_1_0_2_second_connect_protocol_error_v5(broker):
    b = broker()
    c = raw(b, version=5)
    c.send(M.connect(uid(), version=5))
    c.expect_disconnect(0x82)


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_3_1_2_3_reserved_connect_flag_closes(broker, version):
    """[MQTT-3.1.1 3.1.2-3, MQTT-5.0 3.1.2-3] the reserved CONNECT flag must be 0, otherwise the
    connection is closed (5.0: at most a CONNACK >= 0x80 first, never a
    DISCONNECT before a successful CONNACK [MQTT-5.0 3.14.0-1])."""
    b = broker()
    c = M.Client(b, version=version)
    c.send(M.connect(uid(), version=version, reserved_flag=True))
    got = c.expect_closed()
    assert all(p.type == M.CONNACK and p.reason_code >= (0x80 if version == 5 else 1)
               for p in got), got


def test_MQTT_311_3_1_2_14_will_qos_3_closes(broker):
    """Will QoS 3 is malformed: the connection is closed without acceptance."""
    b = broker()
    c = M.Client(b, version=4)
    c.send(M.connect(uid(), version=4, will={"topic": "w", "payload": b"x", "qos": 3}))
    got = c.expect_closed()
    assert all(p.type == M.CONNACK and p.reason_code != 0 for p in got), got


# ------------------------------------------------------------ client identifier

def test_MQTT_50_3_1_3_6_v5_empty_client_id_assigned(broker):
    """[MQTT-5.0 3.1.3-6/7] an empty client id is accepted; the CONNACK carries
    the Assigned Client Identifier [MQTT-5.0 3.2.2-16]."""
    b = broker()
    c = M.Client(b, version=5)
    ack = c.connect("")
    assert ack.reason_code == 0
    assigned = ack.properties.get("assigned_client_identifier")
    assert isinstance(assigned, str) and assigned
    c2 = M.Client(b, version=5)
    ack2 = c2.connect("")
    assert ack2.properties["assigned_client_identifier"] != assigned


def test_MQTT_311_3_1_3_7_311_empty_client_id_clean_session_accepted(broker):
    b = broker()
    c = M.Client(b, version=4)
    ack = c.connect("", clean=True)
    assert ack.body == b"\x00\x00"
    c.pingreq()
    assert c.recv().type == M.PINGRESP


def test_MQTT_311_3_1_3_8_311_empty_client_id_persistent_refused(broker):
    """[MQTT-3.1.1 3.1.3-8] empty client id with CleanSession 0: CONNACK 0x02
    (identifier rejected), then close."""
    b = broker()
    c = M.Client(b, version=4)
    c.send(M.connect("", version=4, clean=False))
    got = c.expect_closed()
    assert [p.type for p in got] == [M.CONNACK], got
    assert got[0].body == b"\x00\x02"


@pytest.mark.parametrize("version,code", [
    (4, 0x02),
    # mosquitto 2.0.11 answers a 5.0 client with 0x80 (unspecified) instead of 0x85
    pytest.param(5, 0x85, marks=pytest.mark.starling_only)])
def test_MQTT_311_3_1_3_9_zero_length_clientid_disallowed(broker, version, code):
    """With allow_zero_length_clientid false, an empty client id is refused:
    3.1.1 0x02 identifier rejected, 5.0 0x85 client identifier not valid."""
    b = broker(allow_zero_length_clientid=False)
    c = M.Client(b, version=version)
    c.send(M.connect("", version=version))
    got = c.expect_closed()
    assert [p.type for p in got] == [M.CONNACK], got
    assert got[0].reason_code == code


# ------------------------------------------------------------ sessions

def test_MQTT_311_3_2_2_3_session_present_0_for_new_session(broker):
    b = broker()
    c = raw(b, version=5, clean=False, properties={"session_expiry_interval": 60})
    assert c.connack.session_present is False
    c4 = raw(b, version=4, clean=False)
    assert c4.connack.body == b"\x00\x00"


def test_MQTT_311_3_2_2_2_session_resumed_with_subscriptions_311(broker):
    """[MQTT-3.1.1 3.2.2-2] CleanSession 0 resuming a session: session present 1 and
    the subscriptions still deliver."""
    b = broker()
    cid = uid()
    c = raw(b, cid, version=4, clean=False)
    c.subscribe(("sess/311", 1))
    c.disconnect()
    c = raw(b, cid, version=4, clean=False)
    assert c.connack.body == b"\x01\x00"
    pub = raw(b, version=4)
    pub.publish("sess/311", b"after resume", qos=1)
    assert pub.recv().type == M.PUBACK
    p = c.recv_publish()
    assert (p.topic, p.payload, p.qos) == ("sess/311", b"after resume", 1)


def test_MQTT_311_3_1_2_6_clean_session_discards_session_311(broker):
    """[MQTT-3.1.1 3.1.2-6] CleanSession 1 discards the previous session: session
    present 0 and the old subscription is gone (marker technique)."""
    b = broker()
    cid = uid()
    c = raw(b, cid, version=4, clean=False)
    c.subscribe(("sess/gone", 1))
    c.disconnect()
    c = raw(b, cid, version=4, clean=True)
    assert c.connack.body == b"\x00\x00"
    c.subscribe(("sess/marker", 0))
    c.publish("sess/gone", b"must not arrive")
    raw_marker(c, c, "sess/marker")


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_3_1_2_6_clean_session_1_not_resumed_by_takeover(broker, version):
    """[MQTT-3.1.1 3.1.2-6] a session started with CleanSession 1 lasts as
    long as its network connection and its state is never reused (5.0: a
    Session Expiry Interval of 0 ends the session with the connection, MQTT
    5.0 section 3.1.2.11.2). A CleanSession 0 CONNECT with the same client id
    that takes the connection over starts a new session: session present 0,
    and the old subscription is gone."""
    b = broker()
    cid = uid()
    old = raw(b, cid, version=version, clean=True)
    old.subscribe(("sess/clean1", 1))
    kw = {"properties": {"session_expiry_interval": 60}} if version == 5 else {}
    new = raw(b, cid, version=version, clean=False, **kw)
    assert new.connack.session_present is False
    assert new.connack.reason_code == 0
    old.expect_closed()
    new.subscribe(("sess/marker", 0))
    new.publish("sess/clean1", b"must not arrive")
    raw_marker(new, new, "sess/marker")


def test_MQTT_50_3_1_2_4_clean_start_discards_session(broker):
    """[MQTT-5.0 3.1.2-4] Clean Start 1 discards an existing session."""
    b = broker()
    cid = uid()
    c = raw(b, cid, clean=False, properties={"session_expiry_interval": 60})
    c.subscribe(("cs/old", M.sub_options(1)))
    c.disconnect()
    c = raw(b, cid, clean=True, properties={"session_expiry_interval": 60})
    assert c.connack.session_present is False
    c.subscribe(("cs/marker", 0))
    c.publish("cs/old", b"must not arrive")
    raw_marker(c, c, "cs/marker")


def test_MQTT_50_3_1_2_5_clean_start_0_resumes_session(broker):
    """[MQTT-5.0 3.1.2-5] Clean Start 0 with an existing session resumes it:
    session present 1 [MQTT-5.0 3.2.2-3], subscriptions kept."""
    b = broker()
    cid = uid()
    c = raw(b, cid, clean=False, properties={"session_expiry_interval": 60})
    c.subscribe(("cs/kept", M.sub_options(1)))
    c.disconnect()
    c = raw(b, cid, clean=False, properties={"session_expiry_interval": 60})
    assert c.connack.session_present is True
    pub = raw(b)
    pub.publish("cs/kept", b"kept", qos=1)
    assert pub.recv().type == M.PUBACK
    p = c.recv_publish()
    assert (p.topic, p.payload) == ("cs/kept", b"kept")


def test_MQTT_50_3_1_2_23_session_expiry_0_ends_session_at_disconnect(broker):
    """5.0: without a Session Expiry Interval the session ends with the
    connection [MQTT-5.0 3.1.2-23]."""
    b = broker()
    cid = uid()
    c = raw(b, cid, clean=False)
    c.subscribe(("se0/t", 1))
    c.disconnect()
    c = raw(b, cid, clean=False)
    assert c.connack.session_present is False


def test_MQTT_50_3_1_2_23_session_kept_until_expiry(broker):
    """5.0 Session Expiry Interval 1: the session survives a quick reconnect
    and is gone once the interval has passed."""
    b = broker()
    cid = uid()
    c = raw(b, cid, clean=False, properties={"session_expiry_interval": 1})
    c.subscribe(("sexp/t", M.sub_options(1)))
    c.disconnect()
    c = raw(b, cid, clean=False, properties={"session_expiry_interval": 1})
    assert c.connack.session_present is True
    c.disconnect()
    time.sleep(2.2)  # let the 1 s expiry pass
    c = raw(b, cid, clean=False, properties={"session_expiry_interval": 1})
    assert c.connack.session_present is False
    c.subscribe(("sexp/marker", 0))
    pub = raw(b)
    pub.publish("sexp/t", b"must not arrive", qos=1)
    assert pub.recv().type == M.PUBACK
    raw_marker(c, pub, "sexp/marker")


def test_MQTT_50_3_14_2_disconnect_session_expiry_0_ends_session(broker):
    """5.0: a Session Expiry Interval of 60 at CONNECT changed to 0 in the
    DISCONNECT ends the session when the connection closes."""
    b = broker()
    cid = uid()
    c = raw(b, cid, clean=False, properties={"session_expiry_interval": 60})
    c.subscribe(("sedisc/t", 1))
    c.disconnect(0, properties={"session_expiry_interval": 0})
    c = raw(b, cid, clean=False, properties={"session_expiry_interval": 60})
    assert c.connack.session_present is False


# ------------------------------------------------------------ takeover

def test_MQTT_311_3_1_4_2_takeover_closes_existing_311(broker):
    """[MQTT-3.1.1 3.1.4-2] a second connection with the same client id closes the
    first (3.1.1: no DISCONNECT)."""
    b = broker()
    cid = uid()
    c1 = raw(b, cid, version=4)
    c2 = raw(b, cid, version=4)
    c1.expect_closed_without_disconnect()
    c2.pingreq()
    assert c2.recv().type == M.PINGRESP


@pytest.mark.starling_only  # mosquitto 2.0.11 closes the old connection without DISCONNECT 0x8E
def test_MQTT_50_3_1_4_3_takeover_disconnect_0x8e_v5(broker):
    """5.0: the existing connection gets DISCONNECT 0x8E session taken over."""
    b = broker()
    cid = uid()
    c1 = raw(b, cid)
    c2 = raw(b, cid)
    c1.expect_disconnect(0x8E)
    c2.pingreq()
    assert c2.recv().type == M.PINGRESP


def test_MQTT_50_3_1_4_3_takeover_keeps_session(broker):
    """Takeover with Clean Start 0: session present 1 and the subscriptions
    made on the first connection deliver to the second."""
    b = broker()
    cid = uid()
    c1 = raw(b, cid, clean=False, properties={"session_expiry_interval": 60})
    c1.subscribe(("take/t", M.sub_options(1)))
    c2 = raw(b, cid, clean=False, properties={"session_expiry_interval": 60})
    assert c2.connack.session_present is True
    got = c1.expect_closed()  # DISCONNECT 0x8E checked by the test above
    assert all(p.type == M.DISCONNECT and p.reason_code == 0x8E for p in got), got
    pub = raw(b)
    pub.publish("take/t", b"to the new connection", qos=1)
    assert pub.recv().type == M.PUBACK
    p = c2.recv_publish()
    assert p.payload == b"to the new connection"


# ------------------------------------------------------------ keep alive, connect timeout

# mosquitto 2.0.11 checks keep alive only every ~5 s: keep alive 1 closes after ~5 s.
@pytest.mark.starling_only
@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_3_1_2_24_keep_alive_enforced(broker, version):
    """[MQTT-3.1.1 3.1.2-24, MQTT-5.0 3.1.2-22] a client silent for 1.5 x keep alive is disconnected
    (keep alive 1 s: closed between 1.5 and ~3 s; 5.0 may send DISCONNECT
    0x8D first)."""
    b = broker()
    c = raw(b, version=version, keepalive=1)
    t0 = time.monotonic()
    got = c.expect_closed(timeout=5)
    elapsed = time.monotonic() - t0
    assert 1.4 <= elapsed <= 3.2, f"closed after {elapsed:.2f} s"
    if version == 5:
        assert all(p.type == M.DISCONNECT and p.reason_code == 0x8D for p in got), got
    else:
        assert got == []


def test_MQTT_311_3_12_4_1_pingreq_keeps_connection_alive(broker):
    """[MQTT-3.1.1 3.12.4-1] PINGREQ is answered with PINGRESP and keeps a keep
    alive 1 s connection open for well over 1.5 s."""
    b = broker()
    c = raw(b, version=4, keepalive=1)
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 3.0:
        c.pingreq()
        p = c.recv(timeout=2)
        assert p.type == M.PINGRESP and p.raw == b"\xd0\x00"
        n += 1
        time.sleep(0.4)  # pacing: time must pass
    assert n >= 6
    c.publish("ka/alive", b"x", qos=1)
    assert c.recv().type == M.PUBACK


@pytest.mark.starling_only  # mosquitto 2.0.11 has no connect_timeout option
def test_connect_timeout_closes_silent_connection(broker):
    """A connection that sends nothing is closed after connect_timeout (1 s)."""
    b = broker(connect_timeout=1)
    s = socket.create_connection((b.host, b.port), timeout=5)
    t0 = time.monotonic()
    try:
        data = s.recv(100)
    except ConnectionResetError:
        data = b""
    elapsed = time.monotonic() - t0
    s.close()
    assert data == b""
    assert 0.8 <= elapsed <= 3.0, f"closed after {elapsed:.2f} s"


def test_MQTT_50_3_1_2_21_server_keep_alive_caps_keepalive(broker):
    """5.0: with max_keepalive 10 a client asking for 60 gets Server Keep
    Alive 10 in the CONNACK [MQTT-5.0 3.2.2-21]."""
    b = broker(max_keepalive=10)
    c = raw(b, keepalive=60)
    assert c.connack.properties.get("server_keep_alive") == 10


# ------------------------------------------------------------ CONNACK properties

def test_MQTT_50_3_2_2_connack_properties_v5(broker):
    """CONNACK properties advertise the configured limits; features that are
    available are either absent (meaning available) or 1; Maximum QoS is
    absent when max_qos is 2 (a value of 2 would be a protocol error)."""
    b = broker(max_packet_size=4096, topic_alias_maximum=7)
    c = raw(b)
    pr = c.connack.properties
    assert c.connack.reason_code == 0
    assert pr.get("maximum_packet_size") == 4096
    assert pr.get("topic_alias_maximum") == 7
    assert "maximum_qos" not in pr
    assert pr.get("retain_available", 1) == 1
    assert pr.get("wildcard_subscription_available", 1) == 1
    assert pr.get("subscription_identifier_available", 1) == 1
    assert pr.get("shared_subscription_available", 1) == 1
    assert 1 <= pr.get("receive_maximum", 65535) <= 65535
    for name, value in c.connack.property_list:
        assert name not in ("maximum_qos",)


@pytest.mark.starling_only  # mosquitto's CONNACK Receive Maximum is max_inflight_messages
def test_MQTT_50_3_2_2_connack_receive_maximum_is_configured(broker):
    b = broker(receive_maximum=7, topic_alias_maximum=3)
    c = raw(b)
    pr = c.connack.properties
    assert pr.get("receive_maximum") == 7
    assert pr.get("topic_alias_maximum") == 3
    assert pr.get("wildcard_subscription_available", 1) == 1
    assert pr.get("subscription_identifier_available", 1) == 1
    assert pr.get("shared_subscription_available", 1) == 1


def test_MQTT_50_3_2_2_9_maximum_qos_1_advertised(broker):
    b = broker(max_qos=1)
    c = raw(b)
    assert c.connack.properties.get("maximum_qos") == 1


def test_MQTT_50_3_2_2_retain_not_available_advertised(broker):
    b = broker(retain_available=False)
    c = raw(b)
    assert c.connack.properties.get("retain_available") == 0


def test_MQTT_50_4_12_0_1_unsupported_authentication_method(broker):
    """[MQTT-5.0 4.12.0-1] an Authentication Method the server does not support:
    CONNACK 0x8C bad authentication method, then close."""
    b = broker()
    c = M.Client(b)
    c.send(M.connect(uid(), properties={"authentication_method": "SCRAM-SHA-1",
                                        "authentication_data": b"client-first"}))
    got = c.expect_closed()
    assert [p.type for p in got] == [M.CONNACK], got
    assert got[0].reason_code == 0x8C


@pytest.mark.starling_only  # mosquitto 2.0.11 disconnects on an invalid filter instead of SUBACK 0x8F
def test_MQTT_50_3_1_2_29_request_problem_information_0(broker):
    """Request Problem Information 0: no Reason String (nor User Property) in
    a failing SUBACK [MQTT-5.0 3.1.2-29]."""
    b = broker()
    c = raw(b, properties={"request_problem_information": 0})
    s = c.subscribe(("bad/#/filter", 0))
    assert s.reason_codes == [0x8F]
    assert "reason_string" not in s.properties and "user_property" not in s.properties


@pytest.mark.starling_only  # mosquitto has no max_session_expiry option
def test_MQTT_50_3_2_2_max_session_expiry_caps_requested_interval(broker):
    """max_session_expiry 1: a client asking for 100 s is told 1 s in the
    CONNACK Session Expiry Interval, and the session expires after ~1 s."""
    b = broker(max_session_expiry=1)
    cid = uid()
    c = raw(b, cid, clean=False, properties={"session_expiry_interval": 100})
    assert c.connack.properties.get("session_expiry_interval") == 1
    c.subscribe(("mse/t", 1))
    c.disconnect()
    time.sleep(2.2)  # let the capped 1 s expiry pass
    c = raw(b, cid, clean=False, properties={"session_expiry_interval": 100})
    assert c.connack.session_present is False
