"""The dashboard's page logic (admin/dashboard/app.js) in headless Chromium
against a stand-in of the admin API that answers the shapes of docs/api.md
and issue 13 (clients, subscriptions, retained): the views render what the
API returns, Kick sends DELETE /api/v1/clients/{id} with the key and the
row goes, and an endpoint the node lacks shows "not available". The real
node serves the same files (test_admin.py) and is driven on a cluster in
tests/cluster/test_dashboard.py.
"""

import base64
import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "admin" / "dashboard"
NODE_MODULES = ROOT / "build" / "npm" / "node_modules"
DRIVER = ROOT / "tests" / "cluster" / "dashboard_driver.js"
CHROMIUM = shutil.which("chromium")
KEY, SECRET = "ui", "ui-secret-123"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make deps-test)"),
    pytest.mark.skipif(not (NODE_MODULES / "puppeteer-core").is_dir(),
                       reason="puppeteer-core is not installed: make npm-deps"),
]


class FakeApi:
    """What the stand-in holds and saw."""

    def __init__(self):
        self.lock = threading.Lock()
        self.clients = {
            "sensor-1": {"clientid": "sensor-1", "username": "dev", "node": "n1",
                         "connected": True, "ip_address": "10.0.0.1", "proto_ver": 5},
            "sensor-2": {"clientid": "sensor-2", "username": "dev", "node": "n2",
                         "connected": True, "ip_address": "10.0.0.2", "proto_ver": 4},
        }
        self.deletes = []  # (path, authorization, x-requested-with)
        self.received = 0


def make_handler(api):
    auth_ok = "Basic " + base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send(self, status, body=b"", ctype="application/json", csp=CSP):
            self.send_response(status)
            if body:
                self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", csp)
            self.end_headers()
            self.wfile.write(body)

        def json(self, status, doc):
            self.send(status, json.dumps(doc).encode())

        def do_GET(self):
            self.route("GET")

        def do_POST(self):
            self.route("POST")

        def do_DELETE(self):
            self.route("DELETE")

        def route(self, method):
            url = urlsplit(self.path)
            path = url.path
            if method == "GET" and (path == "/" or path.startswith("/dashboard/")):
                name = "index.html" if path == "/" else path[len("/dashboard/"):]
                f = DASHBOARD / name
                if "/" in name or not f.is_file():
                    return self.json(404, {"code": "not_found", "message": "no such file"})
                ctype = {"html": "text/html", "js": "text/javascript", "css": "text/css"}[
                    name.rsplit(".", 1)[1]]
                return self.send(200, f.read_bytes(), ctype + "; charset=utf-8")
            if self.headers.get("Authorization") != auth_ok:
                return self.json(401, {"code": "unauthorized",
                                       "message": "the API key or its secret is wrong"})
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            with api.lock:
                return self.answer(method, path, body)

        def answer(self, method, path, body):
            nodes = [{"name": f"n{i}", "address": f"10.0.0.{i}:4370", "role": "voter",
                      "reachable": True, "leader": i == 1} for i in (1, 2, 3)]
            if path == "/api/v1/cluster":
                return self.json(200, {"clustered": True, "self": "n2", "leader": "n1",
                                       "nodes": nodes})
            if path == "/api/v1/stats":
                api.received += 25
                per = [{"node": n["name"], "clients_connected": 1, "messages_received":
                        api.received, "messages_sent": 0, "uptime_seconds": 70,
                        "connections": 1} for n in nodes]
                return self.json(200, {"nodes": per, "total": {
                    "connections": 3, "clients_connected": len(api.clients),
                    "messages_received": 3 * api.received, "messages_sent": 0}})
            if path == "/api/v1/clients" and method == "GET":
                data = list(api.clients.values())
                return self.json(200, {"data": data, "meta": {"page": 1, "limit": 100,
                                                              "count": len(data)}})
            if path.startswith("/api/v1/clients/"):
                cid = unquote(path[len("/api/v1/clients/"):])
                if cid not in api.clients:
                    return self.json(404, {"code": "client_not_found", "message": "no such client"})
                if method == "DELETE":
                    api.deletes.append((path, self.headers.get("Authorization"),
                                        self.headers.get("X-Requested-With")))
                    del api.clients[cid]
                    return self.send(204)
                return self.json(200, dict(api.clients[cid], keepalive=60, inflight=0))
            if path == "/api/v1/subscriptions":
                return self.json(200, {"data": [{"clientid": "sensor-1", "topic": "t/#",
                                                 "qos": 1, "node": "n1"}],
                                       "meta": {"page": 1, "limit": 1000, "count": 1}})
            if path == "/api/v1/retained":
                return self.json(200, {"data": [{"topic": "a", "qos": 0, "payload": "x"},
                                                {"topic": "b", "qos": 1, "payload": "y"}],
                                       "meta": {"page": 1, "limit": 1000, "count": 2}})
            if path == "/api/v1/publish" and method == "POST":
                return self.json(200, {"topic": body["topic"], "qos": body["qos"],
                                       "retain": body["retain"], "delivered": 3})
            # /api/v1/banned and anything else: what the node says for a path it lacks
            return self.json(404, {"code": "not_found", "message": f"no such resource: {path}"})

    return Handler


@pytest.fixture
def fake_api():
    api = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(api))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    api.url = "http://127.0.0.1:%d/" % server.server_address[1]
    yield api
    server.shutdown()
    server.server_close()
    t.join(10)


def test_views_render_the_api_and_kick_deletes_the_client(fake_api, tmp_path):
    cfg = {"url": fake_api.url, "key": KEY, "secret": SECRET, "out": str(tmp_path),
           "kick": "sensor-2", "chromium": CHROMIUM, "timeout_ms": 20000}
    r = subprocess.run(["node", str(DRIVER), json.dumps(cfg)], capture_output=True, text=True,
                       timeout=180, env=dict(os.environ, NODE_PATH=str(NODE_MODULES)))
    assert r.returncode == 0, r.stderr[-4000:]
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["page_errors"] == [] and rep["csp_violations"] == [], rep
    assert [n["name"] for n in rep["nodes"]] == ["n1", "n2", "n3"]
    assert rep["summary"] == "clustered, 3 nodes, leader n1, answered by n2"
    assert rep["chart_last_in"] > 0  # 75 messages per poll over the three nodes

    # the clients of the API, then Kick: one DELETE with the key, the row gone
    assert rep["clients_available"] and sorted(rep["client_ids"]) == ["sensor-1", "sensor-2"]
    assert rep["kicked"] and rep["clients_status_after_kick"].startswith("kicked sensor-2")
    auth = "Basic " + base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
    assert fake_api.deletes == [("/api/v1/clients/sensor-2", auth, "XMLHttpRequest")]
    assert list(fake_api.clients) == ["sensor-1"]

    assert rep["subscriptions_status"] == "1 subscription"
    assert rep["retained_status"] == "2 retained messages"
    assert rep["banned_status"] == "not available on this node"
    assert rep["publish_status"] == \
        "published to dash/test (QoS 0), delivered to 3 sessions"
