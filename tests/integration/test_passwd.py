"""`starling passwd` writes files that a real Mosquitto accepts.

Each test writes a password file with `starling passwd` (batch mode, the
prompt fed through stdin, -H sha512, -D), starts Debian's mosquitto on a free
port with that password_file, and connects with mosquitto_pub -u/-P: the right
password is accepted, a wrong one and a deleted user are refused. Files made
by mosquitto_passwd are checked in Starling by tests/unit/test_passwd.c.
"""

import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import STARLING_BIN
from mosquitto_ref import RefMosquitto

pytestmark = pytest.mark.skipif(
    os.environ.get("STARLING_TEST_BROKER", "starling") != "starling",
    reason="exercises the starling binary's passwd command",
)


@pytest.fixture
def scratch():
    d = tempfile.mkdtemp(prefix="starling_passwd_")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def starling_passwd(*args, stdin=None):
    return subprocess.run([STARLING_BIN, "passwd", *args], input=stdin, capture_output=True,
                          text=True, timeout=30)


class Mosquitto(RefMosquitto):
    def __init__(self, scratch, password_file):
        super().__init__(scratch, f"allow_anonymous false\npassword_file {password_file}\n")

    def pub(self, user, password):
        return subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-u", user, "-P",
             password, "-t", "t", "-m", "m", "-q", "1", "-V", "mqttv311"],
            capture_output=True, text=True, timeout=20)


@pytest.fixture
def mosquitto(scratch):
    started = []

    def start(path):
        m = Mosquitto(scratch, path)
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


def assert_accepted(m, user, password):
    r = m.pub(user, password)
    assert r.returncode == 0, (r.stdout, r.stderr, m.read_log())


def assert_refused(m, user, password):
    r = m.pub(user, password)
    assert r.returncode != 0
    assert "not authorised" in (r.stdout + r.stderr)


def test_batch_file_works_in_mosquitto(scratch, mosquitto):
    pw = os.path.join(scratch, "pw")
    assert starling_passwd("-c", "-b", pw, "alice", "s3cret word").returncode == 0
    assert starling_passwd("-b", pw, "bob", "hunter2").returncode == 0
    assert starling_passwd("-H", "sha512", "-b", pw, "carol", "old-style").returncode == 0
    lines = open(pw).read().splitlines()
    assert [l.split(":")[0] for l in lines] == ["alice", "bob", "carol"]
    assert lines[0].startswith("alice:$7$1000$")
    assert lines[2].startswith("carol:$6$")
    assert os.stat(pw).st_mode & 0o777 == 0o600
    m = mosquitto(pw)
    assert_accepted(m, "alice", "s3cret word")
    assert_accepted(m, "bob", "hunter2")
    assert_accepted(m, "carol", "old-style")
    assert_refused(m, "alice", "s3cret")
    assert_refused(m, "dave", "hunter2")


def test_prompted_update_and_delete(scratch, mosquitto):
    pw = os.path.join(scratch, "pw")
    r = starling_passwd("-c", pw, "alice", stdin="first\nfirst\n")
    assert r.returncode == 0, r.stderr
    r = starling_passwd(pw, "alice", stdin="second\nsecond\n")
    assert r.returncode == 0, r.stderr
    r = starling_passwd(pw, "bob", stdin="one\ntwo\n")
    assert r.returncode == 1 and "do not match" in r.stderr
    assert starling_passwd("-b", pw, "bob", "b").returncode == 0
    assert starling_passwd("-D", pw, "bob").returncode == 0
    r = starling_passwd("-D", pw, "bob")
    assert r.returncode == 1 and "not found" in r.stderr
    m = mosquitto(pw)
    assert_accepted(m, "alice", "second")
    assert_refused(m, "alice", "first")
    assert_refused(m, "bob", "b")


def test_mosquitto_made_file_is_updated_in_place(scratch):
    pw = os.path.join(scratch, "pw")
    subprocess.run(["mosquitto_passwd", "-c", "-b", pw, "m1", "x"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", pw, "m2", "y"], check=True)
    before = open(pw).read().splitlines()
    assert starling_passwd("-b", pw, "s1", "z").returncode == 0
    after = open(pw).read().splitlines()
    assert after[:2] == before and after[2].startswith("s1:$7$")


def test_malformed_file_is_refused_with_its_line(scratch):
    pw = os.path.join(scratch, "pw")
    with open(pw, "w") as f:
        f.write("ok:$6$abcd$efgh\n")
    r = starling_passwd("-b", pw, "u", "p")
    assert r.returncode == 1
    assert r.stderr.strip() == f"starling passwd: {pw}: line 1: the hash is not 64 bytes of valid base64"
    assert open(pw).read() == "ok:$6$abcd$efgh\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_update_keeps_mode_and_owner(scratch):
    pw = os.path.join(scratch, "pw")
    assert starling_passwd("-c", "-b", pw, "a", "1").returncode == 0
    os.chown(pw, 65534, 65534)  # nobody:nogroup, as a broker's own user would own it
    os.chmod(pw, 0o640)
    assert starling_passwd("-b", pw, "b", "2").returncode == 0
    st = os.stat(pw)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o640)
    assert starling_passwd("-D", pw, "a").returncode == 0
    st = os.stat(pw)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o640)
    assert [l.split(":")[0] for l in open(pw).read().splitlines()] == ["b"]
