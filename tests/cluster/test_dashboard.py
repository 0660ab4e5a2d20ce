"""The web dashboard of the admin port (admin/dashboard) on a 3-node cluster,
in headless Chromium (Debian's chromium driven by puppeteer-core from
build/npm, `make npm-deps`): log in, see the three nodes, kick a client and
see it go; screenshots checked to be images with content.

STARLING_UPDATE_DOCS_SCREENSHOT=1 also copies the overview to
docs/dashboard.png (how the picture in docs/operations.md is made).
"""

import json
import os
import shutil
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import API_KEY, ROOT

CHROMIUM = shutil.which("chromium")
NODE_MODULES = Path(ROOT) / "build" / "npm" / "node_modules"
DRIVER = Path(__file__).parent / "dashboard_driver.js"

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make deps-test)"),
    pytest.mark.skipif(not (NODE_MODULES / "puppeteer-core").is_dir(),
                       reason="puppeteer-core is not installed: make npm-deps"),
]


# ---- PNG: decode (zlib) and measure ----------------------------------------

def png_pixels(path):
    """(width, height, channels, rows of bytes) of an 8-bit RGB/RGBA PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, color, _, _, interlace = ihdr
    assert depth == 8 and color in (2, 6) and interlace == 0, ihdr
    ch = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * ch
    rows, prev, off = [], bytearray(stride), 0
    for _ in range(height):
        ftype, line = raw[off], bytearray(raw[off + 1:off + 1 + stride])
        off += 1 + stride
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b = prev[i]
            c = prev[i - ch] if i >= ch else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, ch, rows


def assert_not_blank(path, min_colours=8, min_stddev=10.0):
    """The screenshot has content: many colours and a spread of brightness."""
    width, height, ch, rows = png_pixels(path)
    assert width >= 800 and height >= 600, (width, height)
    lum, colours = [], set()
    for y in range(0, height, 2):
        row = rows[y]
        for x in range(0, width * ch, ch * 2):
            r, g, b = row[x], row[x + 1], row[x + 2]
            colours.add((r, g, b))
            lum.append(0.299 * r + 0.587 * g + 0.114 * b)
    mean = sum(lum) / len(lum)
    stddev = (sum((v - mean) ** 2 for v in lum) / len(lum)) ** 0.5
    assert len(colours) >= min_colours and stddev >= min_stddev, \
        f"{path}: {len(colours)} colours, brightness stddev {stddev:.1f}: blank?"
    return len(colours), stddev


# ---- the test ------------------------------------------------------------------

class Publisher(threading.Thread):
    """Traffic for the charts: QoS 0 messages until stopped."""

    def __init__(self, host, port):
        super().__init__(daemon=True)
        self.stop_event = threading.Event()
        self.client = mqtt.Client(client_id="dash-traffic")
        self.client.connect(host, port, keepalive=30)
        self.client.subscribe("dash/#", qos=0)  # messages out, too
        self.client.loop_start()

    def run(self):
        while not self.stop_event.wait(0.02):
            self.client.publish("dash/traffic", b"x" * 32, qos=0)

    def stop(self):
        self.stop_event.set()
        self.join(10)
        self.client.loop_stop()
        self.client.disconnect()


UPDATE_DOCS = os.environ.get("STARLING_UPDATE_DOCS_SCREENSHOT") == "1"


def run_driver(url, out, kick=None):
    key, secret = API_KEY.split(":", 1)
    cfg = {"url": url, "key": key, "secret": secret, "out": str(out), "kick": kick,
           "chromium": CHROMIUM, "timeout_ms": 60000, "samples": 20 if UPDATE_DOCS else 3}
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    r = subprocess.run(["node", str(DRIVER), json.dumps(cfg)], env=env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, f"driver failed:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def watched_client(cluster):
    """A connected client (clean session) on node 2, and an Event set when
    the broker closes its connection."""
    gone = threading.Event()
    connected = threading.Event()
    # no automatic reconnection (paho's loop thread reconnects by default):
    # a client back before the page lists the clients again stays listed
    c = mqtt.Client(client_id="dash-kick-me", reconnect_on_failure=False)
    c.on_connect = lambda *a: connected.set()
    c.on_disconnect = lambda *a: gone.set()
    n2 = cluster.nodes[1]
    c.connect(n2.host, n2.port, keepalive=60)
    c.loop_start()
    assert connected.wait(10), "the client did not connect"
    yield c, gone
    c.loop_stop()
    c.disconnect()


def test_dashboard_overview_of_three_nodes(cluster, watched_client, tmp_path):
    n2 = cluster.nodes[1]
    traffic = Publisher(n2.host, n2.port)
    traffic.start()
    try:
        # any node answers for the cluster: ask the second one
        rep = run_driver(f"http://{n2.host}:{n2.admin_port}/", tmp_path)
    finally:
        traffic.stop()

    # security headers of the page
    h = rep["headers"]
    assert "script-src 'self'" in h["content-security-policy"]
    assert "frame-ancestors 'none'" in h["content-security-policy"]
    assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
    assert rep["csp_violations"] == [] and rep["page_errors"] == []

    # a wrong secret is refused, the right one logs in and is kept for the tab
    assert "wrong" in rep["wrong_secret_error"] and rep["login_visible_after_wrong"]
    assert rep["stored_auth"] and not rep["stored_auth_after_logout"]

    # the three nodes, one leader, every node reachable
    nodes = {n["name"]: n for n in rep["nodes"]}
    assert set(nodes) == {"n1", "n2", "n3"}, rep["nodes"]
    assert [n["leader"] for n in rep["nodes"]].count("yes") == 1, rep["nodes"]
    assert all(n["reachable"] == "yes" for n in rep["nodes"]), rep["nodes"]
    assert nodes["n1"]["address"].startswith("127.0.0.11:")
    assert "3 nodes" in rep["summary"] and "answered by n2" in rep["summary"]
    # the two clients of node 2 (the watched one and the publisher); the
    # counters of the other nodes show once /api/v1/stats reports them
    assert nodes["n2"]["clients"] == "2", rep["nodes"]
    assert int(rep["totals"]["clients_connected"]) >= 2, rep["totals"]
    assert rep["chart_last_in"] > 0, "no incoming message rate while messages were published"

    # publishing through the page, and the views of the operations API
    assert rep["publish_status"].startswith("published to dash/test"), rep["publish_status"]
    for view in ("subscriptions", "retained", "banned"):
        status = rep[view + "_status"]
        assert not status.startswith("error"), (view, status)

    for shot in ("overview.png", "clients.png"):
        assert_not_blank(tmp_path / shot)
    if UPDATE_DOCS:
        shutil.copy(tmp_path / "overview.png", Path(ROOT) / "docs" / "dashboard.png")


def test_dashboard_kicks_a_client(cluster, watched_client, tmp_path):
    _, gone = watched_client
    n3 = cluster.nodes[2]
    rep = run_driver(f"http://{n3.host}:{n3.admin_port}/", tmp_path, kick="dash-kick-me")
    assert rep["clients_available"], rep["clients_status"]
    assert "dash-kick-me" in rep["client_ids"], rep["client_ids"]
    assert rep.get("kicked"), rep
    # the client of node 2, kicked from the page of node 3, is disconnected,
    # and node 2 logs it as a kick
    assert gone.wait(10), "the kicked client is still connected"
    n2 = cluster.nodes[1]
    deadline = time.monotonic() + 10
    while "kick client 'dash-kick-me'" not in n2.logtext():
        assert time.monotonic() < deadline, n2.logtext()[-3000:]
        time.sleep(0.05)
    assert_not_blank(tmp_path / "kicked.png")
