"""Ports for the nodes the tests start, without races between test processes.

`make test` runs several pytest sessions at once (integration with 1 and 2
broker workers, cluster, each with pytest-xdist workers), and other runs may
share the machine. The old way to pick a port, bind port 0 and close the
socket, hands out an *ephemeral* port, and between that pick and the node's
bind any process may be given the same port: another session's pick, or the
local port of any outgoing connection (every MQTT client of every test, and
the cluster nodes' own connections, which bind 127.0.0.x:0). The node then
exits "address already in use" (a TLS port taken this way failed
test_frontdoor once in a whole run).

Here a port is chosen outside the kernel's ephemeral range
(/proc/sys/net/ipv4/ip_local_port_range), which bind(0) and connect() never
hand out, and is reserved for the process that took it by an abstract Unix
socket named after it ("\\0starling-test-port-N", one name space for the
whole machine): a second process cannot bind the same name, and the kernel
drops the name when the socket is closed or its process dies, so no file is
left behind and no reservation outlives a killed run. A port is taken only
if nothing is bound to it on any address at that moment (a node started
outside the tests on a fixed port is passed over).

A reservation lasts until release() (the fixtures, when they stop their
nodes) or the end of the test (tests/conftest.py releases every port a test
took), or for a script outside pytest (chaos.py) until it exits.
"""

import os
import random
import socket
import threading

# Starling's default ports, never handed out (a developer's own node may use
# them at any time): MQTT, cluster channel, Raft, admin API.
DEFAULT_PORTS = {1883, 4370, 4371, 18083}
LOWEST = 10000
HIGHEST = 65535

_lock = threading.Lock()
_held = {}  # port -> the abstract socket that reserves it
_cursor = None


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _reserved_by_kernel():
    """ip_local_reserved_ports: left to whoever reserved them."""
    out = set()
    try:
        with open("/proc/sys/net/ipv4/ip_local_reserved_ports") as f:
            text = f.read().strip()
    except OSError:
        return out
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def candidates():
    """The ports this module hands out: LOWEST..HIGHEST outside the ephemeral
    range (the whole of it when the ephemeral range covers everything)."""
    lo, hi = _ephemeral_range()
    skip = DEFAULT_PORTS | _reserved_by_kernel()
    out = [p for p in range(LOWEST, HIGHEST + 1) if not lo <= p <= hi and p not in skip]
    if len(out) < 1000:
        out = [p for p in range(LOWEST, HIGHEST + 1) if p not in skip]
    return out


_CANDIDATES = candidates()


def _claim(port):
    """The abstract socket that reserves port for this process, or None when
    another process holds it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(f"\0starling-test-port-{port}")
    except OSError:
        s.close()
        return None
    return s


def _unbound(port):
    """Nothing is bound to port on any IPv4 address: a bind of 0.0.0.0:port
    without SO_REUSEADDR fails if any socket has the port on any address
    (listening, connected, or in TIME_WAIT)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("0.0.0.0", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def reserve(n=1):
    """n distinct ports, reserved for this process until release(); raises
    RuntimeError if the whole range is taken."""
    global _cursor
    got = []
    with _lock:
        if _cursor is None:
            # each process starts somewhere else: parallel sessions seldom
            # try the same port (and when they do, the name decides)
            _cursor = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little")) \
                .randrange(len(_CANDIDATES))
        for _ in range(len(_CANDIDATES)):
            if len(got) == n:
                break
            port = _CANDIDATES[_cursor]
            _cursor = (_cursor + 1) % len(_CANDIDATES)
            if port in _held:
                continue
            s = _claim(port)
            if s is None:
                continue
            if not _unbound(port):
                s.close()
                continue
            _held[port] = s
            got.append(port)
    if len(got) < n:
        release(*got)
        raise RuntimeError(f"ports.reserve: fewer than {n} free ports")
    return got


def release(*ports):
    """Give the ports back (to any process); unknown ones are ignored."""
    with _lock:
        for p in ports:
            s = _held.pop(p, None)
            if s is not None:
                s.close()


def release_all():
    with _lock:
        held = list(_held.values())
        _held.clear()
    for s in held:
        s.close()


def held():
    """The ports this process holds now."""
    with _lock:
        return sorted(_held)
