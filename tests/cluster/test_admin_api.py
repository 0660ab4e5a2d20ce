"""The admin API on a 3-node cluster: any node answers for the whole
cluster, the same call on each node gives the same answer (clients,
subscriptions, routes, topics, retained, banned, users, API keys); a ban
made on one node is enforced on another, a user created on one node logs in
on another, a client on one node is kicked from another."""

import base64
import signal
import json
import time
import urllib.error
import urllib.request

import paho.mqtt.client as mqtt

import mqttraw
import promtext

from conftest import API_KEY

WAIT = 20


def call(node, method, path, body=None, auth=API_KEY):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{node.host}:{node.admin_port}{path}", data=data,
                                 method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_for(pred, timeout=WAIT, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached: {last!r}")


class Client:
    """A paho client connected to one node (5.0), with what it received."""

    def __init__(self, node, cid, username=None, password=None, version=mqtt.MQTTv5):
        self.c = mqtt.Client(client_id=cid, protocol=version)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.rc = None
        self.disconnects = []  # reason codes of every disconnection
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.connect(node.host, node.port, 30)
        self.c.loop_start()
        wait_for(lambda: self.rc is not None, what=f"CONNACK of {cid}")

    # paho 1.6: (client, userdata, flags, rc[, properties]) and
    # (client, userdata, rc[, properties]); a 5.0 rc is a ReasonCodes
    def _on_connect(self, c, u, flags, rc, *props):
        self.rc = rc.value if hasattr(rc, "value") else rc

    def _on_disconnect(self, c, u, rc, *props):
        self.disconnects.append(rc.value if hasattr(rc, "value") else rc)

    def subscribe(self, topic, qos=1):
        got = []
        self.c.on_subscribe = lambda *a: got.append(1)
        self.c.subscribe(topic, qos)
        wait_for(lambda: got, what="SUBACK")

    def close(self):
        self.c.loop_stop()
        try:
            self.c.disconnect()
        except Exception:
            pass


def connack(node, cid, version=mqtt.MQTTv5, **kw):
    cl = Client(node, cid, version=version, **kw)
    rc = cl.rc
    cl.close()
    return rc


def same_everywhere(c, path):
    """GET path on every node until all three answers are equal; returns it."""
    def agree():
        docs = [call(n, "GET", path) for n in c.nodes]
        return docs[0] if all(d == docs[0] for d in docs) and docs[0][0] == 200 else None
    return wait_for(agree, what=f"the same answer to {path} on every node")[1]


def test_same_answer_on_every_node(cluster):
    c = cluster
    n1, n2, n3 = c.nodes
    clients = [Client(n1, "alpha"), Client(n2, "beta"), Client(n3, "delta")]
    gamma = mqttraw.connected(n3, "gamma")  # raw: to see the DISCONNECT's reason code
    try:
        clients[0].subscribe("t/a")
        clients[1].subscribe("t/b")
        gamma.subscribe([("t/a", mqttraw.sub_options(qos=1))])
        clients[2].subscribe("$share/g/t/s")
        st, _ = call(n2, "POST", "/api/v1/publish",
                     {"topic": "keep/1", "payload": "kept", "retain": True, "qos": 1})
        assert st == 200

        doc = same_everywhere(c, "/api/v1/clients")
        assert [(x["clientid"], x["node"], x["connected"], x["proto_ver"])
                for x in doc["data"]] == [("alpha", "n1", True, 5), ("beta", "n2", True, 5),
                                          ("delta", "n3", True, 5), ("gamma", "n3", True, 5)]
        assert doc["meta"] == {"page": 1, "limit": 100, "count": 4, "hasnext": False}

        # paging with a cursor gives the same pages everywhere
        p1 = same_everywhere(c, "/api/v1/clients?limit=3")
        assert [x["clientid"] for x in p1["data"]] == ["alpha", "beta", "delta"]
        assert p1["meta"]["hasnext"] is True
        p2 = same_everywhere(c, "/api/v1/clients?limit=3&cursor=" + p1["meta"]["cursor"])
        assert [x["clientid"] for x in p2["data"]] == ["gamma"]
        assert p2["meta"]["hasnext"] is False
        doc = same_everywhere(c, "/api/v1/clients?node=n3")
        assert [x["clientid"] for x in doc["data"]] == ["delta", "gamma"]

        subs = same_everywhere(c, "/api/v1/subscriptions")
        assert [(s["clientid"], s["topic"], s["node"], s["qos"]) for s in subs["data"]] == [
            ("alpha", "t/a", "n1", 1), ("beta", "t/b", "n2", 1),
            ("delta", "$share/g/t/s", "n3", 1), ("gamma", "t/a", "n3", 1)]
        routes = same_everywhere(c, "/api/v1/routes")
        assert [(r["topic"], r["node"]) for r in routes["data"]] == [
            ("$share/g/t/s", "n3"), ("t/a", "n1"), ("t/a", "n3"), ("t/b", "n2")]
        topics = same_everywhere(c, "/api/v1/topics")
        assert topics["data"] == [{"topic": "$share/g/t/s", "nodes": ["n3"]},
                                  {"topic": "t/a", "nodes": ["n1", "n3"]},
                                  {"topic": "t/b", "nodes": ["n2"]}]
        ret = same_everywhere(c, "/api/v1/retained")
        assert ret["data"] == [{"topic": "keep/1", "qos": 1, "size": 4, "payload": "kept",
                                "encoding": "plain"}]

        # one client's details from a node that does not hold it
        st, d = call(n1, "GET", "/api/v1/clients/gamma")
        assert st == 200 and d["node"] == "n3" and d["connected"] is True
        assert d["subscriptions"] == 1 and d["address"].startswith("127.0.0.1:")

        # kicked from n1 while connected to n3: DISCONNECT 0x98
        st, d = call(n1, "DELETE", "/api/v1/clients/gamma")
        assert (st, d) == (200, {"clientid": "gamma", "result": "kicked"})
        gamma.expect_disconnect(0x98)
        st, d = call(n2, "DELETE", "/api/v1/clients/nobody")
        assert st == 404 and d["code"] == "client_not_found"

        # the retained message deleted on n3 is gone everywhere
        st, _ = call(n3, "DELETE", "/api/v1/retained/keep%2F1")
        assert st == 200
        ret = same_everywhere(c, "/api/v1/retained")
        assert ret["data"] == []
    finally:
        gamma.close()
        for cl in clients:
            cl.close()


def test_ban_on_one_node_is_enforced_on_another(cluster):
    n1, n2, n3 = cluster.nodes
    st, rec = call(n1, "POST", "/api/v1/banned",
                   {"as": "clientid", "who": "evil", "reason": "tests"})
    assert st == 201, rec
    listed = same_everywhere(cluster, "/api/v1/banned")
    assert listed["data"] == [rec]
    assert connack(n3, "evil") == 0x8A
    assert connack(n2, "evil", version=mqtt.MQTTv311) == 5
    assert connack(n2, "good") == 0
    st, _ = call(n2, "DELETE", "/api/v1/banned/clientid/evil")
    assert st == 200
    same_everywhere(cluster, "/api/v1/banned")
    wait_for(lambda: connack(n3, "evil") == 0, what="the ban lifted on n3")


def test_user_created_on_one_node_logs_in_on_another(cluster):
    n1, n2, n3 = cluster.nodes
    st, d = call(n2, "POST", "/api/v1/users", {"username": "ann", "password": "ann-pass-1"})
    assert st == 201 and d["username"] == "ann", d
    users = same_everywhere(cluster, "/api/v1/users")
    assert [u["username"] for u in users["data"]] == ["ann"]
    assert connack(n3, "ann1", username="ann", password="ann-pass-1") == 0
    assert connack(n1, "ann2", username="ann", password="wrong") == 0x86
    st, _ = call(n1, "PUT", "/api/v1/users/ann", {"password": "ann-pass-2"})
    assert st == 200
    wait_for(lambda: connack(n3, "ann3", username="ann", password="ann-pass-2") == 0,
             what="the new password on n3")


def test_api_key_created_on_one_node_works_on_another(cluster):
    n1, n2, n3 = cluster.nodes
    st, d = call(n1, "POST", "/api/v1/apikeys", {"key": "robot", "description": "ci"})
    assert st == 201 and d["key"] == "robot", d
    key = f"robot:{d['secret']}"
    wait_for(lambda: call(n3, "GET", "/api/v1/apikeys", auth=key)[0] == 200,
             what="the new key on n3")
    listed = same_everywhere(cluster, "/api/v1/apikeys")
    assert [(k["key"], k["description"]) for k in listed["data"]] == [("robot", "ci")]
    assert "secret" not in listed["data"][0] and "secret_hash" not in listed["data"][0]
    st, _ = call(n2, "DELETE", "/api/v1/apikeys/robot")
    assert st == 200
    wait_for(lambda: call(n3, "GET", "/api/v1/stats", auth=key)[0] == 401,
             what="the deleted key refused on n3")


def test_a_dead_node_is_named_missing(cluster_factory):
    c = cluster_factory(extra_env={"STARLING_CLUSTER_DOWN_AFTER": "1000"})
    c.start()
    c.wait_healthy()
    n1, n2, n3 = c.nodes
    one, three = Client(n1, "one"), Client(n3, "three")
    try:
        doc = same_everywhere(c, "/api/v1/clients")
        assert [x["clientid"] for x in doc["data"]] == ["one", "three"]
        assert "missing" not in doc["meta"]
        n3.stop(sig=signal.SIGKILL)
        three.close()
        st, doc = call(n1, "GET", "/api/v1/clients")
        assert st == 200, doc
        assert [x["clientid"] for x in doc["data"]] == ["one"]
        assert doc["meta"]["missing"] == ["n3"]
    finally:
        one.close()
        three.close()


# ---- GET /metrics on every node ----------------------------------------------

CLUSTER_FAMILIES = {
    "starling_raft_term": "gauge", "starling_raft_commit_index": "gauge",
    "starling_raft_applied_index": "gauge", "starling_raft_leader": "gauge",
    "starling_raft_leader_changes_total": "counter", "starling_routes": "gauge",
    "starling_raft_resends_thinned_total": "counter",
    "starling_cluster_nodes_down_total": "counter",
    "starling_cluster_taken_for_dead_total": "counter",
    "starling_cluster_sessions_ended_taken_for_dead_total": "counter",
    "starling_cluster_peer_connected": "gauge",
    "starling_forward_queue_frames": "gauge", "starling_forward_queue_bytes": "gauge",
    "starling_forward_outbox_messages": "gauge", "starling_forward_outbox_bytes": "gauge",
    "starling_forward_frames_sent_total": "counter", "starling_forward_bytes_sent_total": "counter",
    "starling_forward_frames_dropped_total": "counter",
    "starling_forward_peer_stalls_total": "counter",
}
PEER_FAMILIES = [f for f in CLUSTER_FAMILIES if f.startswith(("starling_forward_",
                                                               "starling_cluster_peer_"))]


def scrape(node):
    """GET /metrics (no key: public by default), read strictly: (samples, types)."""
    url = f"http://{node.host}:{node.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return promtext.check(r.read().decode("utf-8"))


def peer(m, family, name):
    return m[family][(("peer", name),)]


def test_metrics_on_every_node(cluster):
    """Every node reports Raft (one term, one leader, commit and applied
    indexes) and its forwarding to each other node, by name; QoS 1
    publishes forwarded from n1 to a subscriber on n2 move n1's counters for
    peer n2 and n2's received counters, and n1's outbox for n2 drains."""
    nodes = cluster.nodes

    def consistent():
        res = [scrape(n) for n in nodes]
        ms = [m for m, _ in res]
        ok = (len({m["starling_raft_term"][()] for m in ms}) == 1
              and sum(m["starling_raft_leader"][()] for m in ms) == 1
              and all(m["starling_raft_applied_index"][()] > 0 for m in ms)
              and all(v == 1 for m in ms for v in m["starling_cluster_peer_connected"].values()))
        return res if ok else None
    res = wait_for(consistent, what="one term, one leader, every channel up")
    for n, (m, types) in zip(nodes, res):
        for fam, t in CLUSTER_FAMILIES.items():
            assert types.get(fam) == t, (n.name, fam)
        others = {o.name for o in nodes if o is not n}
        for fam in PEER_FAMILIES:
            assert {dict(k)["peer"] for k in m[fam]} == others, (n.name, fam, m[fam])
        assert m["starling_raft_term"][()] >= 1
        assert m["starling_raft_commit_index"][()] >= m["starling_raft_applied_index"][()] >= 1
        assert m["starling_raft_leader_changes_total"][()] >= 1
        # a formed cluster where no node stopped: nobody taken for dead
        assert m["starling_cluster_nodes_down_total"][()] == 0
        assert m["starling_cluster_taken_for_dead_total"][()] == 0
        assert m["starling_cluster_sessions_ended_taken_for_dead_total"][()] == 0
        # Raft and forwarding on every node; the node families too
        assert types["starling_delivery_latency_seconds"] == "histogram"

    n1, n2 = nodes[0], nodes[1]
    got = []
    sub = mqtt.Client(client_id="metrics-sub", protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, msg: got.append(msg.payload)
    subacked = []
    sub.on_subscribe = lambda *a: subacked.append(1)
    sub.connect(n2.host, n2.port, 30)
    sub.loop_start()
    pub = None
    try:
        sub.subscribe("fwd/#", 1)
        wait_for(lambda: subacked, what="SUBACK")
        b1, b2 = scrape(n1)[0], scrape(n2)[0]
        pub = Client(n1, "metrics-pub")
        n = 20
        infos = [pub.c.publish("fwd/x", b"p" * 50, qos=1) for _ in range(n)]
        for info in infos:
            info.wait_for_publish(WAIT)
        wait_for(lambda: len(got) == n, what=f"{n} forwarded messages")

        def settled():
            a1, a2 = scrape(n1)[0], scrape(n2)[0]
            return (a1, a2) if (
                a2["starling_messages_sent_total"][(("qos", "1"),)] -
                b2["starling_messages_sent_total"][(("qos", "1"),)] == n
                and peer(a1, "starling_forward_outbox_messages", n2.name) == 0) else None
        a1, a2 = wait_for(settled, what="the counters to move and the outbox to drain")
        q1 = (("qos", "1"),)
        assert a1["starling_messages_received_total"][q1] - \
            b1["starling_messages_received_total"][q1] == n
        # forwarded in: counted on n2 too
        assert a2["starling_messages_received_total"][q1] - \
            b2["starling_messages_received_total"][q1] == n
        assert a2["starling_message_bytes_received_total"][q1] - \
            b2["starling_message_bytes_received_total"][q1] == n * (5 + 50)
        assert peer(a1, "starling_forward_frames_sent_total", n2.name) - \
            peer(b1, "starling_forward_frames_sent_total", n2.name) >= n
        assert peer(a1, "starling_forward_bytes_sent_total", n2.name) - \
            peer(b1, "starling_forward_bytes_sent_total", n2.name) >= n * 55
        assert peer(a1, "starling_forward_frames_dropped_total", n2.name) == 0
        assert peer(a1, "starling_forward_peer_stalls_total", n2.name) == 0
        assert peer(a1, "starling_forward_outbox_bytes", n2.name) == 0
        # n2's subscription is a route n1 knows (it forwarded along it)
        assert a1["starling_routes"][()] >= b1["starling_routes"][()] >= 1
    finally:
        sub.loop_stop()
        sub.disconnect()
        if pub:
            pub.close()
