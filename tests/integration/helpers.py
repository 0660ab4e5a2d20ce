"""Shared helpers: a paho-mqtt wrapper with bounded waits, and the marker
technique for proving that a message did not arrive."""

import queue
import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

import mqttraw

WAIT = 5.0


def uid(prefix="c"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def props(packet_type, **kw):
    """paho Properties for `packet_type` (e.g. PacketTypes.PUBLISH) from
    attribute names like MessageExpiryInterval=5, UserProperty=[(k, v)]."""
    p = Properties(packet_type)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


class PahoClient:
    """A paho client on its own network thread, with events for everything a
    test waits for. All waits are bounded (WAIT seconds by default)."""

    def __init__(self, broker, client_id=None, version=5, clean=True, keepalive=60,
                 properties=None, will=None):
        self.broker = broker
        self.version = version
        self.client_id = client_id if client_id is not None else uid()
        self.clean = clean
        self.keepalive = keepalive
        self.connect_properties = properties
        proto = mqtt.MQTTv5 if version == 5 else (mqtt.MQTTv311 if version == 4 else mqtt.MQTTv31)
        self.c = mqtt.Client(client_id=self.client_id, protocol=proto,
                             clean_session=None if version == 5 else clean,
                             reconnect_on_failure=False)
        if will is not None:
            self.c.will_set(will["topic"], will.get("payload"), will.get("qos", 0),
                            will.get("retain", False), will.get("properties"))
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack = None
        self.disconnect_rc = None
        self._cond = threading.Condition()
        self._subacks = {}
        self._unsubacks = {}
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe

    # callbacks (paho's network thread)
    def _on_connect(self, client, userdata, flags, rc, properties=None):
        rcv = rc.value if hasattr(rc, "value") else rc
        self.connack = {"flags": flags, "rc": rcv, "properties": properties}
        self.connected.set()

    def _on_disconnect(self, client, userdata, rc, properties=None):
        self.disconnect_rc = rc.value if hasattr(rc, "value") else rc
        self.disconnected.set()

    def _on_message(self, client, userdata, msg):
        self.messages.put(msg)

    def _on_subscribe(self, client, userdata, mid, granted, properties=None):
        codes = [g.value if hasattr(g, "value") else g for g in granted]
        with self._cond:
            self._subacks[mid] = codes
            self._cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, properties=None, reasoncodes=None):
        if reasoncodes is None:
            codes = []
        elif isinstance(reasoncodes, list):
            codes = [r.value if hasattr(r, "value") else r for r in reasoncodes]
        else:
            codes = [reasoncodes.value if hasattr(reasoncodes, "value") else reasoncodes]
        with self._cond:
            self._unsubacks[mid] = codes
            self._cond.notify_all()

    def _wait_for(self, table, mid, timeout):
        with self._cond:
            ok = self._cond.wait_for(lambda: mid in table, timeout)
            assert ok, f"no ack for mid {mid} within {timeout} s"
            return table.pop(mid)

    # actions
    def connect(self, timeout=WAIT, expect_rc=0):
        kw = {}
        if self.version == 5:
            kw["clean_start"] = self.clean
            kw["properties"] = self.connect_properties
        self.c.connect(self.broker.host, self.broker.port, self.keepalive, **kw)
        self.c.loop_start()
        assert self.connected.wait(timeout), "no CONNACK"
        if expect_rc is not None:
            assert self.connack["rc"] == expect_rc, f"CONNACK {self.connack}"
        return self.connack

    @property
    def session_present(self):
        return bool(self.connack["flags"].get("session present"))

    def subscribe(self, topic, qos=0, nl=False, rap=False, rh=0, properties=None, timeout=WAIT):
        """Subscribe and wait for the SUBACK; returns the list of reason codes."""
        if self.version == 5:
            opts = SubscribeOptions(qos=qos, noLocal=nl, retainAsPublished=rap, retainHandling=rh)
            rc, mid = self.c.subscribe(topic, options=opts, properties=properties)
        else:
            rc, mid = self.c.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return self._wait_for(self._subacks, mid, timeout)

    def unsubscribe(self, topic, timeout=WAIT):
        rc, mid = self.c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return self._wait_for(self._unsubacks, mid, timeout)

    def publish(self, topic, payload=b"", qos=0, retain=False, properties=None, timeout=WAIT):
        """Publish; for QoS > 0 wait until the flow completes."""
        info = self.c.publish(topic, payload, qos, retain, properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish rc {info.rc}"
        if qos > 0:
            info.wait_for_publish(timeout)
            assert info.is_published(), f"QoS {qos} publish to {topic} not acknowledged"
        return info

    def get(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout} s") from None

    def get_until(self, topic, timeout=WAIT):
        """Messages received up to and including the first one on `topic`."""
        out = []
        while True:
            m = self.get(timeout)
            out.append(m)
            if m.topic == topic:
                return out

    def assert_nothing_before_marker(self, marker_topic, publisher=None, timeout=WAIT):
        """Publish a marker on `marker_topic` (which this client is subscribed
        to) and assert it is the first message to arrive."""
        publisher = publisher or self
        payload = uid("marker").encode()
        publisher.publish(marker_topic, payload, qos=1 if publisher is not self else 0)
        m = self.get(timeout)
        assert m.topic == marker_topic and m.payload == payload, \
            f"unexpected message before marker: {m.topic} {m.payload!r}"

    def disconnect(self, timeout=WAIT, properties=None, reasoncode=None):
        if self.connected.is_set() and not self.disconnected.is_set():
            if reasoncode is not None:
                from paho.mqtt.reasoncodes import ReasonCodes
                rc = ReasonCodes(PacketTypes.DISCONNECT, identifier=reasoncode)
                self.c.disconnect(reasoncode=rc, properties=properties)
            else:
                self.c.disconnect()
            self.disconnected.wait(timeout)
        self.c.loop_stop()

    def stop(self):
        """Stop the network thread without a clean DISCONNECT."""
        self.c.loop_stop()
        try:
            self.c.socket().close()
        except Exception:
            pass


def paho(broker, client_id=None, version=5, **kw):
    """A connected PahoClient."""
    c = PahoClient(broker, client_id, version, **kw)
    c.connect()
    return c


def raw(broker, client_id=None, version=5, **kw):
    """A connected raw client (mqttraw.Client)."""
    return mqttraw.connected(broker, client_id if client_id is not None else uid(), version, **kw)


def raw_marker(sub, pub, topic):
    """Raw-client marker: `pub` publishes QoS 0 on `topic` (which `sub` is
    subscribed to); assert the first thing `sub` receives is that marker.
    Returns nothing; fails with what arrived instead."""
    payload = uid("marker").encode()
    pub.publish(topic, payload, qos=0)
    p = sub.recv()
    assert p.type == mqttraw.PUBLISH and p.topic == topic and p.payload == payload, \
        f"unexpected packet before marker: {p}"


def failalloc_sweep(publish_ok, publish_armed, failed_calls, rounds=500):
    """The sweep of tests/failalloc's FAILALLOC_NTH, publish by publish:
    round k publishes b"ok<k>" with the shim disarmed (publish_ok), then
    b"q<k>" with it armed, so that its k-th allocation fails
    (publish_armed(payload) returns "acked", "refused" or "closed"),
    until a PUBLISH makes fewer than k allocations (failed_calls(), the
    count of the shim's "failed call" lines, did not grow); then b"last".
    With FAILALLOC_NTH_REPEAT=R, R rounds in a row fail the same k.
    Returns {outcome: payloads}, with "acked" counting publish_ok's too."""
    outcome = {"acked": set(), "refused": set(), "closed": set()}
    for k in range(1, rounds):
        publish_ok(b"ok%d" % k)
        outcome["acked"].add(b"ok%d" % k)
        before = failed_calls()
        payload = b"q%d" % k
        outcome[publish_armed(payload)].add(payload)
        if failed_calls() == before:
            break  # the PUBLISH made fewer than k allocations: each failed once
    else:
        raise AssertionError(f"the sweep did not end within {rounds} rounds")
    publish_ok(b"last")
    outcome["acked"].add(b"last")
    print(f"sweep: {k} rounds, " + ", ".join(f"{w} {len(v)}" for w, v in outcome.items()))
    assert outcome["refused"], "nothing was refused: the sweep proves nothing"
    return outcome
