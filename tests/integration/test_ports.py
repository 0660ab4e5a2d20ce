"""The harness's ports (tests/ports.py): what the brokers of one test are
given cannot be taken by another test process or by a client connection
between the pick and the broker's bind.

Before, free_port() bound port 0 and closed the socket: an ephemeral port,
which the kernel could hand to any connect() or bind(0) on the machine
before the broker bound it (test_frontdoor's TLS port was taken that way in
a whole `make test` run).
"""

import os
import socket
import subprocess
import sys

from conftest import free_port

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ephemeral_range():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = (int(x) for x in f.read().split())
    return lo, hi


def test_free_ports_are_outside_the_ephemeral_range():
    lo, hi = ephemeral_range()
    got = [free_port() for _ in range(50)]
    inside = [p for p in got if lo <= p <= hi]
    assert not inside, f"{len(inside)} of 50 ports in the ephemeral range {lo}-{hi}: {inside[:5]}"
    assert len(set(got)) == 50
    assert not set(got) & {1883, 4370, 4371, 18083}


def test_client_connections_never_get_a_free_port():
    """Outgoing connections (every test's clients, the cluster nodes' own
    links) take ephemeral ports: never one free_port() can give."""
    lo, hi = ephemeral_range()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(256)
    conns = []
    try:
        for _ in range(200):
            conns.append(socket.create_connection(srv.getsockname(), timeout=5))
        local = {c.getsockname()[1] for c in conns}
    finally:
        for c in conns:
            c.close()
        srv.close()
    assert all(lo <= p <= hi for p in local)
    mine = free_port()
    assert mine not in local and not lo <= mine <= hi


def test_another_test_process_never_gets_a_port_this_test_holds():
    held = {free_port() for _ in range(20)}
    # another pytest session's free_port(), 2,000 times: disjoint from ours
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import ports; "
            "print(' '.join(str(p) for p in ports.reserve(2000)))")
    r = subprocess.run([sys.executable, "-c", code, TESTS], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    theirs = {int(p) for p in r.stdout.split()}
    assert len(theirs) == 2000
    assert not held & theirs, sorted(held & theirs)
    # the reservation dies with its process: nothing is left on disk or
    # in the kernel to clean up, and the ports can be had again
    import ports
    for p in sorted(theirs)[:20]:
        s = ports._claim(p)
        assert s is not None, p
        s.close()
