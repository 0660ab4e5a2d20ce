"""The ACL decision table agrees with a real Mosquitto -- and Starling with both.

tests/data/acl/cases.txt lists (user, client id, access, topic, allow|deny)
for tests/data/acl/aclfile. tests/unit/test_acl.c checks Starling's acl.c
against every line; this test checks the read and write lines against
Debian's mosquitto 2.0 given the same aclfile, so that the table -- and with
it Starling -- has Mosquitto's semantics. (SUBSCRIBE lines are Starling's own
check, and Mosquitto refuses publishing to "$" topics outright: those lines
are not sent to Mosquitto.)

read: the client subscribes to the topic and to "marker/<client id>" (which
the aclfile lets it read); `feed` publishes the topic, then the marker, both
QoS 1; once the marker arrives, the topic has arrived or never will.
The same cases run against a Starling node given the same password and ACL
files (the `acl_broker` fixture is parametrized: mosquitto, starling).
Starling may also refuse the SUBSCRIBE of a topic the client can never read
(0x80), which is the same outcome: nothing arrives.

write: the client publishes the topic (QoS 1, PUBACK awaited), then `feed`
publishes a marker; `watch` (read #) reports whether the topic came first.
"""

import os
import queue
import shutil
import subprocess
import tempfile

import paho.mqtt.client as mqtt
import pytest

from conftest import REPO, Broker
from mosquitto_ref import RefMosquitto

DATA = REPO / "tests" / "data" / "acl"
WAIT = 5.0


def load_cases():
    cases = []
    for line in open(DATA / "cases.txt"):
        if not line.strip() or line.startswith("#"):
            continue
        user, cid, access, topic, expect = line.split()
        if access == "subscribe" or topic.startswith("$"):
            continue
        cases.append((None if user == "-" else user, cid, access, topic, expect == "allow"))
    return cases


class Client:
    def __init__(self, port, user, cid):
        self.msgs = queue.Queue()
        self.acks = queue.Queue()
        self.c = mqtt.Client(client_id=cid, protocol=mqtt.MQTTv311)
        if user:
            self.c.username_pw_set(user, user)
        self.c.on_connect = lambda c, u, f, rc: self.acks.put(("connack", rc))
        self.c.on_subscribe = lambda c, u, mid, g: self.acks.put(("suback", g))
        self.c.on_publish = lambda c, u, mid: self.acks.put(("puback", mid))
        self.c.on_message = lambda c, u, m: self.msgs.put(m.topic)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.acks.get(timeout=WAIT) == ("connack", 0)

    def subscribe(self, filters, refusable=()):
        self.c.subscribe([(f, 1) for f in filters])
        kind, granted = self.acks.get(timeout=WAIT)
        assert kind == "suback" and all(g == 1 or (g == 0x80 and f in refusable)
                                        for f, g in zip(filters, granted)), granted

    def publish(self, topic):
        info = self.c.publish(topic, b"x", qos=1)
        assert self.acks.get(timeout=WAIT) == ("puback", info.mid)

    def topics_until(self, marker):
        seen = []
        while True:
            t = self.msgs.get(timeout=WAIT)
            if t == marker:
                return seen
            seen.append(t)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(scope="module", params=["mosquitto", "starling"])
def mosquitto(request):
    scratch = tempfile.mkdtemp(prefix="starling_acl_")
    pw = os.path.join(scratch, "pw")
    users = ["alice", "bob", "carol", "root", "feed", "watch"]
    for i, u in enumerate(users):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", pw, u, u],
                       check=True)
    if request.param == "mosquitto":
        m = RefMosquitto(scratch, f"allow_anonymous true\npassword_file {pw}\n"
                                  f"acl_file {DATA / 'aclfile'}\n")
        m.refusable = False
    else:
        m = Broker({"allow_anonymous": True, "password_file": pw,
                    "acl_file": DATA / "aclfile", "persistence": False}, scratch)
        m.read_log = m.stderr_text
        m.refusable = True
    yield m
    m.stop()
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.parametrize("user,cid,access,topic,allowed", load_cases(),
                         ids=lambda v: str(v))
def test_case_agrees_with_mosquitto(mosquitto, user, cid, access, topic, allowed):
    feed = Client(mosquitto.port, "feed", "feed-" + cid)
    try:
        if access == "read":
            sub = Client(mosquitto.port, user, cid)
            marker = "marker/" + cid
            if "+" in cid or "#" in cid:
                # No marker can be read by such a client: a bounded wait.
                sub.subscribe(["#"])
                feed.publish(topic)
                try:
                    got = [sub.msgs.get(timeout=1.0)]
                except queue.Empty:
                    got = []
            else:
                sub.subscribe([topic, marker], refusable=[topic] if mosquitto.refusable else [])
                feed.publish(topic)
                feed.publish(marker)
                got = sub.topics_until(marker)
            sub.close()
        else:
            watch = Client(mosquitto.port, "watch", "watch-" + cid)
            watch.subscribe(["#"])
            pub = Client(mosquitto.port, user, cid)
            pub.publish(topic)
            pub.close()
            feed.publish("zz/marker")
            got = watch.topics_until("zz/marker")
            watch.close()
        assert (got == [topic]) == allowed, (got, mosquitto.read_log()[-2000:])
    finally:
        feed.close()
