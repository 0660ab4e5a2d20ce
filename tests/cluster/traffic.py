"""Continuous MQTT traffic through a cluster, and the checker that counts
what the faults did to it (issue 10).

Traffic(cluster, ...) runs, each on its own thread with its own paho
client driven by client.loop() (no paho background thread):

* publishers, QoS 1 and QoS 2, a few per node, each publishing on
  `PREFIX/<publisher>` payloads `<publisher>:<seq>` with seq 0, 1, 2, ...
  one at a time: a message counts as *acknowledged* once its PUBACK (QoS 1)
  or PUBCOMP (QoS 2) arrived with a reason code below 0x80. A publisher whose
  connection fails, or whose ack does not come within ack_timeout, goes on
  with the next seq on the next node that accepts it (the unacknowledged
  message may or may not arrive: it is not counted either way); with
  resend=True each publisher has a persistent session and one paho client,
  which publishes an unacknowledged message again on its next connection
  (DUP 1, the same packet id) until it is acknowledged: then it counts once,
  and a second copy at a subscriber is a QoS 2 duplicate;
* persistent-session subscribers (MQTT 5.0, session expiry 600 s, clean
  start 0 after the first CONNECT), subscribed to `PREFIX/#` at QoS 2 (or
  the QoS given in subscriber_qos), one per node (or on the nodes given in
  subscribers_on); one whose connection fails reconnects to the next node that
  accepts it, with the same paho client (so a QoS 2 message past PUBREC is
  completed, not delivered again). A CONNACK with session present 0 after
  the first is counted (`sessions_lost`) and the subscription made again.

check() counts, per subscriber: acknowledged messages that never arrived
(lost), QoS 2 messages delivered more than once (dup2), messages of one
publisher that arrived after a later one of the same publisher, outside the
fault windows given (misorder); plus the connection events.
"""

import threading
import time
import uuid

import paho.mqtt.client as mqtt
import paho_trace
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

CONNECT_TIMEOUT = 12.0  # above cluster_claim_timeout (5 s) and a takeover


def _session_props(expiry):
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = expiry
    return p


def _rc(x):
    return x.value if hasattr(x, "value") else x


