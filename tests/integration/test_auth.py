"""Authentication and authorization on the real broker.

Password files are made by Debian's `mosquitto_passwd` (and `starling
passwd`), ACL files are written in Mosquitto's syntax; clients are
mosquitto_pub / mosquitto_sub with -u/-P and paho (3.1.1 and 5.0).
"""

import signal
import subprocess
import time

import pytest

import mqttraw
from conftest import STARLING_BIN
from helpers import PahoClient, uid

pytestmark = pytest.mark.starling_only

WAIT = 10

ACL = """\
# anonymous clients
topic read public/#

user alice
topic readwrite test/#
topic deny test/nosubscribe
topic read r/only
topic write w/only

user root
topic readwrite #
topic read $SYS/#
"""


def mosquitto_passwd(path, user, password, create=False):
    subprocess.run(["mosquitto_passwd", *(["-c"] if create else []), "-b", str(path), user,
                    password], check=True, timeout=30)


@pytest.fixture
def files(tmp_path):
    pw = tmp_path / "passwd"
    mosquitto_passwd(pw, "alice", "alice-pw", create=True)
    mosquitto_passwd(pw, "root", "root-pw")
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    return pw, acl


def mosq(tool, port, *args, version="mqttv311"):
    return subprocess.run([tool, "-h", "127.0.0.1", "-p", str(port), "-V", version, *args],
                          capture_output=True, text=True, timeout=30)


def client(b, user=None, password=None, version=5, **kw):
    c = PahoClient(b, uid(user or "anon"), version, **kw)
    if user is not None:
        c.c.username_pw_set(user, password)
    return c


