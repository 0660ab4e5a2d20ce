#!/usr/bin/python3
"""hops.py DIR [DIR...] - the per-hop breakdown of latency bench runs recorded
by a STARLING_HOPTRACE build (node/hoptrace.h): every hops.* file of DIR,
joined per message on (sequence number, send time). Prints, per segment
between consecutive hops, its p50/p99/p99.9 over all messages and its mean
over the slowest 1 % (by end-to-end latency), in us."""
import collections
import glob
import sys

NAMES = {1: "read", 2: "decoded", 3: "chan_queued", 4: "chan_written",
         6: "chan_read", 7: "fwd", 8: "delivered", 9: "worker_turn", 10: "encoded",
         11: "sock_written", 12: "bench_recv", 13: "chan_flush"}


def pct(v, p):
    if not v:
        return 0
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


def main():
    msgs = collections.defaultdict(dict)
    loop = set()
    for d in sys.argv[1:]:
        for fn in glob.glob(d + "/hops.*"):
            with open(fn) as f:
                for line in f:
                    hop, seq, t, sent = map(int, line.split())
                    k = (seq, sent)
                    if hop == 5:  # left to the channel's loop: counted, taken as written
                        loop.add(k)
                        hop = 4
                    # the first record of a hop (a message has one per hop)
                    msgs[k].setdefault(hop, t)
    full = [m for k, m in msgs.items() if 12 in m]
    for k, m in msgs.items():
        m[0] = k[1]
    hops_seen = collections.Counter(h for m in full for h in m)
    seq = [0, 1, 2, 3, 13, 4, 6, 7, 8, 9, 10, 11, 12]
    order = [h for h in seq if hops_seen[h] == len(full) or h == 0]
    print("messages received: %d; hops on every one: %s; chan_loop on %d" % (
        len(full), " ".join(NAMES.get(h, "sent") for h in order), len(loop)))
    e2e = sorted(full, key=lambda m: m[12] - m[0])
    tail = e2e[int(len(e2e) * 0.99):]
    tail2 = e2e[int(len(e2e) * 0.999):]
    print("end to end p50 %.0f p99 %.0f p99.9 %.0f us" % (
        (e2e[len(e2e) // 2][12] - e2e[len(e2e) // 2][0]) / 1e3,
        (tail[0][12] - tail[0][0]) / 1e3, (tail2[0][12] - tail2[0][0]) / 1e3))
    print("%-28s %8s %8s %8s %12s %12s" % ("segment", "p50", "p99", "p99.9", "mean top1%",
                                          "mean top.1%"))
    for a, b in zip(order, order[1:]):
        seg = [(m[b] - m[a]) / 1e3 for m in full]
        st = [(m[b] - m[a]) / 1e3 for m in tail]
        st2 = [(m[b] - m[a]) / 1e3 for m in tail2]
        print("%-28s %8.0f %8.0f %8.0f %12.0f %12.0f" % (
            NAMES.get(a, "sent") + " -> " + NAMES[b], pct(seg, 50), pct(seg, 99),
            pct(seg, 99.9), sum(st) / len(st), sum(st2) / max(1, len(st2))))
    # which segment was the largest for each of the slowest 1 %
    big = collections.Counter()
    for m in tail:
        segs = [((m[b] - m[a]), NAMES.get(a, "sent") + " -> " + NAMES[b])
                for a, b in zip(order, order[1:])]
        big[max(segs)[1]] += 1
    print("largest segment of the slowest 1 %:", dict(big.most_common()))


if __name__ == "__main__":
    main()