class _ReasonClient(mqtt.Client):
    """paho 1.6 marks a QoS 1/2 message published whatever the reason code of
    its PUBACK/PUBREC/PUBCOMP; this records the codes (mid -> worst code)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.reasons = {}

    def _note_reason(self):
        pkt = self._in_packet["packet"]
        if len(pkt) >= 3:
            mid = int.from_bytes(pkt[:2], "big")
            self.reasons[mid] = max(self.reasons.get(mid, 0), pkt[2])

    def _handle_pubrec(self):
        self._note_reason()
        return super()._handle_pubrec()

    def _handle_pubackcomp(self, cmd):
        self._note_reason()
        return super()._handle_pubackcomp(cmd)

    def _messages_reconnect_reset_out(self):
        # paho 1.6.1 (Debian 12) at each connect(): a QoS 2 message awaiting
        # PUBCOMP becomes "resend PUBREL", and one in that state becomes "to
        # publish", DUP 0. So after one attempt that got no CONNACK (the
        # node died, or refused it), the next connection published again a
        # message whose PUBREL the client had sent: a new message by the
        # spec [MQTT-4.3.3-5], which the checker counted as a QoS 2
        # duplicate of the server (chaos seeds 9987 and 9993 with --resend,
        # 2026-12-05: 3 and 6). Kept awaiting PUBCOMP, it stays "resend
        # PUBREL" however many attempts fail (test_traffic_client.py).
        with self._out_message_mutex:
            for m in self._out_messages.values():
                if m.qos == 2 and m.state == mqtt.mqtt_ms_resend_pubrel:
                    m.state = mqtt.mqtt_ms_wait_for_pubcomp
        return super()._messages_reconnect_reset_out()


class _Client:
    """One paho client and its thread; connects to nodes in turn."""

    def __init__(self, traffic, cid, home, clean, keepalive):
        self.t = traffic
        self.cid = cid
        self.home = home  # index of the first node tried
        self.clean = clean
        self.keepalive = keepalive
        self.node = None  # the node connected to, or None
        self.events = []  # (time, what, node name, detail)
        self.connects = 0
        self._connack = None
        self.new_client()
        self.thread = threading.Thread(target=self._main, name=cid, daemon=True)

    def new_client(self):
        self.c = _ReasonClient(client_id=self.cid, protocol=mqtt.MQTTv5)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect

    def event(self, what, detail=""):
        self.events.append((time.monotonic(), what, self.node.name if self.node else "-", detail))

    def _on_connect(self, client, userdata, flags, rc, properties=None):
        self._connack = (_rc(rc), bool(flags.get("session present")))

    def _on_disconnect(self, client, userdata, rc, properties=None):
        if self.node is not None:
            self.event("disconnected", f"rc {_rc(rc)}")
        self.node = None

    def _close(self):
        try:
            s = self.c.socket()
            if s:
                s.close()
        except Exception:
            pass
        self.c._sock = None
        self.node = None

    def _connect_to(self, node):
        """CONNECT to one node; True when accepted."""
        self._connack = None
        nodes = self.t.cluster.nodes
        props = _session_props(self.t.session_expiry) if not self.clean else None
        first = self.connects == 0
        try:
            self.c.connect(node.host, node.port, self.keepalive,
                           clean_start=True if (self.clean or first) else False,
                           properties=props)
        except (OSError, ValueError) as e:
            self._close()
            self.events.append((time.monotonic(), "connect-failed", node.name, str(e)))
            return False
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while self._connack is None and time.monotonic() < deadline and not self.t.stopping.is_set():
            if self.c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
        if self._connack is None or self._connack[0] != 0:
            self.events.append((time.monotonic(), "connect-refused", node.name,
                                str(self._connack)))
            self._close()
            return False
        self.node = node
        self.connects += 1
        self.event("connected", f"session present {int(self._connack[1])}")
        self.on_connected(first, self._connack[1])
        assert nodes
        return True

    def connect_somewhere(self):
        nodes = self.t.cluster.nodes
        k = self.home if self.connects == 0 else (nodes.index(self.last) + 1 if self.last else 0)
        for j in range(len(nodes)):
            n = nodes[(k + j) % len(nodes)]
            if self.t.stopping.is_set():
                return False
            if n.proc is None or getattr(n, "paused", False) or n in self.t.avoid:
                continue
            if self._connect_to(n):
                self.last = n
                return True
        time.sleep(0.2)  # every node refused: try the round again (pacing)
        return False

    last = None

    def on_connected(self, first, session_present):
        pass

    def _main(self):
        try:
            self.run()
        except Exception as e:  # reported by check(), never silent
            self.t.errors.append(f"{self.cid}: {type(e).__name__}: {e}")


class Publisher(_Client):
    def __init__(self, traffic, cid, home, qos, resend=False):
        # resend: a persistent session (expiry as the subscribers'), and
        # one paho client for every connection, so that a message without
        # its acknowledgement is published again on the next connection
        # (DUP 1, its packet id, as paho does [MQTT-5.0 4.4.0-1]) and
        # counted once acknowledged there, as a client that must deliver
        # each message does
        super().__init__(traffic, cid, home, clean=not resend, keepalive=traffic.keepalive)
        self.resend = resend
        self.qos = qos
        self.topic = f"{traffic.prefix}/{cid}"
        self.seq = 0
        self.acked = []  # (seq, time acknowledged)
        self.refused = []  # (seq, reason code)
        if resend:  # its one client: what it sent, with DUP (STARLING_TEST_PAHO_TRACE)
            paho_trace.maybe_trace(self.c, cid, sent=True)

    def connect_somewhere(self):
        # a new paho client for each connection (clean start): paho would
        # otherwise publish the unacknowledged message of the old connection
        # again on the new one, a second copy of a seq the checker would
        # count as a QoS 2 duplicate; a resending publisher keeps its client
        # and its session, and the server knows that message's id
        if not self.resend:
            self.new_client()
        return super().connect_somewhere()

    def run(self):
        while not self.t.stopping.is_set():
            if self.node is None and not self.connect_somewhere():
                continue
            if self.t.paused_publishing.is_set():
                self.c.loop(0.05)
                continue
            seq = self.seq
            self.seq += 1
            payload = f"{self.cid}:{seq}".encode()
            info = self.c.publish(self.topic, payload, self.qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.event("publish-failed", f"seq {seq} rc {info.rc}")
                self._close()
                continue
            deadline = time.monotonic() + self.t.ack_timeout
            while not info.is_published() and (self.resend or time.monotonic() < deadline):
                if self.t.stopping.is_set():
                    break
                if self.node is None:  # resend: on the next connection
                    self.connect_somewhere()
                    continue
                if self.c.loop(0.02) != mqtt.MQTT_ERR_SUCCESS:
                    if not self.resend:
                        break
                    self.event("connection-lost", f"seq {seq} in flight")
                    self._close()
                elif self.resend and time.monotonic() >= deadline:
                    self.event("no-ack", f"seq {seq}: again on a new connection")
                    self._close()
                    deadline = time.monotonic() + self.t.ack_timeout
            reason = self.c.reasons.pop(info.mid, 0)
            if info.is_published() and reason >= 0x80:
                self.refused.append((seq, reason))
                self.event("refused", f"seq {seq} reason {reason:#x}")
            elif info.is_published():
                self.acked.append((seq, time.monotonic()))
            else:
                self.event("no-ack", f"seq {seq}")
                self._close()
                continue
            if self.t.rate:
                end = time.monotonic() + 1.0 / self.t.rate
                while time.monotonic() < end:  # pacing, keeps the connection served
                    if self.c.loop(max(0.0, min(0.02, end - time.monotonic()))):
                        break
        self._close()


class Subscriber(_Client):
    def __init__(self, traffic, cid, home, qos=2):
        super().__init__(traffic, cid, home, clean=False, keepalive=traffic.keepalive)
        self.qos = qos  # of its subscription
        self.got = []  # (publisher, seq, qos, time)
        self.via = []  # (node name, DUP flag) of each of got: where it came from
        self.sessions_lost = 0
        self.subscribed = threading.Event()
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self._suback = None
        paho_trace.maybe_trace(self.c, cid)  # STARLING_TEST_PAHO_TRACE

    def _on_message(self, client, userdata, msg):
        try:
            pub, seq = msg.payload.decode().rsplit(":", 1)
            self.got.append((pub, int(seq), msg.qos, time.monotonic()))
            self.via.append((self.node.name if self.node else "-", int(msg.dup)))
        except ValueError:
            self.t.errors.append(f"{self.cid}: unexpected payload {msg.payload!r} on {msg.topic}")

    def _on_subscribe(self, client, userdata, mid, granted, properties=None):
        self._suback = [_rc(g) for g in granted]

    def on_connected(self, first, session_present):
        if first or not session_present:
            if not first:
                self.sessions_lost += 1
                self.event("session-lost")
            self._suback = None
            self.c.subscribe(f"{self.t.prefix}/#", options=SubscribeOptions(qos=self.qos))
            deadline = time.monotonic() + CONNECT_TIMEOUT
            while self._suback is None and time.monotonic() < deadline:
                if self.c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
            if self._suback != [self.qos]:
                self.event("suback-missing", str(self._suback))
                self._close()
                return
        self.subscribed.set()

    def move_to(self, node):
        """Ask the subscriber's thread to DISCONNECT and resume its session
        on node (a takeover of a live node's session); moved() tells."""
        self._move_to = node

    def moved(self):
        return self._move_to is None and self.node is not None

    _move_to = None

    def run(self):
        while not self.t.stopping.is_set():
            target = self._move_to
            if target is not None and self.node is not None and self.node is not target:
                self.c.disconnect()
                for _ in range(10):
                    if self.c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                        break
                self._close()
            if target is not None and self.node is None:
                if self._connect_to(target):
                    self.last = target
                    self._move_to = None
                else:
                    time.sleep(0.2)  # pacing: the node may still be starting
                continue
            if target is not None and self.node is target:
                self._move_to = None
            if self.node is None:
                self.connect_somewhere()
                continue
            if self.c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                if self.node is not None:
                    self.event("connection-lost")
                self._close()
        # a clean DISCONNECT keeps the session (expiry 600 s)
        if self.node is not None:
            self.c.disconnect()
            for _ in range(10):
                if self.c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
        self._close()


def _ranges(seqs, most=8):
    """[1, 2, 3, 7] -> "1..3, 7" (the first `most` runs)."""
    runs = []
    for x in seqs:
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    text = ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in runs[:most])
    return text + (f" (+{len(runs) - most} runs)" if len(runs) > most else "")