def wait_log(b, text, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in b.stderr_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log:\n{b.stderr_text()[-3000:]}")


def test_password_file_from_mosquitto_passwd(broker, files):
    pw, _ = files
    b = broker(password_file=pw)
    r = mosq("mosquitto_pub", b.port, "-u", "alice", "-P", "alice-pw", "-t", "t", "-m", "m",
             "-q", "1")
    assert r.returncode == 0, r.stderr
    # wrong password, unknown user: 3.1.1 return code 4
    for u, p in (("alice", "nope"), ("mallory", "alice-pw")):
        c = client(b, u, p, version=4)
        assert c.connect(expect_rc=None)["rc"] == 4
        c.stop()
    # no user name: anonymous, off by default with a password file: return code 5
    c = client(b, version=4)
    assert c.connect(expect_rc=None)["rc"] == 5
    c.stop()
    r = mosq("mosquitto_pub", b.port, "-t", "t", "-m", "m")
    assert r.returncode != 0 and "not authorised" in (r.stdout + r.stderr).lower()
    # MQTT 5.0: 0x86 bad user name or password, 0x87 not authorized
    c = client(b, "alice", "nope", version=5)
    assert c.connect(expect_rc=None)["rc"] == 0x86
    c.stop()
    c = client(b, version=5)
    assert c.connect(expect_rc=None)["rc"] == 0x87
    c.stop()
    c = client(b, "alice", "alice-pw", version=5)
    c.connect()
    c.disconnect()


def test_user_without_password_is_refused(broker, files):
    pw, _ = files
    b = broker(password_file=pw)
    raw = mqttraw.Client(b)
    assert raw.connect("nopw", version=4, username="alice").reason_code == 4
    raw.close()


def test_allow_anonymous_with_password_file(broker, files):
    pw, _ = files
    b = broker(password_file=pw, allow_anonymous=True)
    r = mosq("mosquitto_pub", b.port, "-t", "t", "-m", "m", "-q", "1")
    assert r.returncode == 0, r.stderr
    # a user name still needs its password
    r = mosq("mosquitto_pub", b.port, "-u", "alice", "-P", "bad", "-t", "t", "-m", "m")
    assert r.returncode != 0


def test_starling_passwd_file(broker, tmp_path):
    pw = tmp_path / "pw"
    subprocess.run([STARLING_BIN, "passwd", "-c", "-b", str(pw), "sam", "sam pw"], check=True,
                   timeout=30)
    b = broker(password_file=pw)
    r = mosq("mosquitto_pub", b.port, "-u", "sam", "-P", "sam pw", "-t", "t", "-m", "m", "-q", "1")
    assert r.returncode == 0, r.stderr


def test_bad_password_or_acl_file_stops_start_up(tmp_path):
    from conftest import clean_env, free_port
    bad = tmp_path / "pw"
    bad.write_text("alice:$6$abcd$efgh\n")
    for key, path, why in (("password_file", bad, "line 1"),
                           ("password_file", tmp_path / "missing", "missing"),
                           ("acl_file", tmp_path / "acl", "line 1")):
        if key == "acl_file":
            path.write_text("topic sometimes x/#\n")
        conf = tmp_path / "c.conf"
        conf.write_text(f"bind_address 127.0.0.1\nport {free_port()}\n{key} {path}\n"
                        f"data_dir {tmp_path / 'data'}\n")
        r = subprocess.run([STARLING_BIN, "-c", str(conf)], capture_output=True, text=True,
                           timeout=30, env=clean_env())
        assert r.returncode == 1, r.stderr
        assert key in r.stderr and str(path) in r.stderr and why in r.stderr, r.stderr


def test_subscribe_acl_311_and_5(broker, files):
    pw, acl = files
    b = broker(password_file=pw, acl_file=acl)
    c = client(b, "alice", "alice-pw", version=4)
    c.connect()
    # [issue 11] test/nosubscribe is refused with 0x80 in 3.1.1
    assert c.subscribe("test/nosubscribe", 1) == [0x80]
    assert c.subscribe("test/ok", 1) == [1]
    assert c.subscribe("w/only", 0) == [0x80]  # write-only: could never deliver
    c.disconnect()
    c = client(b, "alice", "alice-pw", version=5)
    c.connect()
    assert c.subscribe("test/nosubscribe", 1) == [0x87]
    assert c.subscribe("$share/g/test/nosubscribe", 1) == [0x87]
    assert c.subscribe("r/only", 1) == [1]
    c.disconnect()


def test_publish_acl_and_delivery(broker, files):
    pw, acl = files
    b = broker(password_file=pw, acl_file=acl)
    root = client(b, "root", "root-pw")
    root.connect()
    assert root.subscribe("#", 1) == [1]
    alice5 = client(b, "alice", "alice-pw", version=5)
    alice5.connect()
    # 5.0: PUBACK 0x87, and the message is dropped
    info = alice5.c.publish("r/only", b"no", qos=1)
    info.wait_for_publish(WAIT)
    assert info.is_published()
    alice5.publish("w/only", b"yes", qos=1)
    m = root.get()
    assert (m.topic, m.payload) == ("w/only", b"yes")
    # 3.1.1: acknowledged, dropped
    alice4 = client(b, "alice", "alice-pw", version=4)
    alice4.connect()
    alice4.publish("r/only", b"no", qos=1)
    alice4.publish("r/only", b"no", qos=2)
    alice4.publish("test/x", b"yes", qos=2)
    m = root.get()
    assert (m.topic, m.payload) == ("test/x", b"yes")
    # deliveries: alice subscribed to test/# and r/only gets neither w/only
    # nor anything else root publishes outside them
    assert alice4.subscribe("#", 1) == [1]
    root.publish("w/only", b"hidden", qos=1)
    root.publish("other/t", b"hidden", qos=1)
    root.publish("r/only", b"seen", qos=1)
    m = alice4.get()
    assert (m.topic, m.payload) == ("r/only", b"seen")
    for c in (root, alice5, alice4):
        c.disconnect()


def test_reason_code_0x87_on_puback(broker, files):
    pw, acl = files
    b = broker(password_file=pw, acl_file=acl)
    raw = mqttraw.Client(b)
    assert raw.connect("alice-raw", version=5, username="alice",
                       password=b"alice-pw").reason_code == 0
    raw.publish("r/only", b"x", qos=1, packet_id=7)
    ack = raw.expect(mqttraw.PUBACK)
    assert (ack.packet_id, ack.reason_code) == (7, 0x87)
    raw.publish("r/only", b"x", qos=2, packet_id=8)
    ack = raw.expect(mqttraw.PUBREC)
    assert (ack.packet_id, ack.reason_code) == (8, 0x87)
    raw.close()


def test_retained_messages_and_will_pass_the_acl(broker, files):
    pw, acl = files
    b = broker(password_file=pw, acl_file=acl)
    root = client(b, "root", "root-pw")
    root.connect()
    root.publish("w/only", b"retained hidden", qos=1, retain=True)
    root.publish("test/r", b"retained seen", qos=1, retain=True)
    alice = client(b, "alice", "alice-pw")
    alice.connect()
    assert alice.subscribe("#", 1) == [1]
    m = alice.get()
    assert (m.topic, m.payload) == ("test/r", b"retained seen")
    alice.assert_nothing_before_marker("test/marker", publisher=root)
    # wills: one the ACL lets alice write, one it does not
    assert root.subscribe("r/#", 1, rh=2) == [1] and root.subscribe("test/#", 1, rh=2) == [1]
    for topic in ("r/only", "test/will"):
        w = client(b, "alice", "alice-pw", will={"topic": topic, "payload": b"gone", "qos": 1})
        w.connect()
        w.stop()  # no DISCONNECT: the will is due
    m = root.get()
    assert (m.topic, m.payload) == ("test/will", b"gone")
    root.assert_nothing_before_marker("test/marker2")
    for c in (root, alice):
        c.disconnect()


def test_sighup_reloads_passwords_and_acl(broker, files):
    pw, acl = files
    b = broker(password_file=pw, acl_file=acl)
    alice = client(b, "alice", "alice-pw")
    alice.connect()
    assert alice.subscribe("test/a", 1) == [1]
    c = client(b, "carol", "carol-pw", version=4)
    assert c.connect(expect_rc=None)["rc"] == 4
    c.stop()
    mosquitto_passwd(pw, "carol", "carol-pw")
    acl.write_text(ACL + "\nuser carol\ntopic readwrite carol/#\n")
    b.send_signal(signal.SIGHUP)
    wait_log(b, "reload: acl_file")
    c = client(b, "carol", "carol-pw", version=4)
    c.connect()
    assert c.subscribe("carol/x", 1) == [1]
    assert c.subscribe("test/a", 1) == [0x80]
    # alice's connection went on through the reload
    alice.publish("test/a", b"still here", qos=1)
    m = alice.get()
    assert (m.topic, m.payload) == ("test/a", b"still here")
    # a broken file keeps the old one
    pw.write_text("carol:garbage\n")
    b.send_signal(signal.SIGHUP)
    wait_log(b, "the old one stays")
    c2 = client(b, "carol", "carol-pw", version=4)
    c2.connect()
    for x in (alice, c, c2):
        x.disconnect()


def test_sys_counts_refusals(broker, files):
    pw, acl = files
    b = broker(password_file=pw, acl_file=acl, sys_interval=1)
    c = client(b, "alice", "wrong", version=4)
    assert c.connect(expect_rc=None)["rc"] == 4
    c.stop()
    root = client(b, "root", "root-pw")
    root.connect()
    assert root.subscribe("$SYS/broker/security/#", 0) == [0]
    seen = {}
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and not (
            seen.get("$SYS/broker/security/auth_failed", 0) >= 1):
        m = root.get()
        seen[m.topic] = int(m.payload)
    assert seen["$SYS/broker/security/auth_failed"] == 1
    root.disconnect()


RESTART_ACL = """\
user alice
topic read a/#
topic write a/#

user root
topic readwrite #

pattern read p/%u/#
"""


@pytest.mark.parametrize("version", [4, 5])
def test_acl_of_a_persistent_session_survives_a_crash(broker, tmp_path, version):
    """Who a persistent session's client is (its user name) is stored with
    the session: after SIGKILL and a restart on the same data_dir, the
    messages published while its client is away are checked against that
    user's read rules ('a/#', and the pattern 'p/%u/#'), not an anonymous
    client's (which may read nothing here)."""
    pw = tmp_path / "passwd"
    mosquitto_passwd(pw, "alice", "alice-pw", create=True)
    mosquitto_passwd(pw, "root", "root-pw")
    acl = tmp_path / "acl"
    acl.write_text(RESTART_ACL)
    conf = dict(password_file=pw, acl_file=acl, persistence=True,
                data_dir=str(tmp_path / "store"), log_level="error")
    props = {"session_expiry_interval": 3600} if version == 5 else None
    cid = uid("alice")

    def alice():
        c = mqttraw.Client(broker_now, version=version)
        kw = {"properties": props} if props else {}
        ack = c.connect(cid, clean=False, username="alice", password=b"alice-pw", **kw)
        assert ack.reason_code == 0, ack
        return c, ack

    broker_now = broker(**conf)
    c, ack = alice()
    assert not ack.session_present
    granted = c.subscribe([("#", 1)]).reason_codes
    assert granted == [1], granted
    c.disconnect()
    # The SUBACK does not wait for the store: a retained message's PUBACK
    # does, and the store commits in submission order, so once it is here
    # the session and its subscription are on disk.
    root = mqttraw.Client(broker_now, version=5)
    assert root.connect(uid("root"), username="root", password=b"root-pw").reason_code == 0
    root.publish("z/sync", b"s", qos=1, retain=True)
    assert root.expect(mqttraw.PUBACK).reason_code < 0x80
    root.disconnect()
    broker_now.stop(signal.SIGKILL, check=False)  # a crash

    broker_now = broker(**conf)
    root = mqttraw.Client(broker_now, version=5)
    assert root.connect(uid("root"), username="root", password=b"root-pw").reason_code == 0
    for topic in ("a/x", "p/alice/x", "p/bob/x", "other/t", "a/end"):
        root.publish(topic, topic.encode(), qos=1)
        assert root.expect(mqttraw.PUBACK).reason_code < 0x80
    root.disconnect()

    c, ack = alice()
    assert ack.session_present
    got = []
    while not got or got[-1] != "a/end":
        got.append(c.recv_publish(timeout=WAIT).topic)
    assert got == ["a/x", "p/alice/x", "a/end"], got
    # and the user's rules still apply to what the session gets from now on
    root = mqttraw.Client(broker_now, version=5)
    assert root.connect(uid("root"), username="root", password=b"root-pw").reason_code == 0
    for topic in ("other/t", "p/bob/y", "p/alice/y"):
        root.publish(topic, topic.encode(), qos=1)
        assert root.expect(mqttraw.PUBACK).reason_code < 0x80
    root.disconnect()
    assert c.recv_publish(timeout=WAIT).topic == "p/alice/y"
    c.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_qos2_resend_of_a_received_message_after_an_acl_reload(broker, files, version):
    """A QoS 2 PUBLISH received (PUBREC 0x00) before a reload took the
    publisher's right to write its topic, resent (DUP 1, same packet id)
    after it, is a duplicate: acknowledged with PUBREC 0x00 [MQTT-3.1.1
    4.3.3-2, MQTT-5.0 4.3.3-10], not refused (5.0 0x87, while its id stayed
    recorded: the message, delivered, was taken for refused, and the
    client's next message with that id for a duplicate, acknowledged and
    never delivered). The subscriber gets both messages once each."""
    pw, acl = files
    b = broker(password_file=pw, acl_file=acl)
    reloads = 0

    def reload(text):
        nonlocal reloads
        acl.write_text(text)
        b.send_signal(signal.SIGHUP)
        reloads += 1
        deadline = time.monotonic() + WAIT
        while b.stderr_text().count("reload: acl_file") < reloads:
            assert time.monotonic() < deadline, b.stderr_text()[-3000:]
            time.sleep(0.01)

    root = mqttraw.Client(b, version=5)
    assert root.connect(uid("root"), username="root", password=b"root-pw").reason_code == 0
    assert root.subscribe([("test/d", mqttraw.sub_options(qos=2))]).reason_codes == [2]
    cid = uid("alice")

    def alice():
        c = mqttraw.Client(b, version=version)
        kw = {"properties": {"session_expiry_interval": 3600}} if version == 5 else {}
        ack = c.connect(cid, clean=False, username="alice", password=b"alice-pw", **kw)
        assert ack.reason_code == 0, ack
        return c

    def pubrec(c, payload, pid, dup=False):
        c.publish("test/d", payload, qos=2, dup=dup, packet_id=pid)
        rec = c.expect(mqttraw.PUBREC)
        assert rec.packet_id == pid, rec
        if rec.reason_code < 0x80:
            c.pubrel(pid)
            comp = c.expect(mqttraw.PUBCOMP)
            assert comp.packet_id == pid and comp.reason_code == 0, comp
        return rec.reason_code

    c = alice()
    c.publish("test/d", b"first", qos=2, packet_id=7)
    rec = c.expect(mqttraw.PUBREC)
    assert rec.packet_id == 7 and rec.reason_code == 0, rec
    c.disconnect()  # before its PUBREL: the id stays recorded
    reload(ACL.replace("topic readwrite test/#", "topic read test/#"))
    c = alice()
    resent = pubrec(c, b"first", 7, dup=True)
    reload(ACL)
    # the exchange is over (a refusal ends it too): the id is free again
    fresh = pubrec(c, b"second", 7)
    c.disconnect()
    p = mqttraw.Client(b, version=5)
    assert p.connect(uid("root"), username="root", password=b"root-pw").reason_code == 0
    p.publish("test/d", b"marker", qos=1)
    assert p.expect(mqttraw.PUBACK).reason_code == 0
    p.disconnect()
    got = []
    while not got or got[-1] != b"marker":
        got.append(root.recv_publish(timeout=WAIT).payload)
    root.disconnect()
    assert (resent, fresh, got) == (0, 0, [b"first", b"second", b"marker"]), \
        f"resend answered {resent:#x}, new message {fresh:#x}, subscriber got {got}"
