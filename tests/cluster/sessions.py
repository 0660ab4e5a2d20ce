"""Steps the tests of persistent sessions on a cluster share
(test_session_faults.py, test_session_frames.py, test_forward.py,
test_session_moves.py): a persistent subscriber, messages queued for it
while it is offline (seen through a witness), its client resuming the
session on another node."""

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import mqttraw
from helpers import PahoClient, uid

WAIT = 10


def expiry(seconds):
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = seconds
    return p


def subscriber(node, cid, topic, session_expiry):
    """cid's client on node, connected with a clean start and a session that
    outlives it by session_expiry seconds, subscribed to topic at QoS 1."""
    x = PahoClient(node, cid, 5, clean=True, properties=expiry(session_expiry))
    x.connect()
    assert x.subscribe(topic, qos=1) == [1]
    return x


def witness_and_publisher(node, pub_node, topic):
    """A witness subscribed to topic at QoS 1 on node, and a publisher
    connected to pub_node: returns (witness, publisher)."""
    witness = PahoClient(node, uid("witness"), 5)
    witness.connect()
    assert witness.subscribe(topic, qos=1) == [1]
    pub = PahoClient(pub_node, uid("pub"), 5)
    pub.connect()
    return witness, pub


def publish_witnessed(pub, witness, topic, payloads):
    """pub publishes payloads at QoS 1 (each acknowledged) and the witness
    gets them all, in order: once it has, so has every offline session on
    its node (one ordered channel from the publisher's node). Compared by
    their first 16 bytes (the whole of short ones): a failure shows large
    payloads readably."""
    for payload in payloads:
        pub.publish(topic, payload, qos=1)  # acknowledged
    assert [witness.get(WAIT).payload[:16] for _ in payloads] == [p[:16] for p in payloads]


def offline_witnessed(a, pub_node, cid, topic, payloads, session_expiry=600):
    """A persistent QoS 1 session cid on node a, offline, then `payloads`
    published on pub_node and acknowledged, seen by a witness on node a (so
    the session holds them all): returns (witness, publisher), connected."""
    subscriber(a, cid, topic, session_expiry).disconnect()
    witness, pub = witness_and_publisher(a, pub_node, topic)
    publish_witnessed(pub, witness, topic, payloads)
    return witness, pub


def queued_offline(a, pub_node, cid, topic, n, tag, size=0, session_expiry=600):
    """A persistent QoS 1 session cid on node a that is offline and holds n
    acknowledged messages published on pub_node (payloads "tag-i", or of
    `size` bytes starting with i in 4 digits); returns their payloads."""
    sent = [b"%04d" % i + bytes(size - 4) if size else f"{tag}-{i}".encode() for i in range(n)]
    witness, pub = offline_witnessed(a, pub_node, cid, topic, sent, session_expiry)
    witness.disconnect()
    pub.disconnect()
    return sent


def resumed_on(node, cid, session_expiry=600, timeout=WAIT + 10, tries=1):
    """cid's client resumes its session on node (session present 1). Right
    after the leader may have been killed, tries > 1: a CONNECT whose claim
    waits for the election longer than cluster_claim_timeout is refused
    with 0x88 (Server unavailable), and the client connects again, as
    clients do."""
    for _ in range(tries):
        y = PahoClient(node, cid, 5, clean=False, properties=expiry(session_expiry))
        ack = y.connect(timeout=timeout, expect_rc=None)
        if ack["rc"] != 0x88:
            break
        y.stop()
    assert ack["rc"] == 0, f"CONNACK {ack}"
    assert y.session_present
    return y


def resumed_elsewhere(node, pub_id, props, wait_s, tries=1):
    """pub_id's client resumes its session on node: its raw client. With
    tries, a CONNECT refused with 0x88 (Server unavailable: its claim
    waited out cluster_claim_timeout, say for an election after a fault)
    is made again, as clients do, up to that many times."""
    for _ in range(tries):
        q = mqttraw.Client(node)
        ack = q.connect(pub_id, clean=False, properties=props, timeout=wait_s)
        if ack.reason_code != 0x88:
            break
        q.close()
    assert ack.reason_code == 0 and ack.session_present, ack
    return q
