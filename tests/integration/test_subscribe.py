"""SUBSCRIBE / UNSUBSCRIBE: wildcards, $-topics, options, identifiers,
shared subscriptions, SUBACK / UNSUBACK codes."""

import pytest

import mqttraw as M
from helpers import paho, raw, raw_marker


def _roundtrip(b, filters, publish_topics, version=5):
    """Subscribe `filters` (QoS 0), publish each topic in order from another
    client followed by a marker; return the topics received before it."""
    s = raw(b, version=version)
    s.subscribe([(f, 0) for f in filters] + [("zz-marker", 0)])
    c = raw(b, version=version)
    for t in publish_topics:
        c.publish(t, t.encode())
    c.publish("zz-marker", b"m")
    got = []
    while True:
        p = s.recv_publish()
        if p.topic == "zz-marker":
            return got
        got.append(p.topic)


def test_MQTT_50_4_7_1_2_plus_matches_one_level(broker):
    b = broker()
    got = _roundtrip(b, ["sport/+/player"], [
        "sport/tennis/player", "sport/tennis/x/player", "sport/player", "sport//player",
        "sport/tennis/player/x"])
    assert got == ["sport/tennis/player", "sport//player"]


def test_MQTT_311_4_7_1_2_multilevel_hash_matches_parent_and_children(broker):
    """[MQTT-3.1.1 4.7.1-2, MQTT-5.0 4.7.1-1]
    '#' matches the parent level and any number of children."""
    b = broker()
    got = _roundtrip(b, ["sport/tennis/#"], [
        "sport/tennis", "sport/tennis/p1", "sport/tennis/p1/ranking", "sport/tennisx",
        "sport/golf"])
    assert got == ["sport/tennis", "sport/tennis/p1", "sport/tennis/p1/ranking"]


def test_MQTT_311_4_7_1_plus_alone_and_leading_slash(broker):
    b = broker()
    got = _roundtrip(b, ["+", "/+"], ["a", "/a", "a/b", "/a/b"])
    assert got == ["a", "/a"]


def test_MQTT_311_4_7_2_1_dollar_topics_not_matched_by_wildcards(broker):
    """[MQTT-3.1.1 4.7.2-1, MQTT-5.0 4.7.2-1] '#' and '+/...' do not match topics starting with '$';
    a filter starting with '$' does."""
    b = broker()
    s = raw(b)
    s.subscribe([("#", 0), ("+/x", 0), ("+", 0)])
    d = raw(b)
    d.subscribe(("$dollar/#", 0))
    c = raw(b)
    c.publish("$dollar/x", b"d")
    p = d.recv_publish()
    assert p.topic == "$dollar/x"
    raw_marker(s, c, "plain-marker")


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_3_8_4_suback_grants_requested_qos(broker, version):
    """SUBACK carries one code per filter, in order, = the granted QoS."""
    b = broker()
    s = raw(b, version=version)
    a = s.subscribe([("g/0", 0), ("g/1", 1), ("g/2", 2)])
    assert a.reason_codes == [0, 1, 2]
    if version == 4:
        assert a.raw[0] == 0x90 and a.raw[1] == 5


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_3_8_4_suback_capped_by_max_qos(broker, version):
    """With max_qos 1 a QoS 2 subscription is granted QoS 1."""
    b = broker(max_qos=1)
    s = raw(b, version=version)
    a = s.subscribe([("cap/2", 2), ("cap/0", 0)])
    assert a.reason_codes == [1, 0]


