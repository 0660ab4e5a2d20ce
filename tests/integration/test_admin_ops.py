"""The admin API's operations on a single node (docs/api.md): clients
(paging, cursor, filters, details, kick), subscriptions, routes, topics,
retained messages, publish/batch, banned clients, users and API keys, with
the exact JSON answers and the errors."""

import base64
import json
import os
import time

import pytest

import mqttraw
from conftest import free_port
from helpers import raw, uid
from test_admin import API_KEY, assert_error, get_json, request

pytestmark = pytest.mark.starling_only

WAIT = 10.0


@pytest.fixture
def node(broker):
    return broker(admin=True, api_key=API_KEY)


def wait_for(pred, timeout=WAIT, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached: {last!r}")


def node_name(b):
    return get_json(b, "/api/v1/cluster")["nodes"][0]["name"]


def post(b, path, body, method="POST", auth=API_KEY):
    st, h, data = request(b, method, path, body=body, auth=auth)
    return st, (json.loads(data) if data else None)


def strip(doc, *keys):
    for k in keys:
        doc.pop(k, None)
    return doc


# ---- clients ---------------------------------------------------------------


def test_clients_list_filters_and_cursor(node):
    name = node_name(node)
    a = raw(node, "a-one", username="ann")
    b = raw(node, "a-two", version=4)
    off = raw(node, "b-off", clean=False, properties={"session_expiry_interval": 600})
    off.disconnect()
    wait_for(lambda: not any(c["connected"] for c in get_json(
        node, "/api/v1/clients?clientid_prefix=b-")["data"]), what="b-off offline")
    try:
        doc = get_json(node, "/api/v1/clients")
        for c in doc["data"]:
            assert isinstance(c.pop("connected_at"), int)
        assert doc == {
            "data": [
                {"clientid": "a-one", "node": name, "connected": True, "proto_ver": 5,
                 "expiry_interval": 0, "subscriptions": 0, "inflight": 0, "queued": 0,
                 "username": "ann"},
                {"clientid": "a-two", "node": name, "connected": True, "proto_ver": 4,
                 "expiry_interval": 0, "subscriptions": 0, "inflight": 0, "queued": 0,
                 "username": None},
                {"clientid": "b-off", "node": name, "connected": False, "proto_ver": 5,
                 "expiry_interval": 600, "subscriptions": 0, "inflight": 0, "queued": 0,
                 "username": None},
            ],
            "meta": {"page": 1, "limit": 100, "count": 3, "hasnext": False},
        }

        def ids(q):
            return [c["clientid"] for c in get_json(node, "/api/v1/clients" + q)["data"]]

        assert ids("?username=ann") == ["a-one"]
        assert ids("?clientid_prefix=a-") == ["a-one", "a-two"]
        assert ids("?connected=false") == ["b-off"]
        assert ids("?connected=true&proto_ver=4") == ["a-two"]
        assert ids(f"?node={name}&proto_ver=5") == ["a-one", "b-off"]
        assert ids("?node=elsewhere") == []
        assert ids("?page=2&limit=2") == ["b-off"]

        p1 = get_json(node, "/api/v1/clients?limit=2")
        assert [c["clientid"] for c in p1["data"]] == ["a-one", "a-two"]
        assert p1["meta"]["hasnext"] is True and p1["meta"]["count"] == 3
        cursor = p1["meta"]["cursor"]
        p2 = get_json(node, f"/api/v1/clients?limit=2&cursor={cursor}")
        assert [c["clientid"] for c in p2["data"]] == ["b-off"]
        assert p2["meta"] == {"page": 1, "limit": 2, "count": 3, "hasnext": False}
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("query,code", [
    ("page=0", "bad_paging"), ("limit=1001", "bad_paging"), ("limit=ten", "bad_paging"),
    ("page=-1", "bad_paging"), ("page=99999999999", "bad_paging"),
    ("cursor=%21%21", "bad_paging"), ("cursor=YQ&page=2", "bad_paging"),
    ("connected=maybe", "bad_request"), ("proto_ver=6", "bad_request"),
    ("sort=clientid", "bad_request"),
])
def test_clients_bad_query(node, query, code):
    assert_error(request(node, "GET", "/api/v1/clients?" + query), 400, code)


def test_client_details_and_kick(node):
    name = node_name(node)
    c = raw(node, "det-1", username="dora")
    c.subscribe([("d/#", mqttraw.sub_options(qos=1))])
    c.publish("d/x", b"12345", qos=0)
    c.expect(mqttraw.PUBLISH)
    d = get_json(node, "/api/v1/clients/det-1")
    port = c.sock.getsockname()[1]
    assert isinstance(d.pop("connected_at"), int)
    # CONNECT (det-1, dora) 29 bytes, SUBSCRIBE 11, PUBLISH 12 in; CONNACK, SUBACK, PUBLISH out
    assert d["bytes_in"] > 0 and d["bytes_out"] > 0
    assert strip(d, "bytes_in", "bytes_out") == {
        "clientid": "det-1", "node": name, "connected": True, "proto_ver": 5,
        "expiry_interval": 0, "subscriptions": 1, "inflight": 0, "queued": 0,
        "username": "dora", "address": f"127.0.0.1:{port}", "keepalive": 60,
        "messages_in": 1, "messages_out": 1, "messages_dropped": 0}
    assert_error(request(node, "GET", "/api/v1/clients/nobody"), 404, "client_not_found")

    st, h, data = request(node, "DELETE", "/api/v1/clients/det-1")
    assert st == 200 and json.loads(data) == {"clientid": "det-1", "result": "kicked"}
    c.expect_disconnect(0x98)
    assert_error(request(node, "DELETE", "/api/v1/clients/det-1"), 404, "client_not_found")

    off = raw(node, "det-off", clean=False, properties={"session_expiry_interval": 60})
    off.disconnect()
    wait_for(lambda: not get_json(node, "/api/v1/clients/det-off")["connected"])
    assert_error(request(node, "DELETE", "/api/v1/clients/det-off"), 409, "not_connected")


def test_client_id_with_slash_and_kick_311(node):
    c = raw(node, "a/b c", version=4)
    d = get_json(node, "/api/v1/clients/a%2Fb%20c")
    assert d["clientid"] == "a/b c" and d["proto_ver"] == 4
    st, _, _ = request(node, "DELETE", "/api/v1/clients/a%2Fb%20c")
    assert st == 200
    c.expect_closed()  # 3.1.1: no DISCONNECT from a server, the connection closes


# ---- subscriptions, routes, topics ------------------------------------------


def test_subscriptions_routes_topics(node):
    name = node_name(node)
    a = raw(node, "s-a")
    b = raw(node, "s-b")
    a.subscribe([("x/+", mqttraw.sub_options(qos=2, nl=True, rap=True, rh=2))],
                properties={"subscription_identifier": 7})
    a.subscribe([("y", mqttraw.sub_options(qos=0))])
    b.subscribe([("x/+", mqttraw.sub_options(qos=1))])
    try:
        assert get_json(node, "/api/v1/subscriptions") == {
            "data": [
                {"clientid": "s-a", "topic": "x/+", "node": name, "qos": 2, "nl": True,
                 "rap": True, "rh": 2, "subscription_id": 7},
                {"clientid": "s-a", "topic": "y", "node": name, "qos": 0, "nl": False,
                 "rap": False, "rh": 0},
                {"clientid": "s-b", "topic": "x/+", "node": name, "qos": 1, "nl": False,
                 "rap": False, "rh": 0},
            ],
            "meta": {"page": 1, "limit": 100, "count": 3, "hasnext": False},
        }
        doc = get_json(node, "/api/v1/subscriptions?topic=x/%2B&limit=1")
        assert [(s["clientid"], s["topic"]) for s in doc["data"]] == [("s-a", "x/+")]
        assert doc["meta"] == {"page": 1, "limit": 1, "count": 2, "hasnext": True}
        doc = get_json(node, "/api/v1/subscriptions?clientid=s-b")
        assert [(s["clientid"], s["topic"]) for s in doc["data"]] == [("s-b", "x/+")]
        assert get_json(node, "/api/v1/routes") == {
            "data": [{"topic": "x/+", "node": name}, {"topic": "y", "node": name}],
            "meta": {"page": 1, "limit": 100, "count": 2, "hasnext": False}}
        assert get_json(node, "/api/v1/routes?topic=y")["data"] == [{"topic": "y", "node": name}]
        assert get_json(node, "/api/v1/topics?limit=1&page=2") == {
            "data": [{"topic": "y", "nodes": [name]}],
            "meta": {"page": 2, "limit": 1, "count": 2, "hasnext": False}}
        assert_error(request(node, "GET", "/api/v1/routes?page=0"), 400, "bad_paging")
        assert_error(request(node, "GET", "/api/v1/subscriptions?qos=1"), 400, "bad_request")
    finally:
        a.close()
        b.close()


# ---- retained ----------------------------------------------------------------


def test_retained_list_show_delete(node):
    st, _ = post(node, "/api/v1/publish", {"topic": "r/text", "payload": "hello", "retain": True,
                                           "qos": 1})
    assert st == 200
    st, _ = post(node, "/api/v1/publish", {"topic": "r/bin", "payload": "AP8=",
                                           "encoding": "base64", "retain": True})
    assert st == 200
    assert get_json(node, "/api/v1/retained") == {
        "data": [
            {"topic": "r/bin", "qos": 0, "size": 2, "payload": "AP8=", "encoding": "base64"},
            {"topic": "r/text", "qos": 1, "size": 5, "payload": "hello", "encoding": "plain"},
        ],
        "meta": {"page": 1, "limit": 100, "count": 2, "hasnext": False}}
    assert get_json(node, "/api/v1/retained?limit=1&page=2")["data"][0]["topic"] == "r/text"
    assert get_json(node, "/api/v1/retained/r%2Ftext") == {
        "topic": "r/text", "qos": 1, "size": 5, "payload": "hello", "encoding": "plain"}
    sub = raw(node, "ret-sub")
    sub.subscribe([("r/#", mqttraw.sub_options(qos=1))])
    got = {sub.recv_publish().topic for _ in range(2)}
    assert got == {"r/text", "r/bin"}
    st, _, data = request(node, "DELETE", "/api/v1/retained/r%2Ftext")
    assert st == 200 and json.loads(data) == {"topic": "r/text", "result": "deleted"}
    # no message to subscribers for a deletion
    sub.publish("r/marker", b"m")
    assert sub.recv_publish().topic == "r/marker"
    assert_error(request(node, "GET", "/api/v1/retained/r%2Ftext"), 404, "not_found")
    assert_error(request(node, "DELETE", "/api/v1/retained/r%2Ftext"), 404, "not_found")
    assert_error(request(node, "DELETE", "/api/v1/retained/r%2F%23"), 400, "bad_request")
    assert [m["topic"] for m in get_json(node, "/api/v1/retained")["data"]] == ["r/bin"]
    sub.close()


# ---- publish/batch -----------------------------------------------------------


def test_publish_batch(node):
    sub = raw(node, "batch-sub")
    sub.subscribe([("b/#", mqttraw.sub_options(qos=1))])
    batch = [{"topic": "b/1", "payload": "one", "qos": 1},
             {"topic": "b/2", "payload": "dHdv", "encoding": "base64"}]
    st, doc = post(node, "/api/v1/publish/batch", batch)
    assert (st, doc) == (200, {"data": [
        {"topic": "b/1", "qos": 1, "retain": False, "delivered": 1},
        {"topic": "b/2", "qos": 0, "retain": False, "delivered": 1}]})
    p1, p2 = sub.recv_publish(), sub.recv_publish()
    assert (p1.topic, p1.payload, p2.topic, p2.payload) == ("b/1", b"one", "b/2", b"two")
    # a bad message refuses the whole batch: nothing is published
    bad = [{"topic": "b/3"}, {"topic": "b/4", "colour": "red"}]
    doc = assert_error(request(node, "POST", "/api/v1/publish/batch", body=bad), 400,
                       "bad_request")
    assert "message 1" in doc["message"]
    assert_error(request(node, "POST", "/api/v1/publish/batch", body={"topic": "b"}), 400,
                 "bad_json")
    assert_error(request(node, "POST", "/api/v1/publish/batch", body=[]), 400, "bad_request")
    assert_error(request(node, "POST", "/api/v1/publish/batch",
                         body=[{"topic": "b/x"}] * 101), 400, "bad_request")
    assert_error(request(node, "POST", "/api/v1/publish/batch", body=[1, 2]), 400,
                 "bad_request")
    sub.publish("b/marker", b"m")
    assert sub.recv_publish().topic == "b/marker"
    sub.close()


# ---- banned ------------------------------------------------------------------


def connack(node, cid, version=5, **kw):
    c = mqttraw.Client(node, version=version)
    try:
        return c.connect(cid, **kw).reason_code
    finally:
        c.close()


def test_banned(node):
    st, rec = post(node, "/api/v1/banned", {"as": "clientid", "who": "evil", "reason": "spam"})
    assert st == 201
    at = rec.pop("at")
    assert isinstance(at, int) and abs(at - time.time()) < 60
    assert rec == {"as": "clientid", "who": "evil", "reason": "spam", "until": 0}
    assert connack(node, "evil") == 0x8A
    assert connack(node, "evil", version=4) == 5
    assert connack(node, "evil", version=3) == 5
    assert connack(node, "not-evil") == 0
    assert_error(request(node, "POST", "/api/v1/banned", body={"as": "clientid", "who": "evil"}),
                 409, "already_exists")

    st, rec = post(node, "/api/v1/banned", {"as": "username", "who": "mallory",
                                            "duration": 3600})
    assert st == 201 and rec["until"] - rec["at"] == 3600
    assert connack(node, uid(), username="mallory") == 0x8A
    st, _ = post(node, "/api/v1/banned", {"as": "address", "who": "127.0.0.1"})
    assert st == 201
    assert connack(node, uid()) == 0x8A
    listed = get_json(node, "/api/v1/banned")
    assert [(b["as"], b["who"]) for b in listed["data"]] == [
        ("address", "127.0.0.1"), ("clientid", "evil"), ("username", "mallory")]
    assert listed["meta"]["count"] == 3
    st, _, data = request(node, "DELETE", "/api/v1/banned/address/127.0.0.1")
    assert st == 200 and json.loads(data) == {"as": "address", "who": "127.0.0.1",
                                              "result": "deleted"}
    assert connack(node, uid()) == 0
    assert_error(request(node, "DELETE", "/api/v1/banned/address/127.0.0.1"), 404, "not_found")
    assert_error(request(node, "DELETE", "/api/v1/banned/ip/1.2.3.4"), 400, "bad_request")

    # a ban with an end stops at its end
    st, rec = post(node, "/api/v1/banned", {"as": "clientid", "who": "brief", "duration": 2})
    assert st == 201
    # refused while it lasts (a slow machine may already be past its end)
    assert connack(node, "brief") == 0x8A or time.time() >= rec["until"]
    wait_for(lambda: connack(node, "brief") == 0, timeout=5, what="the ban's end")
    assert "brief" not in [b["who"] for b in get_json(node, "/api/v1/banned")["data"]]


@pytest.mark.parametrize("body,part", [
    ({"as": "ip", "who": "x"}, "'as'"),
    ({"as": "address", "who": "localhost"}, "IPv4 or IPv6"),
    ({"as": "address", "who": "1.2.3.4:5"}, "IPv4 or IPv6"),
    ({"as": "clientid"}, "'who'"),
    ({"as": "clientid", "who": ""}, "'who'"),
    ({"as": "clientid", "who": "x", "until": 5}, "'until'"),
    ({"as": "clientid", "who": "x", "duration": 0}, "'duration'"),
    ({"as": "clientid", "who": "x", "duration": "1h"}, "'duration'"),
    ({"as": "clientid", "who": "x", "duration": 5, "until": 2000000000}, "not both"),
    ({"as": "clientid", "who": "x", "by": "me"}, "unknown field 'by'"),
    ({"as": "clientid", "who": "x", "reason": "r" * 300}, "'reason'"),
])
def test_banned_bad_bodies(node, body, part):
    assert_error(request(node, "POST", "/api/v1/banned", body=body), 400, "bad_request", part)


def test_bad_bodies_everywhere(node):
    for path in ("/api/v1/banned", "/api/v1/users", "/api/v1/apikeys"):
        assert_error(request(node, "POST", path, body="{"), 400, "bad_json")
        assert_error(request(node, "POST", path, body="[1]"), 400, "bad_json")
        assert_error(request(node, "POST", path, body=""), 400, "bad_json")
        assert_error(request(node, "POST", path, body="x" * 70000), 413, "payload_too_large")


# ---- users -------------------------------------------------------------------


def test_users_authenticate_and_persist(broker, tmp_path):
    data = str(tmp_path / "data")
    node = broker(admin=True, api_key=API_KEY, data_dir=data, allow_anonymous="false")
    st, doc = post(node, "/api/v1/users", {"username": "ann", "password": "pw-ann-1"})
    assert st == 201
    created = doc.pop("created_at")
    assert doc == {"username": "ann"} and isinstance(created, int)
    assert get_json(node, "/api/v1/users") == {
        "data": [{"username": "ann", "created_at": created}],
        "meta": {"page": 1, "limit": 100, "count": 1, "hasnext": False}}
    assert get_json(node, "/api/v1/users/ann") == {"username": "ann", "created_at": created}
    assert connack(node, uid(), username="ann", password=b"pw-ann-1") == 0
    assert connack(node, uid(), username="ann", password=b"wrong") == 0x86
    assert connack(node, uid(), version=4, username="ann", password=b"wrong") == 4
    assert connack(node, uid(), username="ann") == 0x86
    assert connack(node, uid()) == 0x87  # no anonymous clients
    assert_error(request(node, "POST", "/api/v1/users",
                         body={"username": "ann", "password": "x"}), 409, "already_exists")
    st, _ = post(node, "/api/v1/users/ann", {"password": "pw-ann-2"}, method="PUT")
    assert st == 200
    assert connack(node, uid(), username="ann", password=b"pw-ann-1") == 0x86
    assert connack(node, uid(), username="ann", password=b"pw-ann-2") == 0
    assert_error(request(node, "PUT", "/api/v1/users/bob", body={"password": "x"}), 404,
                 "not_found")
    assert_error(request(node, "PUT", "/api/v1/users/ann", body={"password": 5}), 400,
                 "bad_request")
    assert_error(request(node, "POST", "/api/v1/users", body={"username": "x"}), 400,
                 "bad_request")
    # the hash is stored, never the password
    with open(os.path.join(data, "tables.json")) as f:
        text = f.read()
    assert "pw-ann-2" not in text and "$7$" in text
    # the table survives a restart
    node.stop()
    node = broker(admin=True, api_key=API_KEY, data_dir=data, allow_anonymous="false")
    assert connack(node, uid(), username="ann", password=b"pw-ann-2") == 0
    st, _, body = request(node, "DELETE", "/api/v1/users/ann")
    assert st == 200 and json.loads(body) == {"username": "ann", "result": "deleted"}
    assert connack(node, uid(), username="ann", password=b"pw-ann-2") == 0x87
    assert_error(request(node, "DELETE", "/api/v1/users/ann"), 404, "not_found")


# ---- API keys ----------------------------------------------------------------


def test_apikeys(node):
    st, doc = post(node, "/api/v1/apikeys", {"description": "ci robot"})
    assert st == 201
    key, secret = doc["key"], doc["secret"]
    assert key.startswith("key-") and len(secret) == 32
    assert set(doc) == {"key", "secret", "created_at", "description"}
    mine = f"{key}:{secret}"
    assert get_json(node, "/api/v1/apikeys", auth=mine) == {
        "data": [{"key": key, "created_at": doc["created_at"], "description": "ci robot"}],
        "meta": {"page": 1, "limit": 100, "count": 1, "hasnext": False}}
    assert_error(request(node, "GET", "/api/v1/stats", auth=f"{key}:wrong-secret"), 401,
                 "unauthorized")
    st, doc = post(node, "/api/v1/apikeys", {"key": "named.key"})
    assert st == 201 and doc["key"] == "named.key"
    assert_error(request(node, "POST", "/api/v1/apikeys", body={"key": "named.key"}), 409,
                 "already_exists")
    assert_error(request(node, "POST", "/api/v1/apikeys", body={"key": "bad key"}), 400,
                 "bad_request")
    st, _, _ = request(node, "DELETE", f"/api/v1/apikeys/{key}")
    assert st == 200
    assert_error(request(node, "GET", "/api/v1/stats", auth=mine), 401, "unauthorized")
    assert_error(request(node, "DELETE", f"/api/v1/apikeys/{key}"), 404, "not_found")


# ---- starling ctl --------------------------------------------------------------


def test_ctl_operations(node):
    from test_admin import ctl
    c = raw(node, "ctl-1")
    c.subscribe([("c/#", mqttraw.sub_options(qos=1))])
    rc, out, err = ctl(node, "clients", "list")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["CLIENT", "ID", "NODE", "CONNECTED", "PROTO", "USERNAME", "SUBS",
                                "QUEUED", "INFLIGHT"]
    assert lines[1].split()[0] == "ctl-1" and lines[1].split()[2:] == ["yes", "5", "-", "1", "0",
                                                                       "0"]
    rc, out, err = ctl(node, "clients", "list", "--json", "--limit", "1")
    assert rc == 0 and json.loads(out)["meta"]["limit"] == 1
    rc, out, err = ctl(node, "publish", "c/1", "hello", "--qos", "1")
    assert rc == 0 and "delivered: 1" in out, out + err
    assert c.recv_publish().payload == b"hello"
    rc, out, err = ctl(node, "clients", "show", "nobody")
    assert rc == 1 and "no client 'nobody'" in err
    rc, out, err = ctl(node, "banned", "add", "clientid", "bad", "--reason", "x")
    assert rc == 0, err
    rc, out, err = ctl(node, "banned", "list")
    assert rc == 0 and "bad" in out
    rc, out, err = ctl(node, "users", "add", "u1", "pw-12345")
    assert rc == 0, err
    rc, out, err = ctl(node, "--json", "users", "list")
    assert rc == 0 and [u["username"] for u in json.loads(out)["data"]] == ["u1"]
    rc, out, err = ctl(node, "apikey", "create", "--key", "k1")
    assert rc == 0 and out.startswith("key: k1\nsecret: "), out
    rc, out, err = ctl(node, "clients", "kick", "ctl-1")
    assert rc == 0 and out == "kicked\n"
    c.expect_disconnect(0x98)
    # usage errors: exit 2
    assert ctl(node, "clients", "list", "--qos", "1")[0] == 2
    assert ctl(node, "clients", "show")[0] == 2
    assert ctl(node, "publish", "t", "p", "--qos", "7")[0] == 2
    assert ctl(node, "clients", "frobnicate")[0] == 2
