"""The admin HTTP API (docs/api.md) and `starling ctl`, black-box against the
real binary: each test starts a node with its admin API on a free port."""

import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import SANITIZER_MARKERS, STARLING_BIN, clean_env, free_port
from helpers import paho, raw, uid
import promtext

pytestmark = pytest.mark.starling_only

KEY = "ops"
SECRET = "s3cret-Secret"
API_KEY = f"{KEY}:{SECRET}"
TIMEOUT = 10.0


def basic(key_secret):
    return "Basic " + base64.b64encode(key_secret.encode()).decode()


def request(b, method, path, body=None, auth=API_KEY, headers=None):
    """One request on a new connection: (status, headers dict (lower-case
    names), body bytes)."""
    conn = http.client.HTTPConnection(b.host, b.admin_port, timeout=TIMEOUT)
    try:
        h = dict(headers or {})
        if auth is not None:
            h["Authorization"] = basic(auth)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
            h.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def get_json(b, path, auth=API_KEY, status=200):
    st, h, data = request(b, "GET", path, auth=auth)
    assert st == status, (st, data)
    assert h["content-type"] == "application/json", h
    return json.loads(data)


def assert_error(resp, status, code, message_part=None):
    st, h, data = resp
    assert st == status, (st, data)
    assert h["content-type"] == "application/json", h
    doc = json.loads(data)
    assert set(doc) == {"code", "message"}, doc
    assert doc["code"] == code, doc
    assert isinstance(doc["message"], str) and doc["message"], doc
    if message_part is not None:
        assert message_part in doc["message"], doc
    return doc


@pytest.fixture
def node(broker):
    return broker(admin=True, api_key=API_KEY)


# ---- health, authentication ------------------------------------------------


def test_health_is_public_and_ok(node):
    doc = get_json(node, "/api/v1/health", auth=None)
    assert doc == {"status": "ok", "serving": True, "clustered": False}


def test_auth_required(node):
    for path in ("/api/v1/cluster", "/api/v1/stats", "/api/v1/nodes"):
        st, h, data = request(node, "GET", path, auth=None)
        assert_error((st, h, data), 401, "unauthorized", "API key is required")
        assert h["www-authenticate"].startswith('Basic realm="starling"'), h
        assert_error(request(node, "GET", path, auth=f"{KEY}:wrong-secret"), 401, "unauthorized",
                     "wrong")
        assert_error(request(node, "GET", path, auth=f"nobody:{SECRET}"), 401, "unauthorized")
        assert_error(request(node, "GET", path, auth=f"{KEY}:{SECRET}x"), 401, "unauthorized")
        st, _, _ = request(node, "GET", path)
        assert st == 200
    # not Basic, or not base64
    for value in ("Bearer abc", "Basic !!!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert_error(request(node, "GET", "/api/v1/stats", auth=None,
                             headers={"Authorization": value}), 401, "unauthorized")
    # refusals are logged with the key's name (printable characters only)
    assert_error(request(node, "GET", "/api/v1/stats", auth="evil\nFAKE LINE:xxxxxxxx"), 401,
                 "unauthorized")
    log = node.stderr_text()
    assert "INFO admin: GET /api/v1/stats: API key 'ops' refused" in log
    assert "API key 'evil?FAKE LINE' refused" in log
    assert SECRET not in log and "wrong-secret" not in log
    # a wrong key is refused before the body is read or parsed
    assert_error(request(node, "POST", "/api/v1/publish", body="{not json", auth="x:yyyyyyyy"),
                 401, "unauthorized")


def test_without_api_key_only_public_endpoints(broker):
    b = broker(admin=True)
    assert get_json(b, "/api/v1/health", auth=None)["status"] == "ok"
    st, _, text = request(b, "GET", "/metrics", auth=None)
    assert st == 200 and b"starling_up 1" in text
    for auth in (None, API_KEY):
        assert_error(request(b, "GET", "/api/v1/cluster", auth=auth), 401, "unauthorized")


def test_metrics_auth(broker):
    b = broker(admin=True, api_key=API_KEY, metrics_auth=True)
    assert_error(request(b, "GET", "/metrics", auth=None), 401, "unauthorized")
    assert_error(request(b, "GET", "/metrics", auth=f"{KEY}:nope-nope"), 401, "unauthorized")
    st, _, _ = request(b, "GET", "/metrics")
    assert st == 200
    assert get_json(b, "/api/v1/health", auth=None)["status"] == "ok"


# ---- routing and request errors -------------------------------------------


def test_unknown_path_404(node):
    for path in ("/api/v1", "/api/v1/healthz", "/api/v1/health/", "/api/v2/health",
                 "/api/v1/cluster/nodes"):
        assert_error(request(node, "GET", path), 404, "not_found")
    # unknown paths are 404 without a key too (nothing to protect)
    assert_error(request(node, "GET", "/nope", auth=None), 404, "not_found")