class Traffic:
    """Publishers and subscribers on a cluster; start(), faults, stop(),
    wait_delivered(), check()."""

    def __init__(self, cluster, pubs_per_node=(1, 1), rate=20.0, ack_timeout=8.0,
                 keepalive=4, session_expiry=600, subscribers_on=None, subscriber_qos=None,
                 resend=False):
        self.cluster = cluster
        self.prefix = f"ft/{uuid.uuid4().hex[:8]}"
        self.rate = rate  # messages per second per publisher (at most)
        self.ack_timeout = ack_timeout
        self.keepalive = keepalive
        self.session_expiry = session_expiry
        self.stopping = threading.Event()
        self.paused_publishing = threading.Event()
        self.avoid = []  # nodes clients do not connect to (e.g. a minority)
        self.errors = []
        self.windows = []  # (start, end) of faults: misorder there is documented
        self.t0 = time.monotonic()  # the times in check()'s samples count from here
        self.t0_wall = time.time()  # the same moment on the wall clock (the nodes' logs)
        n = len(cluster.nodes)
        tag = self.prefix.split("/")[1]
        on = list(subscribers_on if subscribers_on is not None else range(n))
        qos = list(subscriber_qos) if subscriber_qos is not None else [2] * len(on)
        self.subscribers = [Subscriber(self, f"fs{k}-{tag}", i, q)
                            for k, (i, q) in enumerate(zip(on, qos))]
        self.publishers = []
        for i in range(n):
            for qos, count in zip((1, 2), pubs_per_node):
                for k in range(count):
                    self.publishers.append(Publisher(self, f"fp{i}q{qos}{k}-{tag}", i, qos,
                                                     resend=resend))

    def start(self, timeout=30.0):
        for s in self.subscribers:
            s.thread.start()
        deadline = time.monotonic() + timeout
        for s in self.subscribers:
            if not s.subscribed.wait(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"{s.cid} could not subscribe: {s.events[-5:]}")
        for p in self.publishers:
            p.thread.start()
        return self

    def acked_count(self):
        return sum(len(p.acked) for p in self.publishers)

    def wait_progress(self, n, timeout=30.0):
        """Wait until n more messages are acknowledged (traffic flows)."""
        target = self.acked_count() + n
        deadline = time.monotonic() + timeout
        while self.acked_count() < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"traffic stalled: {self.acked_count()} acknowledged, "
                                     f"wanted {target}; {self.summary_events()}")
            time.sleep(0.05)

    def window(self, start, end=None):
        self.windows.append((start, end if end is not None else time.monotonic()))

    def stop_publishing(self):
        """Publishers stop after their current message (its ack awaited)."""
        self.paused_publishing.set()
        deadline = time.monotonic() + self.ack_timeout + 2

        def quiet():
            before = self.acked_count()
            time.sleep(0.3)
            return self.acked_count() == before
        while time.monotonic() < deadline and not quiet():
            pass

    def resume_publishing(self):
        self.paused_publishing.clear()

    def missing(self):
        """{subscriber: number of acknowledged messages not yet received}."""
        out = {}
        for s in self.subscribers:
            have = {(p, q) for p, q, _, _ in s.got}
            out[s.cid] = sum(1 for p in self.publishers for seq, _ in p.acked
                             if (p.cid, seq) not in have)
        return out

    def wait_delivered(self, timeout=30.0):
        """Wait (bounded) until every subscriber has every acknowledged
        message; returns the missing counts then (zeros, or what is lost)."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while True:
            m = self.missing()
            if m != last:
                last, since = m, time.monotonic()
            # done, out of time, or nothing arrived for 10 s (what is
            # missing then stays missing: a bounded wait, not a longer one)
            if not any(m.values()) or time.monotonic() > deadline or \
                    time.monotonic() - since > 10:
                return m
            time.sleep(0.2)

    def stop(self):
        self.stopping.set()
        for c in self.publishers + self.subscribers:
            if c.thread.is_alive():
                c.thread.join(CONNECT_TIMEOUT + self.ack_timeout + 5)

    def summary_events(self, last=4):
        return {c.cid: c.events[-last:] for c in self.subscribers + self.publishers if c.events}

    # How long after a fault ends its late messages may still come out of
    # order (docs/cluster.md, the chaos runner): a node that continues
    # (SIGCONT, a healed cut, a restart) learns that its sessions moved once
    # it has applied what it missed (a few seconds under ASan), and its old
    # copies then wait their grace (CHAN_RECONNECT_GRACE_MS, 6 s, for
    # forwards still held in other nodes' outboxes) before they pass what
    # they hold on as late messages: after newer ones.
    LATE_SLACK_S = 12.0

    def in_window(self, t, slack=LATE_SLACK_S):
        return any(a - 0.5 <= t <= b + slack for a, b in self.windows)

    def check(self):
        """The counts of issue 10 (a dict): acknowledged, lost, dup2,
        dup1 (QoS 1 redeliveries, allowed), misorder (outside the fault
        windows), misorder_in_windows, sessions_lost, errors, and samples."""
        r = {"acknowledged": self.acked_count(), "lost": 0, "dup2": 0, "dup1": 0,
             "misorder": 0, "misorder_in_windows": 0,
             "sessions_lost": sum(s.sessions_lost for s in self.subscribers),
             "errors": list(self.errors), "samples": [], "lost_acked_at": []}
        pubs = {p.cid: p for p in self.publishers}
        for s in self.subscribers:
            seen = {}
            first = {}
            last = {}
            for i, (pub, seq, qos, t) in enumerate(s.got):
                key = (pub, seq)
                seen[key] = seen.get(key, 0) + 1
                first.setdefault(key, i)
                if seen[key] > 1:
                    if min(pubs[pub].qos, s.qos) == 2:
                        r["dup2"] += 1
                        a, b = first[key], i
                        r["samples"].append(
                            f"{s.cid}: QoS 2 {pub}:{seq} delivered again (first via "
                            f"{s.via[a][0]} at {s.got[a][3] - self.t0:.1f} s, again via "
                            f"{s.via[b][0]} at {t - self.t0:.1f} s dup {s.via[b][1]})")
                    else:
                        r["dup1"] += 1
                    continue
                if pub in last and seq < last[pub]:
                    if self.in_window(t):
                        r["misorder_in_windows"] += 1
                    else:
                        r["misorder"] += 1
                        r["samples"].append(f"{s.cid}: {pub}:{seq} after {pub}:{last[pub]}")
                last[pub] = max(seq, last.get(pub, -1))
            for p in self.publishers:
                lost = [seq for seq, _ in p.acked if (p.cid, seq) not in seen]
                r["lost_acked_at"] += [t for seq, t in p.acked if (p.cid, seq) not in seen]
                r["lost"] += len(lost)
                if lost:
                    r["samples"].append(f"{s.cid}: {len(lost)} acknowledged of {p.cid} lost: "
                                        f"{_ranges(lost)}")
        return r

    def wall(self, t):
        """A monotonic time as the nodes' logs write it (UTC, ms)."""
        w = self.t0_wall + (t - self.t0)
        return time.strftime("%H:%M:%S", time.gmtime(w)) + f".{int(w * 1000) % 1000:03d}"

    def dump(self, path):
        """Everything check() counts from, with wall-clock times, to read
        beside the nodes' logs: per subscriber its events and, for each
        acknowledged message it lacks or got twice, when it was acknowledged
        and on which node its publisher was then."""
        with open(path, "w") as f:
            for c in self.subscribers + self.publishers:
                f.write(f"== {c.cid}\n")
                for t, what, node, detail in c.events:
                    f.write(f"  {self.wall(t)} {what} {node} {detail}\n")
            for s in self.subscribers:
                count = {}
                for i, (pub, seq, qos, t) in enumerate(s.got):
                    count.setdefault((pub, seq), []).append(
                        f"{self.wall(t)} via {s.via[i][0]} dup {s.via[i][1]}")
                held = [f"{m.mid}:{m.payload.decode(errors='replace')}"
                        for m in list(s.c._in_messages.values())]
                f.write(f"== {s.cid}: paho holds awaiting PUBREL: {', '.join(held)}\n")
                f.write(f"== {s.cid}: lost / duplicated\n")
                for p in self.publishers:
                    for seq, t in p.acked:
                        got = count.get((p.cid, seq), [])
                        if len(got) != 1 and not (len(got) > 1 and p.qos == 1):
                            where = [n for tt, what, n, _ in p.events
                                     if what == "connected" and tt <= t]
                            f.write(f"  {p.cid}:{seq} acked {self.wall(t)} "
                                    f"(publisher on {where[-1] if where else p.home}) "
                                    f"got {len(got)}: {'; '.join(got)}\n")

    def owners_ok(self, cluster_tables):
        """Every subscriber connected on one node, and the registry (equal
        on every node) naming that node: no client id with two owners.
        Returns a list of problems."""
        from faults import node_id, node_of_id
        problems = []
        for s in self.subscribers:
            if s.node is None:
                problems.append(f"{s.cid} is not connected")
                continue
            rec = cluster_tables["registry"].get(s.cid)
            if rec is None or rec[0] != node_id(s.node):
                problems.append(f"{s.cid} is connected on {s.node.name} but the registry says "
                                f"{node_of_id(self.cluster, rec[0]) if rec else None}")
        return problems