@pytest.mark.starling_only  # mosquitto 2.0.11 disconnects on an invalid filter instead of a failure code
@pytest.mark.parametrize("version,code", [(4, 0x80), (5, 0x8F)])
def test_MQTT_311_3_8_4_invalid_filter_suback_failure(broker, version, code):
    """An invalid filter gets a failure code (3.1.1 0x80, 5.0 0x8F topic
    filter invalid); valid filters in the same SUBSCRIBE still work."""
    b = broker()
    s = raw(b, version=version)
    a = s.subscribe([("ok/t", 1), ("bad/#/x", 0), ("bad+/x", 0), ("ok/u", 0)])
    assert a.reason_codes == [1, code, code, 0]
    c = raw(b, version=version)
    c.publish("ok/t", b"still works")
    assert s.recv_publish().payload == b"still works"


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_3_10_4_unsubscribe_stops_delivery(broker, version):
    """UNSUBACK (5.0: 0x00 success / 0x11 no subscription existed); after it,
    nothing more is delivered for the filter."""
    b = broker()
    s = raw(b, version=version)
    s.subscribe([("un/t", 1), ("un/marker", 0)])
    a = s.unsubscribe(["un/t", "un/never"])
    if version == 5:
        assert a.reason_codes == [0x00, 0x11]
    else:
        assert a.raw[0] == 0xB0 and a.raw[1] == 2
    c = raw(b, version=version)
    c.publish("un/t", b"must not arrive", qos=1)
    c.expect(M.PUBACK)
    raw_marker(s, c, "un/marker")


def test_MQTT_50_3_8_4_3_resubscribe_replaces_subscription(broker):
    """[MQTT-5.0 3.8.4-3] a SUBSCRIBE with an existing filter replaces it: the new
    QoS applies, one copy per message, and retained messages are re-sent
    (retain handling 0)."""
    b = broker()
    c = raw(b)
    c.publish("resub/t", b"retained", qos=1, retain=True)
    c.expect(M.PUBACK)
    s = raw(b)
    s.subscribe(("resub/t", 0))
    r1 = s.recv_publish()
    assert (r1.payload, r1.retain, r1.qos) == (b"retained", True, 0)
    assert s.subscribe(("resub/t", 1)).reason_codes == [1]
    r2 = s.recv_publish()
    assert (r2.payload, r2.retain, r2.qos) == (b"retained", True, 1)
    s.subscribe(("resub/marker", 0))
    c.publish("resub/t", b"live", qos=2, packet_id=2)
    c.expect(M.PUBREC)
    c.pubrel(2)
    c.expect(M.PUBCOMP)
    p = s.recv_publish()
    assert (p.payload, p.qos) == (b"live", 1)
    raw_marker(s, c, "resub/marker")


# ------------------------------------------------------------ subscription options (5.0)

def test_MQTT_50_3_8_3_3_no_local(broker):
    """[MQTT-5.0 3.8.3-3] No Local: own messages are not forwarded back; other
    clients' messages are."""
    b = broker()
    s = raw(b)
    s.subscribe([("nl/t", M.sub_options(0, nl=True)), ("nl/marker", 0)])
    s.publish("nl/t", b"mine")
    other = raw(b)
    other.publish("nl/t", b"theirs")
    p = s.recv_publish()
    assert p.payload == b"theirs"
    raw_marker(s, s, "nl/marker")


def test_MQTT_50_3_3_1_12_retain_as_published(broker):
    """Live delivery: RETAIN 0 unless Retain As Published is set, then the
    flag as published [MQTT-5.0 3.3.1-12/13]."""
    b = broker()
    rap = raw(b)
    rap.subscribe(("rap/t", M.sub_options(0, rap=True)))
    norap = raw(b)
    norap.subscribe(("rap/t", M.sub_options(0)))
    c = raw(b)
    c.publish("rap/t", b"r1", retain=True)
    c.publish("rap/t", b"r0", retain=False)
    assert [(p.payload, p.retain) for p in (rap.recv_publish(), rap.recv_publish())] == \
        [(b"r1", True), (b"r0", False)]
    assert [(p.payload, p.retain) for p in (norap.recv_publish(), norap.recv_publish())] == \
        [(b"r1", False), (b"r0", False)]


def _retained_setup(b, topic):
    c = raw(b)
    c.publish(topic, b"kept", qos=1, retain=True)
    c.expect(M.PUBACK)
    return c