def test_dashboard_files_need_no_key_and_carry_security_headers(node):
    """The dashboard (admin/dashboard, embedded at build time) at / and
    /dashboard/NAME, without an API key, with its security headers."""
    pages = {"/": ("text/html; charset=utf-8", b"<!DOCTYPE html>"),
             "/index.html": ("text/html; charset=utf-8", b"<!DOCTYPE html>"),
             "/dashboard/index.html": ("text/html; charset=utf-8", b"<!DOCTYPE html>"),
             "/dashboard/app.js": ("text/javascript; charset=utf-8", b"'use strict';"),
             "/dashboard/style.css": ("text/css; charset=utf-8", b":root")}
    for path, (ctype, part) in pages.items():
        st, h, data = request(node, "GET", path, auth=None)
        assert st == 200 and h["content-type"] == ctype, (path, st, h)
        assert part in data, path
        csp = h["content-security-policy"]
        # no inline script, nothing from elsewhere, no framing
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, csp
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, csp
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
    # the page's own files are what it loads, and it has no inline script
    st, _, html = request(node, "GET", "/", auth=None)
    assert b'<script src="/dashboard/app.js"' in html and b"<script>" not in html
    assert b'href="/dashboard/style.css"' in html
    st, h, _ = request(node, "HEAD", "/dashboard/app.js", auth=None)
    assert st == 200 and h["content-type"].startswith("text/javascript"), (st, h)
    st, h, data = request(node, "POST", "/", auth=None)
    assert_error((st, h, data), 405, "method_not_allowed")
    assert h["allow"] == "GET, HEAD"
    for path in ("/dashboard/", "/dashboard/nope.js", "/dashboard/../index.html", "/index.htm"):
        assert_error(request(node, "GET", path, auth=None), 404, "not_found")
    # API answers carry the restrictive policy of a JSON document
    st, h, _ = request(node, "GET", "/api/v1/health", auth=None)
    assert h["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_dashboard_requests_get_no_basic_challenge(node):
    """A 401 asks for Basic credentials (WWW-Authenticate), except to a
    script that says X-Requested-With: XMLHttpRequest (the dashboard), for
    which the browser would open its own log-in dialog."""
    st, h, _ = request(node, "GET", "/api/v1/cluster", auth=None)
    assert st == 401 and h["www-authenticate"].startswith("Basic realm="), h
    st, h, data = request(node, "GET", "/api/v1/cluster", auth="test:wrong-secret",
                          headers={"X-Requested-With": "XMLHttpRequest"})
    assert_error((st, h, data), 401, "unauthorized")
    assert "www-authenticate" not in h, h


def test_wrong_method_405(node):
    st, h, data = request(node, "POST", "/api/v1/health", auth=None)
    assert_error((st, h, data), 405, "method_not_allowed")
    assert h["allow"] == "GET"
    st, h, data = request(node, "GET", "/api/v1/publish")
    assert_error((st, h, data), 405, "method_not_allowed")
    assert h["allow"] == "POST"
    st, h, data = request(node, "PUT", "/api/v1/cluster/nodes/x")
    assert_error((st, h, data), 405, "method_not_allowed")
    assert h["allow"] == "DELETE"


def test_bad_requests_400(node):
    def pub(body, **kw):
        return request(node, "POST", "/api/v1/publish", body=body, **kw)

    assert_error(pub("{\"topic\": \"a\","), 400, "bad_json", "invalid JSON at line 1")
    assert_error(pub("nul"), 400, "bad_json")
    assert_error(pub("[1, 2]"), 400, "bad_json", "must be a JSON object")
    assert_error(pub("\"topic\""), 400, "bad_json")
    assert_error(pub(b"", headers={"Content-Type": "application/json"}), 400, "bad_json")
    assert_error(pub("{\"topic\": \"a\", \"topic\": \"b\"}"), 400, "bad_json", "duplicate")
    assert_error(pub(b"{\"topic\": \"\xff\"}", headers={"Content-Type": "application/json"}),
                 400, "bad_json")
    assert_error(pub({"topic": "a", "payloads": "x"}), 400, "bad_request",
                 "unknown field 'payloads'")
    assert_error(pub({"payload": "x"}), 400, "bad_request", "'topic'")
    assert_error(pub({"topic": ""}), 400, "bad_request", "'topic'")
    assert_error(pub({"topic": 5}), 400, "bad_request", "'topic'")
    assert_error(pub({"topic": "a\u0000b"}), 400, "bad_json", "\\u0000")
    assert_error(pub({"topic": "a/+"}), 400, "bad_request", "not a valid topic name")
    assert_error(pub({"topic": "a/#"}), 400, "bad_request", "not a valid topic name")
    assert_error(pub({"topic": "a", "qos": 3}), 400, "bad_request", "'qos'")
    assert_error(pub({"topic": "a", "qos": "1"}), 400, "bad_request", "'qos'")
    assert_error(pub({"topic": "a", "qos": 1.0}), 400, "bad_request", "'qos'")
    assert_error(pub({"topic": "a", "retain": "yes"}), 400, "bad_request", "'retain'")
    assert_error(pub({"topic": "a", "payload": 1}), 400, "bad_request", "'payload'")
    assert_error(pub({"topic": "a", "encoding": "hex"}), 400, "bad_request", "'encoding'")
    assert_error(pub({"topic": "a", "payload": "!!", "encoding": "base64"}), 400, "bad_request",
                 "base64")
    # a body the endpoint does not take, a body that is not JSON
    assert_error(request(node, "GET", "/api/v1/stats", body="{}"), 400, "bad_request",
                 "takes no request body")
    assert_error(pub("topic=a", headers={"Content-Type": "application/x-www-form-urlencoded"}),
                 415, "unsupported_media_type")
    # query strings: unknown parameters, bad encodings, bad paging values
    assert_error(request(node, "GET", "/api/v1/stats?verbose=1"), 400, "bad_request",
                 "unknown query parameter 'verbose'")
    assert_error(request(node, "GET", "/api/v1/nodes?page=%zz"), 400, "bad_request")
    assert_error(request(node, "DELETE", "/api/v1/cluster/nodes/a%00b"), 400, "bad_request")
    for q, part in (("page=0", "page must be"), ("page=-1", "page must be"),
                    ("page=abc", "page must be"), ("page=", "page must be"),
                    ("page=1.5", "page must be"), ("page=99999999999", "page must be"),
                    ("limit=0", "limit must be"), ("limit=1001", "limit must be"),
                    ("limit=10&page=x", "page must be")):
        assert_error(request(node, "GET", f"/api/v1/nodes?{q}"), 400, "bad_paging", part)
    # the node still answers
    assert get_json(node, "/api/v1/health", auth=None)["status"] == "ok"


def _read_response(sock):
    """Read one HTTP response from a raw socket until the server closes it or
    the announced body is complete: (status, body bytes)."""
    sock.settimeout(TIMEOUT)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert m, head
    want = int(m.group(1))
    while len(body) < want:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    status = int(head.split(b" ", 2)[1])
    return status, body


def test_oversized_body_413(node):
    auth = basic(API_KEY)
    # announced too large: answered at once, without reading the body
    with socket.create_connection((node.host, node.admin_port), timeout=TIMEOUT) as s:
        s.sendall(f"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n".encode())
        status, body = _read_response(s)
    assert status == 413
    assert json.loads(body)["code"] == "payload_too_large"
    # just over the limit (65536 bytes), with a Content-Length
    big = json.dumps({"topic": "t", "payload": "x" * 65536})
    assert_error(request(node, "POST", "/api/v1/publish", body=big), 413, "payload_too_large",
                 "65536")
    # chunked, no length announced: read and thrown away past the limit,
    # answered 413 at its end
    def chunked(s, chunks):
        s.sendall(f"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                  "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"%x\r\n%s\r\n" % (16384, b" " * 16384)
        for _ in range(chunks):
            s.sendall(chunk)

    with socket.create_connection((node.host, node.admin_port), timeout=TIMEOUT) as s:
        chunked(s, 8)  # 128 KiB
        s.sendall(b"0\r\n\r\n")
        status, body = _read_response(s)
    assert status == 413
    assert json.loads(body)["code"] == "payload_too_large"
    # one that does not end is cut off after 1 MiB more
    with socket.create_connection((node.host, node.admin_port), timeout=TIMEOUT) as s:
        with pytest.raises(OSError):
            chunked(s, 4096)  # 64 MiB
            assert s.recv(1) == b""
    # a body of exactly the limit is read (and here refused as JSON, not as too large)
    exact = b"{" + b" " * (65536 - 2) + b"}"
    st, _, data = request(node, "POST", "/api/v1/publish", body=exact,
                          headers={"Content-Type": "application/json"})
    assert st == 400 and b"'topic'" in data, (st, data)
    assert get_json(node, "/api/v1/health", auth=None)["status"] == "ok"


# ---- cluster, nodes, stats --------------------------------------------------


def test_cluster_single_node(node):
    doc = get_json(node, "/api/v1/cluster")
    assert doc["clustered"] is False
    assert doc["leader"] is None
    assert len(doc["nodes"]) == 1
    n = doc["nodes"][0]
    assert n == {"name": doc["self"], "address": f"127.0.0.1:{node.port}", "role": "standalone",
                 "reachable": True, "leader": False}
    assert n["name"] == socket.gethostname()


def test_nodes_paging(node):
    doc = get_json(node, "/api/v1/nodes")
    assert doc["meta"] == {"page": 1, "limit": 100, "count": 1}
    assert [n["role"] for n in doc["data"]] == ["standalone"]
    doc = get_json(node, "/api/v1/nodes?page=2&limit=1")
    assert doc == {"data": [], "meta": {"page": 2, "limit": 1, "count": 1}}


def _stats(b):
    doc = get_json(b, "/api/v1/stats")
    assert len(doc["nodes"]) == 1
    return doc["nodes"][0], doc["total"]


def wait_until(fn, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_stats_move(node):
    s, total = _stats(node)
    assert s["node"] == socket.gethostname() and re.match(r"^\d+\.\d+\.\d+$", s["version"])
    assert s["connections"] == 0 and s["clients_connected"] == 0 and s["sessions"] == 0
    for k in ("messages_received", "messages_sent", "bytes_received", "bytes_sent",
              "subscriptions", "messages_dropped"):
        assert s[k] == 0, (k, s)
    assert {k: v for k, v in s.items() if k not in ("node", "version")} == total

    sub = paho(node, uid("sub"))
    pub = paho(node, uid("pub"))
    sub.subscribe("st/#", qos=1)
    for i in range(5):
        pub.publish(f"st/{i}", b"hello", qos=1)
    for _ in range(5):
        sub.get()
    s, total = _stats(node)
    assert s["messages_received"] == 5 and s["messages_sent"] == 5, s
    assert s["connections"] == 2 and s["clients_connected"] == 2 and s["sessions"] == 2, s
    assert s["clients_maximum"] == 2 and s["subscriptions"] == 1, s
    assert s["bytes_received"] > 5 * len(b"hello") and s["bytes_sent"] > 5 * len(b"hello"), s
    sub.disconnect()
    pub.disconnect()
    wait_until(lambda: _stats(node)[0]["clients_connected"] == 0, "the clients to go")


# ---- publish ---------------------------------------------------------------


def test_publish_reaches_subscribers(node):
    sub = paho(node, uid("sub"))
    sub.subscribe("adm/#", qos=1)
    st, _, data = request(node, "POST", "/api/v1/publish",
                          body={"topic": "adm/one", "payload": "héllo", "qos": 1})
    assert st == 200, data
    assert json.loads(data) == {"topic": "adm/one", "qos": 1, "retain": False, "delivered": 1}
    m = sub.get()
    assert (m.topic, m.payload, m.qos) == ("adm/one", "héllo".encode(), 1)
    raw = bytes(range(256))
    st, _, data = request(node, "POST", "/api/v1/publish",
                          body={"topic": "adm/bin", "payload": base64.b64encode(raw).decode(),
                                "encoding": "base64", "retain": True})
    assert st == 200, data
    m = sub.get()
    assert (m.topic, m.payload, m.qos) == ("adm/bin", raw, 0)
    # retained: a later subscriber gets it
    late = paho(node, uid("late"))
    late.subscribe("adm/bin", qos=0)
    m = late.get()
    assert (m.topic, m.payload, m.retain) == ("adm/bin", raw, True)
    st, _, data = request(node, "POST", "/api/v1/publish", body={"topic": "nobody/here"})
    assert st == 200 and json.loads(data)["delivered"] == 0
    sub.disconnect()
    late.disconnect()


# ---- cluster membership on a single node ------------------------------------


def test_membership_not_clustered(node):
    assert_error(request(node, "POST", "/api/v1/cluster/leave"), 409, "not_clustered")
    assert_error(request(node, "DELETE", "/api/v1/cluster/nodes/other"), 409, "not_clustered")
    assert_error(request(node, "DELETE", "/api/v1/cluster/nodes/other", auth=None), 401,
                 "unauthorized")


# ---- /metrics in the Prometheus text format ---------------------------------
# The strict reader of the text format is promtext.py (shared with
# tests/cluster/test_admin_api.py).

# A single node with persistence (the default): no Raft or forwarding family.
SINGLE_NODE_FAMILIES = {
    "starling_info": "gauge", "starling_up": "gauge", "starling_uptime_seconds": "gauge",
    "starling_connections": "gauge", "starling_clients_connected": "gauge",
    "starling_clients_maximum": "gauge", "starling_sessions": "gauge",
    "starling_subscriptions": "gauge", "starling_retained_messages": "gauge",
    "starling_messages_received_total": "counter", "starling_messages_sent_total": "counter",
    "starling_message_bytes_received_total": "counter",
    "starling_message_bytes_sent_total": "counter",
    "starling_messages_dropped_total": "counter",
    "starling_messages_inflight": "gauge", "starling_messages_queued": "gauge",
    "starling_delivery_latency_seconds": "histogram",
    "starling_store_commits_total": "counter", "starling_store_commit_failures_total": "counter",
    "starling_store_fsyncs_total": "counter",
    "starling_store_commit_duration_seconds": "histogram",
    "starling_store_sync_duration_seconds": "histogram",
    "starling_bytes_received_total": "counter", "starling_bytes_sent_total": "counter",
    "starling_admin_requests_total": "counter",
}
DROP_REASONS = {
    "queue_full_offline", "queue_full_new", "queue_full_oldest", "queue_full_disconnect",
    "expired", "too_large", "no_memory", "acl_denied", "peer_queue_full", "peer_unavailable",
    "outbox_full", "session_moved", "node_forgotten", "no_subscribers",
}
BY_QOS = ("starling_messages_received_total", "starling_messages_sent_total",
          "starling_message_bytes_received_total", "starling_message_bytes_sent_total")


def parse_metrics(text):
    return promtext.parse(text)


def metrics_typed(b, auth=None):
    st, h, data = request(b, "GET", "/metrics", auth=auth)
    assert st == 200, data
    assert h["content-type"].startswith("text/plain; version=0.0.4"), h
    return promtext.check(data.decode("utf-8"))


def metrics(b, auth=None):
    return metrics_typed(b, auth)[0]


def one(m, name):
    assert list(m[name]) == [()], m[name]
    return m[name][()]


def qos(m, name, q):
    return m[name][(("qos", str(q)),)]


def dropped(m, reason):
    return m["starling_messages_dropped_total"][(("reason", reason),)]


def hist(m, name):
    (labels, h), = m[name].items()
    assert labels == ()
    return h


def test_metrics_text_format_and_values(node):
    m, types = metrics_typed(node)
    assert types == SINGLE_NODE_FAMILIES, set(types.items()) ^ set(SINGLE_NODE_FAMILIES.items())
    for name in BY_QOS:
        assert set(m[name]) == {(("qos", q),) for q in "012"}, m[name]
    assert {dict(k)["reason"] for k in m["starling_messages_dropped_total"]} == DROP_REASONS
    (info_labels, info_value), = m["starling_info"].items()
    assert info_value == 1 and dict(info_labels)["node"] == socket.gethostname()
    assert one(m, "starling_up") == 1
    assert one(m, "starling_connections") == 0
    lat = hist(m, "starling_delivery_latency_seconds")
    assert lat.count == 0 and [le for le, _ in lat.buckets][:2] == [0.000025, 0.00005]
    before = m

    sub = paho(node, uid("sub"))
    pub = paho(node, uid("pub"))
    sub.subscribe("m/#", qos=1)
    for i in range(3):
        pub.publish(f"m/{i}", b"x" * 100, qos=1)
    pub.publish("m/keep", b"kept", qos=1, retain=True)
    for _ in range(4):
        sub.get()

    def moved():
        m = metrics(node)
        return m if qos(m, "starling_messages_sent_total", 1) == 4 and \
            one(m, "starling_bytes_sent_total") >= one(before, "starling_bytes_sent_total") + 400 \
            else None
    m = wait_until(moved, "the counters to move")
    assert [qos(m, "starling_messages_received_total", q) for q in range(3)] == [0, 4, 0]
    assert [qos(m, "starling_messages_sent_total", q) for q in range(3)] == [0, 4, 0]
    assert qos(m, "starling_message_bytes_received_total", 1) == 3 * (3 + 100) + 6 + 4
    assert qos(m, "starling_message_bytes_sent_total", 1) == 3 * (3 + 100) + 6 + 4
    assert one(m, "starling_bytes_received_total") >= 400
    assert one(m, "starling_connections") == 2
    assert one(m, "starling_clients_connected") == 2
    assert one(m, "starling_sessions") == 2
    assert one(m, "starling_subscriptions") == 1
    assert one(m, "starling_retained_messages") == one(before, "starling_retained_messages") + 1
    # the retained message is stored: at least one commit, timed
    assert one(m, "starling_store_commits_total") >= 1
    commit = hist(m, "starling_store_commit_duration_seconds")
    assert commit.count >= 1 and commit.sum > 0
    assert m["starling_admin_requests_total"][(("status", "2xx"),)] >= 1
    sub.disconnect()
    pub.disconnect()


def test_metrics_qos_counts_and_delivery_latency(node):
    """N QoS 1 publishes from one client: the QoS 1 counters grow by N, and
    the latency histogram by the sampled ones (the 1st and the 17th of a
    worker's publishes: 2 of 32)."""
    n = 32
    sub = paho(node, uid("sub"))
    sub.subscribe("lat/#", qos=1)
    pub = paho(node, uid("pub"))
    before = metrics(node)
    for i in range(n):
        pub.publish("lat/t", b"0123456789", qos=1)
    for _ in range(n):
        assert sub.get().payload == b"0123456789"

    def moved():
        m = metrics(node)
        return m if qos(m, "starling_messages_sent_total", 1) == n else None
    m = wait_until(moved, "the QoS 1 counters to move")
    for name in ("starling_messages_received_total", "starling_messages_sent_total"):
        assert [qos(m, name, q) - qos(before, name, q) for q in range(3)] == [0, n, 0], name
    assert qos(m, "starling_message_bytes_received_total", 1) == n * (5 + 10)
    assert qos(m, "starling_message_bytes_sent_total", 1) == n * (5 + 10)
    lat = hist(m, "starling_delivery_latency_seconds")
    assert lat.count == 2, lat
    assert 0 < lat.sum < 2 * TIMEOUT
    # every observation is in a finite bucket (under 10 s)
    assert lat.buckets[-2][1] == 2
    sub.disconnect()
    pub.disconnect()


def test_metrics_drops_queues_inflight(broker):
    """A queue-full drop is counted under its reason, the queued and inflight
    gauges count the sessions' messages, a publish nobody subscribed to is
    counted as no_subscribers."""
    node = broker(admin=True, api_key=API_KEY, max_queued_messages=5)
    # an offline persistent session with room for 5 messages
    off = paho(node, uid("off"), version=4, clean=False)
    off.subscribe("q/#", qos=1)
    off.disconnect()
    # a subscriber that never acknowledges
    slow = raw(node, uid("slow"))
    slow.subscribe(("i/#", 1))
    pub = paho(node, uid("pub"))
    for _ in range(8):
        pub.publish("q/x", b"queued", qos=1)
    for _ in range(3):
        pub.publish("i/x", b"inflight", qos=1)
    for _ in range(3):
        p = slow.recv_publish(ack=False)
        assert p.topic == "i/x"
    pub.publish("nobody/here", b"", qos=1)
    # [MQTT-5.0 3.1.2-25] larger than the client's Maximum Packet Size: not
    # sent; the small message after it is
    small = raw(node, uid("small"), properties={"maximum_packet_size": 64})
    small.subscribe(("big/#", 0))
    pub.publish("big/x", b"x" * 200, qos=1)
    pub.publish("big/y", b"small", qos=1)
    assert small.recv_publish().topic == "big/y"

    def settled():
        m = metrics(node)
        return m if one(m, "starling_messages_queued") == 5 and \
            one(m, "starling_messages_inflight") == 3 else None
    m = wait_until(settled, "5 queued and 3 inflight messages")
    assert dropped(m, "queue_full_offline") == 3
    assert dropped(m, "no_subscribers") == 1
    assert dropped(m, "too_large") == 1
    for reason in DROP_REASONS - {"queue_full_offline", "no_subscribers", "too_large"}:
        assert dropped(m, reason) == 0, reason
    # the persistent session's messages were stored
    assert one(m, "starling_store_commits_total") >= 1
    slow.disconnect()
    small.disconnect()
    pub.disconnect()


def test_metrics_without_persistence(broker):
    """persistence false: the store's families are left out, the others stay."""
    node = broker(admin=True, api_key=API_KEY, persistence=False)
    m, types = metrics_typed(node)
    store = {f for f in SINGLE_NODE_FAMILIES if f.startswith("starling_store_")}
    assert len(store) == 5
    assert types == {f: t for f, t in SINGLE_NODE_FAMILIES.items() if f not in store}


def test_metrics_checker_rejects_bad_text():
    """The checker must fail on what the format forbids."""
    good = "# HELP starling_x_total X.\n# TYPE starling_x_total counter\nstarling_x_total 1\n"
    parse_metrics(good)
    hist_good = ("# HELP starling_h_seconds H.\n# TYPE starling_h_seconds histogram\n"
                 "starling_h_seconds_bucket{le=\"0.5\"} 1\n"
                 "starling_h_seconds_bucket{le=\"+Inf\"} 2\n"
                 "starling_h_seconds_sum 1.25\nstarling_h_seconds_count 2\n")
    promtext.check(hist_good)
    bad = [
        good[:-1],                                             # no final line feed
        good.replace("counter", "countr"),                     # unknown type
        good + "starling_x_total 2\n",                         # duplicate sample
        good.replace("starling_x_total 1", "starling_x_total one"),
        good.replace("starling_x_total 1", "starling_x_total{a=\"b} 1"),
        good.replace("starling_x_total 1", "starling_x_total{a=b} 1"),
        good.replace("starling_x_total 1", "starling_x_total{1a=\"b\"} 1"),
        good.replace("starling_x_total 1", "starling_x_total{a=\"\\q\"} 1"),
        good + "# TYPE starling_x_total counter\n",           # TYPE after samples
        good + "starling_y 1\n",                               # sample outside its family
        good.replace("starling_x_total 1", "starling-x 1"),
        good + "\n",                                           # empty line
        hist_good.replace("+Inf\"} 2", "+Inf\"} 3"),            # +Inf bucket != count
        hist_good.replace("} 1\n", "} 3\n"),                   # buckets not cumulative
        hist_good.replace("le=\"+Inf\"", "le=\"9\""),           # no +Inf bucket
        hist_good.replace("le=\"0.5\"", "le=\"+Inf\""),         # le not ascending
        hist_good.replace("starling_h_seconds_sum 1.25\n", ""),  # no _sum
        hist_good.replace("_bucket{le=\"0.5\"}", "_bucket"),     # a bucket without le
        hist_good.replace("starling_h_seconds_count", "starling_h_total"),
    ]
    for text in bad:
        with pytest.raises((AssertionError, ValueError, IndexError)):
            promtext.check(text)
    # and Starling's naming promises
    for text in (good.replace("_total", "_sum"),                # a counter without _total
                 hist_good.replace("_seconds", "_ms")):         # a histogram not in seconds
        with pytest.raises(AssertionError):
            promtext.check(text)


# ---- the server's limits and life cycle --------------------------------------


def test_health_503_while_shutting_down(broker):
    """Between SIGTERM and exit (here: a client that does not read holds the
    shutdown for its grace period), health is 503 and starling_up 0. The
    publisher must not be paused for that client (flow control would hold
    its PUBACK): drop_new keeps the client's queue full instead."""
    node = broker(admin=True, api_key=API_KEY, slow_subscriber_policy="drop_new")
    slow = raw(node, uid("slow"))
    slow.subscribe(("slow/#", 0))
    pub = paho(node, uid("pub"))
    chunk = b"x" * 65536
    for _ in range(320):  # 20 MiB: more than the loopback socket buffers hold
        pub.publish("slow/t", chunk, qos=0)
    pub.publish("other", b"", qos=1)  # acknowledged: the broker has read all before it
    node.send_signal(signal.SIGTERM)

    def unavailable():
        st, _, data = request(node, "GET", "/api/v1/health", auth=None)
        return (st, json.loads(data)) if st == 503 else None
    st, doc = wait_until(unavailable, "health to turn 503", timeout=5)
    assert doc == {"status": "unavailable", "serving": False, "clustered": False,
                   "reason": "the node is shutting down"}
    assert one(metrics(node), "starling_up") == 0
    rc, out, err = ctl(node, "health", api_key=None)
    assert rc == 1 and out == ""
    assert err == "starling ctl: the node is shutting down (HTTP 503 unavailable)\n"
    assert node.stop(sig=None) == 0
    slow.abort()
    pub.stop()


def test_sigterm_with_open_admin_connections(node):
    """A node with idle and half-sent admin requests stops cleanly at once."""
    socks = []
    for i in range(5):
        s = socket.create_connection((node.host, node.admin_port), timeout=TIMEOUT)
        if i % 2:
            s.sendall(b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
        socks.append(s)
    try:
        t0 = time.monotonic()
        assert node.stop(signal.SIGTERM) == 0
        assert time.monotonic() - t0 < 5
    finally:
        for s in socks:
            s.close()


def test_connection_limit(node):
    """64 connections at once: a 65th is served only once one of them closes."""
    held = [socket.create_connection((node.host, node.admin_port), timeout=TIMEOUT)
            for _ in range(64)]
    extra = socket.create_connection((node.host, node.admin_port), timeout=TIMEOUT)
    try:
        extra.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        extra.settimeout(1.0)
        with pytest.raises(socket.timeout):
            extra.recv(1)
        for s in held:
            s.close()
        held = []
        status, body = _read_response(extra)
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        for s in held:
            s.close()
        extra.close()


def test_admin_port_in_use_refuses_to_start(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        conf = tmp_path / "n.conf"
        conf.write_text(f"bind_address 127.0.0.1\nport {free_port()}\ndata_dir {tmp_path}/d\n")
        r = subprocess.run([STARLING_BIN, "-c", str(conf)], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=20, cwd=str(tmp_path),
                           env=clean_env({"STARLING_ADMIN_PORT": str(port)}))
    finally:
        holder.close()
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert f"admin API: cannot listen on 127.0.0.1:{port}: Address already in use" in err, err
    assert not [m for m in SANITIZER_MARKERS if m in err], err


# ---- starling ctl ------------------------------------------------------------


def ctl(b, *args, api_key=API_KEY, port=None, env=None):
    """Run `starling ctl` against b's admin port (port=False: no --host and
    --port, the node's configuration says where)."""
    argv = [STARLING_BIN, "ctl"]
    if port is not False:
        argv += ["--host", "127.0.0.1", "--port", str(port if port is not None else b.admin_port)]
    if api_key is not None:
        argv += ["--api-key", api_key]
    with tempfile.TemporaryDirectory(prefix="starling-ctl-") as cwd:
        r = subprocess.run(argv + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=30, cwd=cwd, env=clean_env(env))
    out, err = r.stdout.decode(), r.stderr.decode()
    assert not [m for m in SANITIZER_MARKERS if m in out + err], err
    return r.returncode, out, err


def test_ctl_health_and_cluster_status(node):
    rc, out, err = ctl(node, "health", api_key=None)
    assert (rc, out) == (0, "ok\n"), err
    rc, out, err = ctl(node, "cluster", "status")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "cluster: standalone, 1 node, leader -"
    assert lines[1].split() == ["NAME", "ADDRESS", "ROLE", "REACHABLE", "LEADER"]
    assert lines[2].split() == [socket.gethostname(), f"127.0.0.1:{node.port}", "standalone",
                                "yes", "no"]
    assert len(lines) == 3
    rc, out, err = ctl(node, "--json", "cluster", "status")
    assert rc == 0, err
    assert json.loads(out) == get_json(node, "/api/v1/cluster")


def test_ctl_stats(node):
    sub = paho(node, uid("sub"))
    sub.subscribe("c/#")
    rc, out, err = ctl(node, "stats")
    assert rc == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert rows["COUNTER"] == [socket.gethostname()]
    assert rows["connections"] == ["1"] and rows["subscriptions"] == ["1"]
    assert set(rows) >= {"messages_received", "messages_sent", "bytes_received", "bytes_sent",
                         "messages_dropped", "sessions", "retained", "uptime_seconds"}
    rc, out, err = ctl(node, "stats", "--json")
    assert rc == 0, err
    assert json.loads(out)["nodes"][0]["clients_connected"] == 1
    sub.disconnect()


def test_ctl_api_key_from_environment(node):
    rc, out, err = ctl(node, "stats", api_key=None, env={"STARLING_API_KEY": API_KEY})
    assert rc == 0, err


def test_ctl_reads_the_node_configuration(node, tmp_path):
    """Without --port and --api-key, ctl takes admin_port, admin_bind or
    bind_address and api_key from -c FILE and STARLING_* like the node."""
    conf = tmp_path / "node.conf"
    conf.write_text(f"bind_address 0.0.0.0\nadmin_port {node.admin_port}\napi_key {API_KEY}\n")
    env = {"STARLING_ADMIN_PORT": str(node.admin_port)}
    rc, out, err = ctl(node, "-c", str(conf), "stats", api_key=None, port=False, env=env)
    assert rc == 0, err
    assert out.startswith("COUNTER")
    rc, out, err = ctl(node, "stats", api_key=None, port=False,
                       env={**env, "STARLING_API_KEY": API_KEY, "STARLING_ADMIN_BIND": "127.0.0.1"})
    assert rc == 0, err
    # the option wins over the file
    rc, out, err = ctl(node, "-c", str(conf), "--api-key", f"{KEY}:not-the-secret", "stats",
                       api_key=None, port=False, env=env)
    assert rc == 1 and "wrong" in err
    # no admin API in the configuration, a bad configuration: usage errors
    rc, out, err = ctl(node, "health", api_key=None, port=False)  # STARLING_ADMIN_PORT=0
    assert rc == 2 and "the admin API is off (admin_port 0)" in err
    bad = tmp_path / "bad.conf"
    bad.write_text("admin_port 70000\n")
    rc, out, err = ctl(node, "-c", str(bad), "health", api_key=None, port=False, env=env)
    assert rc == 2 and f"{bad}:1: bad value '70000' for key 'admin_port'" in err
    rc, out, err = ctl(node, "-c", str(tmp_path / "missing.conf"), "health", api_key=None)
    assert rc == 2 and "No such file or directory" in err


def test_ctl_api_errors_exit_1(node):
    rc, out, err = ctl(node, "stats", api_key=f"{KEY}:wrong-secret")
    assert rc == 1
    assert out == ""
    assert err == "starling ctl: the API key or its secret is wrong (HTTP 401 unauthorized)\n"
    rc, out, err = ctl(node, "cluster", "status", api_key=None)
    assert rc == 1 and "API key is required" in err
    rc, out, err = ctl(node, "cluster", "forget", "n/2")
    assert rc == 1
    assert err == "starling ctl: this node is not part of a cluster (HTTP 409 not_clustered)\n"
    rc, out, err = ctl(node, "cluster", "leave")
    assert rc == 1 and "not part of a cluster" in err
    rc, out, err = ctl(node, "--json", "cluster", "leave")
    assert rc == 1 and json.loads(out)["code"] == "not_clustered"


def test_ctl_cannot_connect_exit_3(broker):
    rc, out, err = ctl(None, "health", port=free_port())
    assert rc == 3
    assert err.startswith("starling ctl: cannot reach the admin API at http://127.0.0.1:"), err


def test_ctl_usage_exit_2(node):
    for args in ([], ["bogus"], ["cluster"], ["cluster", "forget"], ["cluster", "status", "x"],
                 ["cluster", "forget", "a", "b"], ["--port", "0", "health"],
                 ["--port", "x", "health"], ["--no-such-option", "health"],
                 ["--api-key", "nocolon", "health"], ["--timeout", "0", "health"]):
        rc, out, err = ctl(node, *args)
        assert rc == 2, (args, out, err)
        assert err, args
    rc, out, err = ctl(node, "--help")
    assert rc == 0 and "cluster forget NODE" in out and "Exit codes" in out
