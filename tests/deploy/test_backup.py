"""The backup procedure of docs/deploy.md, for real: `mdb_copy -c` of a running
node's data directory, restored into an empty directory, serves what the
original held (a retained message and a persistent session's queued message)."""

import os
import shutil

import pytest

from conftest import Node, can_connect, clean_env, free_port, run, wait_for


def start(binary, data, port):
    env = clean_env({"STARLING_DATA_DIR": data, "STARLING_BIND_ADDRESS": "127.0.0.1",
                     "STARLING_PORT": str(port), "STARLING_WORKERS": "1"})
    n = Node(binary, env, os.path.dirname(data), name=os.path.basename(data))
    wait_for(lambda: not n.alive() or can_connect("127.0.0.1", port), 20, "starling to listen")
    assert n.alive(), n.stderr()
    return n


def test_online_backup_with_mdb_copy_restores(install_tree, tmp_path):
    if not shutil.which("mdb_copy"):
        pytest.fail("mdb_copy missing: lmdb-utils is in the Makefile's PACKAGES")
    binary = os.path.join(install_tree, "bin", "starling")
    live, backup, restored = (str(tmp_path / d) for d in ("live", "backup", "restored"))
    os.mkdir(backup)
    port = free_port()
    node = start(binary, live, port)
    try:
        pub = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1"]
        run(pub + ["-r", "-t", "backup/retained", "-m", "kept"], timeout=20)
        # A persistent session (clean session off) subscribed, then offline:
        # the next QoS 1 message is queued for it in the store.
        run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-i", "backup-client",
             "-c", "-q", "1", "-t", "backup/queued", "-E"], timeout=20)
        run(pub + ["-t", "backup/queued", "-m", "queued while offline"], timeout=20)
        # The copy is taken while the node runs.
        run(["mdb_copy", "-c", live, backup], timeout=60)
        assert node.alive()
    finally:
        assert node.stop() == 0, node.stderr()
    assert os.listdir(backup) == ["data.mdb"]
    shutil.copytree(backup, restored)
    port2 = free_port()
    node = start(binary, restored, port2)
    try:
        got = run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port2), "-t", "backup/retained",
                   "-C", "1", "-W", "10"], timeout=20)
        assert got.stdout == "kept\n"
        got = run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port2), "-i", "backup-client",
                   "-c", "-q", "1", "-t", "backup/queued", "-C", "1", "-W", "10"], timeout=20)
        assert got.stdout == "queued while offline\n"
    finally:
        assert node.stop() == 0, node.stderr()