def test_MQTT_50_3_3_1_9_retain_handling_0_sends_on_every_subscribe(broker):
    b = broker()
    _retained_setup(b, "rh0/t")
    s = raw(b)
    for _ in range(2):
        s.subscribe(("rh0/t", M.sub_options(0, rh=0)))
        p = s.recv_publish()
        assert (p.payload, p.retain) == (b"kept", True)


def test_MQTT_50_3_3_1_10_retain_handling_1_only_new_subscription(broker):
    """[MQTT-5.0 3.3.1-10] Retain Handling 1: retained messages only when the
    subscription did not exist."""
    b = broker()
    c = _retained_setup(b, "rh1/t")
    s = raw(b)
    s.subscribe(("rh1/marker", 0))
    s.subscribe(("rh1/t", M.sub_options(0, rh=1)))
    p = s.recv_publish()
    assert (p.payload, p.retain) == (b"kept", True)
    s.subscribe(("rh1/t", M.sub_options(0, rh=1)))
    raw_marker(s, c, "rh1/marker")


def test_MQTT_50_3_3_1_11_retain_handling_2_never(broker):
    """[MQTT-5.0 3.3.1-11] Retain Handling 2: no retained messages at subscribe."""
    b = broker()
    c = _retained_setup(b, "rh2/t")
    s = raw(b)
    s.subscribe([("rh2/t", M.sub_options(0, rh=2)), ("rh2/marker", 0)])
    raw_marker(s, c, "rh2/marker")


def test_MQTT_50_3_3_4_3_subscription_identifier_delivered(broker):
    """[MQTT-5.0 3.3.4-3] the Subscription Identifier of the matching
    subscription is included in the PUBLISH; none when none was given."""
    b = broker()
    s = raw(b)
    s.subscribe(("sid/a/#", 1), properties={"subscription_identifier": 1234})
    s.subscribe(("sid/b", 1))
    c = raw(b)
    c.publish("sid/a/x", b"a")
    c.publish("sid/b", b"b")
    pa, pb = s.recv_publish(), s.recv_publish()
    assert pa.properties.get("subscription_identifier") == [1234]
    assert "subscription_identifier" not in pb.properties


def test_MQTT_50_3_8_2_subscription_identifier_0_protocol_error(broker):
    """A Subscription Identifier of 0 is a protocol error."""
    b = broker()
    s = raw(b)
    s.subscribe(("sid0/t", 0), properties={"subscription_identifier": 0}, expect=False)
    s.expect_disconnect((0x81, 0x82))


def test_MQTT_50_3_3_4_2_overlapping_subscriptions_max_qos(broker):
    """[MQTT-5.0 3.3.4-2] overlapping subscriptions: the message is delivered
    respecting the maximum QoS of the matching subscriptions (extra copies
    are allowed by the spec)."""
    b = broker()
    s = raw(b)
    s.subscribe([("ov/#", 0), ("ov/+", 2), ("ov/marker", 0)])
    c = raw(b)
    c.publish("ov/t", b"x", qos=2, packet_id=1)
    c.expect(M.PUBREC)
    c.pubrel(1)
    c.expect(M.PUBCOMP)
    c.publish("ov/marker", b"m")
    got = []
    while True:
        p = s.recv_publish()
        if p.topic == "ov/marker":
            break
        got.append(p)
    assert got and max(p.qos for p in got) == 2


@pytest.mark.starling_only  # mosquitto 2.0.11 sends one copy per matching subscription
def test_MQTT_50_3_3_4_4_overlapping_one_copy_with_all_identifiers(broker):
    """[MQTT-5.0 3.3.4-4/5] delivered as one copy: maximum QoS and every
    matching Subscription Identifier."""
    b = broker()
    s = raw(b)
    s.subscribe(("ov1/#", 0), properties={"subscription_identifier": 7})
    s.subscribe(("ov1/+", 1), properties={"subscription_identifier": 9})
    s.subscribe(("ov1/marker", 0))
    c = raw(b)
    c.publish("ov1/t", b"x", qos=1)
    c.expect(M.PUBACK)
    p = s.recv_publish()
    assert p.topic == "ov1/t" and p.qos == 1
    assert sorted(p.properties.get("subscription_identifier", [])) == [7, 9]
    raw_marker(s, c, "ov1/marker")


