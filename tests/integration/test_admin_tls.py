"""HTTPS on the admin port (admin_tls: the MQTT listeners' tls_certfile and
tls_keyfile, libmicrohttpd with GnuTLS) and `starling ctl` over it (libcurl,
--cacert). Certificates come from a test CA made with the `openssl` command
in a temporary directory removed afterwards.
"""

import base64
import http.client
import json
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import STARLING_BIN, clean_env, free_port

pytestmark = pytest.mark.starling_only

KEY, SECRET = "tlsops", "tls-secret-123"
API_KEY = f"{KEY}:{SECRET}"

CERT_SCRIPT = r"""
set -e; exec >openssl.log 2>&1
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1; }
ca() { key $1.key; openssl req -x509 -new -key $1.key -out $1.pem -days 2 -subj "/CN=$2"; }
leaf() { key $1.key; openssl req -new -key $1.key -out $1.csr -subj "/CN=$3"
  printf 'subjectAltName=%s\n' "$4" > $1.ext
  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -days 2 \
    -extfile $1.ext -out $1.pem; }
ca ca 'Admin Test CA'; ca ca2 'Other CA'
leaf server ca localhost 'DNS:localhost,IP:127.0.0.1'
key other.key
"""


@pytest.fixture(scope="module")
def certs():
    d = tempfile.mkdtemp(prefix="starling_admin_tls_")
    subprocess.run(["sh", "-c", CERT_SCRIPT], cwd=d, check=True, timeout=60)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def node(broker, certs):
    return broker(admin=True, api_key=API_KEY, admin_tls=True,
                  tls_certfile=certs / "server.pem", tls_keyfile=certs / "server.key")


def https(node, path, cafile, auth=True):
    ctx = ssl.create_default_context(cafile=str(cafile))
    conn = http.client.HTTPSConnection("127.0.0.1", node.admin_port, timeout=10, context=ctx)
    try:
        h = {"Authorization": "Basic " + base64.b64encode(API_KEY.encode()).decode()} if auth else {}
        conn.request("GET", path, headers=h)
        r = conn.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        conn.close()


def ctl(*args):
    return subprocess.run([STARLING_BIN, "ctl", *args], capture_output=True, text=True,
                          timeout=60, env=clean_env())


def test_admin_port_speaks_https_with_the_mqtt_certificate(node, certs):
    st, _, body = https(node, "/api/v1/health", certs / "ca.pem", auth=False)
    assert st == 200 and json.loads(body)["status"] == "ok"
    st, _, body = https(node, "/api/v1/cluster", certs / "ca.pem")
    assert st == 200 and json.loads(body)["clustered"] is False
    st, h, body = https(node, "/", certs / "ca.pem", auth=False)
    assert st == 200 and h["content-type"].startswith("text/html") and b"Starling" in body
    # the key is still required over HTTPS
    st, _, body = https(node, "/api/v1/cluster", certs / "ca.pem", auth=False)
    assert st == 401 and json.loads(body)["code"] == "unauthorized"
    # the certificate is the one of the configuration: another CA refuses it
    with pytest.raises(ssl.SSLCertVerificationError):
        https(node, "/api/v1/health", certs / "ca2.pem", auth=False)
    assert "(HTTPS)" in node.stderr_text()


def test_plain_http_gets_no_answer_on_an_https_port(node):
    conn = http.client.HTTPConnection("127.0.0.1", node.admin_port, timeout=10)
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            conn.request("GET", "/api/v1/health")
            conn.getresponse()
    finally:
        conn.close()
    assert node.alive()


def test_ctl_over_https(node, certs):
    base = ["--host", "127.0.0.1", "--port", str(node.admin_port), "--api-key", API_KEY]
    r = ctl(*base, "--cacert", str(certs / "ca.pem"), "cluster", "status")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("cluster: standalone, 1 node"), r.stdout
    # admin_tls in the node's configuration file: HTTPS without --tls
    r = ctl("-c", node.conf_path, *base, "--cacert", str(certs / "ca.pem"), "--json", "health")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "ok", r.stderr
    # a certificate that the given CAs do not sign: cannot connect (3)
    r = ctl(*base, "--cacert", str(certs / "ca2.pem"), "health")
    assert r.returncode == 3 and "https://127.0.0.1" in r.stderr, r.stderr
    # the system's CAs do not know the test CA either
    r = ctl(*base, "--tls", "health")
    assert r.returncode == 3, r.stderr
    # plain HTTP to the HTTPS port: no HTTP answer, cannot connect (3)
    r = ctl(*base, "health")
    assert r.returncode == 3 and "http://127.0.0.1" in r.stderr, r.stderr


def start_raw(tmp_path, lines):
    conf = tmp_path / "admin_tls.conf"
    conf.write_text("\n".join(["bind_address 127.0.0.1", f"port {free_port()}",
                               f"data_dir {tmp_path / 'data'}", *lines]) + "\n")
    return subprocess.run([STARLING_BIN, "-c", str(conf)], capture_output=True, text=True,
                          timeout=30, env=clean_env({"STARLING_ADMIN_PORT": str(free_port())}))


def test_admin_tls_without_usable_keys_stops_start_up(certs, tmp_path):
    r = start_raw(tmp_path, ["admin_tls true"])
    assert r.returncode == 1 and "admin_tls needs tls_certfile and tls_keyfile" in r.stderr, \
        r.stderr
    r = start_raw(tmp_path, ["admin_tls true", f"tls_certfile {certs / 'server.pem'}",
                             f"tls_keyfile {tmp_path / 'missing.key'}"])
    assert r.returncode == 1 and "missing.key" in r.stderr, r.stderr
    r = start_raw(tmp_path, ["admin_tls true", f"tls_certfile {certs / 'server.pem'}",
                             f"tls_keyfile {certs / 'other.key'}"])
    assert r.returncode == 1 and "cannot start the HTTPS server" in r.stderr, r.stderr
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    r = start_raw(tmp_path, ["admin_tls true", f"tls_certfile {not_pem}",
                             f"tls_keyfile {certs / 'server.key'}"])
    assert r.returncode == 1 and "not a PEM file" in r.stderr, r.stderr
