"""The divergence detector acts (issue 9, item 8): a node whose replicated
tables differ from the leader's and a majority's is told to rebuild, leaves
the cluster, exits with status 75, and - started again, as its supervisor
would - sets its tables aside and joins again from the leader, equal to
the others.

The difference is made on purpose: with STARLING_TEST_CORRUPT_TABLES (debug
builds only) a node writes a registry record outside any Raft entry when it
starts, so its checksum after every entry differs from its peers'."""

import os
import threading

import paho.mqtt.client as mqtt

from conftest import ADDRS, WAIT, settled, wait_for


def test_a_diverged_node_is_rebuilt_from_the_leader_and_rejoins(cluster_factory):
    c = cluster_factory()
    n3 = c.nodes[2]
    plain_env = n3.env
    n3.env = lambda: {**plain_env(), "STARLING_TEST_CORRUPT_TABLES": "1"}
    c.start()

    # n3 is told to rebuild and stops itself with status 75.
    wait_for(lambda: n3.proc.poll() is not None, 60, "the diverged node to stop itself")
    assert n3.proc.returncode == 75, n3.logtext()[-3000:]
    log = n3.logtext()
    assert "a record written outside Raft" in log
    assert "DIVERGENCE" in log and "rebuilding" in log
    told = [n.name for n in c.nodes[:2] if "told it to rebuild" in n.logtext()]
    assert told, "no leader told n3 to rebuild"
    assert n3.stop() == 75

    # Its supervisor starts it again, without the fault.
    n3.env = plain_env
    n3.start()
    want = {n.name: n.host for n in c.nodes}
    wait_for(lambda: settled(c.nodes, want), 60, "n3 back as a voter on every node")
    wait_for(lambda: all(n.health() == 200 for n in c.nodes), WAIT, "all healthy")
    cl = os.path.join(n3.dir, "cluster")
    assert os.path.isdir(os.path.join(cl, "fsm.diverged"))
    assert os.path.isdir(os.path.join(cl, "raft.diverged"))
    assert not os.path.exists(os.path.join(cl, "REBUILD"))
    wait_for(lambda: not os.path.exists(os.path.join(cl, "NO_BOOTSTRAP")), WAIT,
             "n3 to count itself a member again")
    # The rebuilt tables are the cluster's: the leader's detector, which
    # compares every node's checkpoint each second, finds nothing more.
    before = {n.name: n.logtext().count("told it to rebuild") for n in c.nodes}
    leader_doc = c.nodes[0].http("GET", "/api/v1/cluster")[1]
    leader = next(n for n in c.nodes if n.name == leader_doc["leader"])
    n3_checked = leader.logtext().count("told it to rebuild")
    # Wait for several rounds of checkpoints after the restart.
    rx_got, sub_ok = [], threading.Event()
    sub = mqtt.Client(client_id="div-sub", protocol=mqtt.MQTTv311)
    sub.on_subscribe = lambda *a: sub_ok.set()
    got = threading.Event()
    sub.on_message = lambda cl_, u, m: (rx_got.append(m.payload), got.set())
    sub.connect(n3.host, c.mqtt_port)
    sub.loop_start()
    try:
        sub.subscribe("div/t", qos=1)
        assert sub_ok.wait(WAIT)
        pub = mqtt.Client(client_id="div-pub", protocol=mqtt.MQTTv311)
        pub.connect(ADDRS[0], c.mqtt_port)
        pub.loop_start()
        pub.publish("div/t", b"after the rebuild", qos=1).wait_for_publish(10)
        assert got.wait(WAIT), "a publish on n1 did not reach n3's subscriber"
        assert rx_got == [b"after the rebuild"]
        pub.loop_stop()
        pub.disconnect()
    finally:
        sub.loop_stop()
        sub.disconnect()
    st, stats = n3.http("GET", "/api/v1/health", auth=False)
    assert st == 200, stats
    after = {n.name: n.logtext().count("told it to rebuild") for n in c.nodes}
    assert after == before and leader.logtext().count("told it to rebuild") == n3_checked