# ------------------------------------------------------------ shared subscriptions

def test_MQTT_50_4_8_2_shared_subscription_one_member_each(broker):
    """(MQTT 5.0 section 4.8.2) each message to a shared group goes to exactly one member."""
    b = broker()
    m1, m2 = raw(b), raw(b)
    for m in (m1, m2):
        assert m.subscribe(("$share/g1/sh/t", 1)).reason_codes == [1]
        m.subscribe(("sh/marker", 0))
    c = raw(b)
    n = 20
    for i in range(n):
        c.publish("sh/t", b"%d" % i, qos=1)
        c.expect(M.PUBACK)
    c.publish("sh/marker", b"m")
    got = []
    for m in (m1, m2):
        while True:
            p = m.recv_publish()
            if p.topic == "sh/marker":
                break
            assert p.topic == "sh/t"
            got.append(p.payload)
    assert sorted(got) == sorted(b"%d" % i for i in range(n))


def test_MQTT_50_4_8_2_two_groups_each_get_a_copy(broker):
    b = broker()
    g1, g2, plain = raw(b), raw(b), raw(b)
    g1.subscribe(("$share/ga/two/t", 0))
    g2.subscribe(("$share/gb/two/t", 0))
    plain.subscribe(("two/t", 0))
    c = raw(b)
    c.publish("two/t", b"x")
    for s in (g1, g2, plain):
        p = s.recv_publish()
        assert (p.topic, p.payload) == ("two/t", b"x")


def test_MQTT_50_4_8_2_shared_wildcard_filter(broker):
    b = broker()
    s = raw(b)
    s.subscribe(("$share/gw/shw/#", 0))
    c = raw(b)
    c.publish("shw/a/b", b"x")
    assert s.recv_publish().topic == "shw/a/b"


@pytest.mark.starling_only  # mosquitto 2.0.11 accepts it (SUBACK 0x00)
def test_MQTT_50_3_8_3_4_no_local_on_shared_subscription(broker):
    """[MQTT-5.0 3.8.3-4] No Local on a shared subscription is a protocol error."""
    b = broker()
    s = raw(b)
    s.subscribe(("$share/g/nlsh/t", M.sub_options(0, nl=True)), expect=False)
    s.expect_disconnect(0x82)


def test_MQTT_50_4_8_2_unsubscribe_shared(broker):
    b = broker()
    s = raw(b)
    s.subscribe([("$share/gu/shu/t", 0), ("shu/marker", 0)])
    assert s.unsubscribe("$share/gu/shu/t").reason_codes == [0]
    c = raw(b)
    c.publish("shu/t", b"x")
    raw_marker(s, c, "shu/marker")


# ------------------------------------------------------------ paho

def test_paho_subscribe_wildcards_v311(broker):
    b = broker()
    s = paho(b, version=4)
    assert s.subscribe("paho/+/x", 1) == [1]
    p = paho(b, version=4)
    p.publish("paho/a/x", b"1", qos=1)
    p.publish("paho/a/y", b"2", qos=1)
    p.publish("paho/b/x", b"3", qos=1)
    got = [s.get(), s.get()]
    assert [(m.topic, m.payload) for m in got] == [("paho/a/x", b"1"), ("paho/b/x", b"3")]


def test_paho_v5_unsubscribe_codes(broker):
    b = broker()
    s = paho(b)
    s.subscribe("pu/t", 0)
    assert s.unsubscribe("pu/t") == [0]
    assert s.unsubscribe("pu/t") == [0x11]
