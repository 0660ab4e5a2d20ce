"""What a paho client receives, packet by packet, for following one lost or
duplicated message (issue 10). Off unless STARLING_TEST_PAHO_TRACE names a
directory: then `maybe_trace(client, name)` writes <dir>/<name>.trace with a
line per PUBLISH received (packet id, DUP, QoS, the payload's first 32
bytes, a traffic.py payload whole, and, for QoS 2, what paho held at that
packet id awaiting PUBREL: a PUBLISH with a packet id paho still holds
replaces that message), per PUBREL (the message
paho hands over, or UNKNOWN: paho answers PUBCOMP without a message) and
per CONNACK (what paho holds awaiting PUBREL when the connection starts).
Times are time.monotonic(), then the wall clock's HH:MM:SS.mmm (UTC, as
the nodes' logs). Wraps paho 1.6's packet handlers (Debian's
python3-paho-mqtt); a diagnostic, not used by any assertion."""

import os
import struct
import time


def maybe_trace(client, name, sent=False):
    """client: a paho mqtt.Client. Returns the path written, or None.
    sent: also what it sends (PUBLISH with its DUP flag, PUBREL) and the
    acknowledgements it gets (PUBREC, PUBACK / PUBCOMP), for a publisher."""
    d = os.environ.get("STARLING_TEST_PAHO_TRACE")
    if not d:
        return None
    path = os.path.join(d, f"{name}.trace")
    out = open(path, "a", buffering=1)
    c = client
    on_publish, on_pubrel, on_connack = c._handle_publish, c._handle_pubrel, c._handle_connack

    def stamp():
        t = time.time()
        wall = time.strftime("%H:%M:%S", time.gmtime(t))
        return f"{time.monotonic():.3f} {wall}.{int(t * 1000) % 1000:03d}"

    def head(m):
        return repr(m.payload[:32]) if m is not None else "UNKNOWN"

    def publish():
        pkt, cmd = c._in_packet["packet"], c._in_packet["command"]
        qos, dup = (cmd & 6) >> 1, (cmd & 8) >> 3
        tlen, = struct.unpack("!H", pkt[:2])
        mid = struct.unpack("!H", pkt[2 + tlen:4 + tlen])[0] if qos else 0
        held = c._in_messages.get(mid) if qos == 2 else None
        rc = on_publish()
        now = c._in_messages.get(mid) if qos == 2 else None
        out.write(f"{stamp()} PUBLISH m{mid} d{dup} q{qos} "
                  f"{head(now) if qos == 2 else ''}"
                  f"{' replaces ' + head(held) if held is not None else ''}\n")
        return rc

    def pubrel():
        mid, = struct.unpack("!H", c._in_packet["packet"][:2])
        out.write(f"{stamp()} PUBREL m{mid} {head(c._in_messages.get(mid))}\n")
        return on_pubrel()

    def connack():
        held = [(k, v.payload[:32]) for k, v in c._in_messages.items()]
        out.write(f"{stamp()} CONNACK holding {held}\n")
        return on_connack()

    c._handle_publish, c._handle_pubrel, c._handle_connack = publish, pubrel, connack
    if sent:
        send_publish, send_pubrel = c._send_publish, c._send_pubrel
        on_pubrec, on_ackcomp = c._handle_pubrec, c._handle_pubackcomp

        def sent_publish(mid, topic, payload=b"", qos=0, retain=False, dup=False, *a, **kw):
            out.write(f"{stamp()} SENT PUBLISH m{mid} d{int(bool(dup))} q{qos} "
                      f"{bytes(payload)[:32]!r}\n")
            return send_publish(mid, topic, payload, qos, retain, dup, *a, **kw)

        def sent_pubrel(mid):
            out.write(f"{stamp()} SENT PUBREL m{mid}\n")
            return send_pubrel(mid)

        def ack_mid():
            return struct.unpack("!H", c._in_packet["packet"][:2])[0]

        def pubrec():
            out.write(f"{stamp()} PUBREC m{ack_mid()}\n")
            return on_pubrec()

        def ackcomp(cmd):
            out.write(f"{stamp()} {cmd} m{ack_mid()}\n")
            return on_ackcomp(cmd)

        c._send_publish, c._send_pubrel = sent_publish, sent_pubrel
        c._handle_pubrec, c._handle_pubackcomp = pubrec, ackcomp
    return path
