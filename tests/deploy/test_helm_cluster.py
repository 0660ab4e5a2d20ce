"""The chart's pods, for real: render the chart for 3 replicas and start three
local starling nodes with the environment and arguments the rendered pods get,
then check they form one cluster and pass their probes.

What differs from a pod, and why (everything else is taken from the rendered
StatefulSet as it is):
* each pod has its own network namespace and IP; here each node has its own
  loopback address (127.0.14.1-3): `status.podIP` and `STARLING_BIND_ADDRESS`
  become that address;
* the ports are free ports of this machine (the same on every node, as in the
  pods), not the fixed defaults other tests on this machine might use;
* the pods' stable names under the headless Service (`cluster_advertise` and
  `cluster_seeds`) are resolved by a hosts file that maps each name to its
  node's address, bind-mounted on /etc/hosts in a mount namespace of each
  node (`unshare -m`, as root); where namespaces are not available, the names
  in the environment are replaced by the addresses they would resolve to;
* `/data` is a scratch directory per node; `workers` is 1 (2 shared cores).

The binary must have the cluster (issue 9) and the admin API for this: until
it accepts `cluster_seeds` and `admin_port`, the test skips and says so."""

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from conftest import Node, clean_env, run, test_ports, wait_for

ADDRS = ["127.0.14.1", "127.0.14.2", "127.0.14.3"]
SECRETS = {("starling-cluster", "cluster-secret"): "test-cluster-secret",
           ("starling-admin", "api-key"): "admin:test-secret"}
PORT_VARS = ("STARLING_PORT", "STARLING_ADMIN_PORT", "STARLING_CLUSTER_PORT",
             "STARLING_RAFT_PORT")


def pod_env(sts, ordinal, ip, ports, secrets):
    """The environment of pod `ordinal` of the rendered StatefulSet, with the
    local substitutions listed in the module docstring."""
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert "command" not in c and "args" not in c, "the image's ENTRYPOINT, no arguments"
    pod_name = f"{sts['metadata']['name']}-{ordinal}"
    env = {}
    for e in c["env"]:
        if "value" in e:
            # $(VAR) names a variable defined before it (the kubelet's expansion)
            env[e["name"]] = re.sub(r"\$\(([A-Z_]+)\)", lambda m: env[m.group(1)], e["value"])
            continue
        src = e["valueFrom"]
        if "fieldRef" in src:
            env[e["name"]] = {"metadata.name": pod_name, "status.podIP": ip}[
                src["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            env[e["name"]] = secrets[(ref["name"], ref["key"])]
        else:
            raise AssertionError(f"unexpected valueFrom {src}")
    env["STARLING_BIND_ADDRESS"] = ip
    env.update({k: str(ports[k]) for k in PORT_VARS})
    env["STARLING_WORKERS"] = "1"
    return pod_name, env


def pod_fqdn(sts, ordinal):
    """The stable DNS name the headless Service gives pod `ordinal`."""
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    adv = next(e["value"] for e in c["env"] if e["name"] == "STARLING_CLUSTER_ADVERTISE")
    return adv.replace("$(STARLING_NODE_NAME)", f"{sts['metadata']['name']}-{ordinal}")


def namespaces_work():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


def names_to_addresses(env, names):
    """The fallback without mount namespaces: every pod name in the
    environment replaced by its address."""
    out = dict(env)
    for k, v in out.items():
        for name, ip in names.items():
            v = v.replace(name, ip)
        out[k] = v
    return out


def free_ports_on_all(addrs, names):
    """One port per name, free on every address (tests/ports.py reserves
    them for this process)."""
    del addrs  # reserve() takes ports free on every address
    return dict(zip(names, test_ports.reserve(len(names))))


def rendered_sts(render):
    r = render([], {"replicaCount": 3, "cluster.secret.existingSecret": "starling-cluster",
                    "admin.apiKey.existingSecret": "starling-admin"})
    return r.one("StatefulSet", "starling")


def test_pod_env_is_the_rendered_env_with_only_the_local_substitutions(render):
    """The stand-in for the pods changes exactly what the docstring says."""
    sts = rendered_sts(render)
    ports = {k: 20000 + i for i, k in enumerate(PORT_VARS)}
    name, env = pod_env(sts, 2, ADDRS[2], ports, SECRETS)
    assert name == "starling-2"
    assert env["STARLING_NODE_NAME"] == "starling-2"
    assert env["STARLING_CLUSTER_ADDRESS"] == ADDRS[2] == env["STARLING_BIND_ADDRESS"]
    assert env["STARLING_CLUSTER_SECRET"] == "test-cluster-secret"
    assert env["STARLING_API_KEY"] == "admin:test-secret"
    domain = "starling-headless.mqtt.svc.cluster.local"
    assert env["STARLING_CLUSTER_ADVERTISE"] == f"starling-2.{domain}" == pod_fqdn(sts, 2)
    assert env["STARLING_CLUSTER_SEEDS"] == ",".join(f"starling-{i}.{domain}" for i in range(3))
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    rendered = {e["name"] for e in c["env"]}
    changed = {"STARLING_CLUSTER_ADVERTISE", "STARLING_BIND_ADDRESS", "STARLING_WORKERS",
               *PORT_VARS}
    for e in c["env"]:
        if "value" in e and e["name"] not in changed:
            assert env[e["name"]] == e["value"], e["name"]
    assert set(env) == rendered
    fallback = names_to_addresses(env, {pod_fqdn(sts, i): a for i, a in enumerate(ADDRS)})
    assert fallback["STARLING_CLUSTER_SEEDS"] == ",".join(ADDRS)
    assert fallback["STARLING_CLUSTER_ADVERTISE"] == ADDRS[2]


def binary_lacks(binary, key, value):
    """True when the binary refuses `key` as unknown. A config file with the
    key on line 1 and an invalid port on line 2 makes the node exit at once
    either way: on line 1 if it does not know the key, on line 2 if it does."""
    d = tempfile.mkdtemp(prefix="starling-probe-")
    try:
        conf = os.path.join(d, "probe.conf")
        with open(conf, "w") as f:
            f.write(f"{key} {value}\nport 0\n")
        p = run([binary, "-c", conf], check=False, timeout=20, cwd=d, env=clean_env())
        assert p.returncode != 0, "port 0 must be refused"
        if f"unknown key '{key}'" in p.stderr:
            return True
        assert ":2:" in p.stderr and "'port'" in p.stderr, p.stderr
        return False
    finally:
        shutil.rmtree(d, ignore_errors=True)


def http_get(url, timeout=2, api_key=None):
    """(status, body) of GET url; with api_key, as HTTP Basic KEY:SECRET."""
    req = urllib.request.Request(url)
    if api_key:
        req.add_header("Authorization", "Basic " + base64.b64encode(api_key.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def strings_in(doc):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield str(k)
            yield from strings_in(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from strings_in(v)
    else:
        yield str(doc)


def test_three_rendered_pods_form_one_cluster_and_pass_their_probes(render, release_build):
    binary = os.environ.get("STARLING_TEST_BIN") or os.path.join(release_build, "node",
                                                                  "starling")
    missing = [k for k, v in (("cluster_seeds", "127.0.0.1:4370"), ("admin_port", "18083"))
               if binary_lacks(binary, k, v)]
    if missing:
        pytest.skip(f"{binary} does not know {', '.join(missing)} yet: the cluster (issue 9) "
                    "and the admin API are not merged")
    sts = rendered_sts(render)
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    ready = c["readinessProbe"]["httpGet"]
    live = c["livenessProbe"]["httpGet"]
    ports = free_ports_on_all(ADDRS, PORT_VARS)
    admin = ports["STARLING_ADMIN_PORT"]
    root = tempfile.mkdtemp(prefix="starling-pods-")
    names = {pod_fqdn(sts, i): ip for i, ip in enumerate(ADDRS)}
    hosts = os.path.join(root, "hosts")
    with open(hosts, "w") as f:
        f.writelines(f"{ip} {name}\n" for name, ip in names.items())
    in_namespaces = namespaces_work()
    if not in_namespaces:
        print("no mount namespaces here: the pods' names are replaced by their addresses")
    nodes = []
    try:
        for i, ip in enumerate(ADDRS):
            name, env = pod_env(sts, i, ip, ports, SECRETS)
            data = os.path.join(root, name)
            os.makedirs(data)
            env["STARLING_DATA_DIR"] = data
            if in_namespaces:
                nodes.append(Node("unshare", clean_env(env), data, name=name,
                                  args=["-m", "sh", "-c",
                                        'mount --bind "$0" /etc/hosts && exec "$1"', hosts,
                                        binary]))
            else:
                nodes.append(Node(binary, clean_env(names_to_addresses(env, names)), data,
                                  name=name))

        def all_ready():
            for n in nodes:
                assert n.alive(), f"{n.name} exited:\n{n.stderr()}"
            return all(http_get(f"http://{ip}:{admin}{ready['path']}")[0] == 200 for ip in ADDRS)

        try:
            wait_for(all_ready, 90, "three nodes to answer 200 on the readiness probe")
        except pytest.fail.Exception as e:
            pytest.fail(f"{e}\n" + "\n".join(f"--- {n.name}\n{n.stderr()[-3000:]}"
                                               for n in nodes))
        for ip in ADDRS:
            assert http_get(f"http://{ip}:{admin}{live['path']}")[0] == 200
        # One cluster: every node names all three pods. A node is ready once
        # it serves with a leader; the membership it lists completes as the
        # joins are applied, so this waits (bounded) for all three names.
        key = SECRETS[("starling-admin", "api-key")]
        views = {}

        def one_cluster():
            for ip in ADDRS:
                # the probes are open; the cluster view needs the API key
                assert http_get(f"http://{ip}:{admin}/api/v1/cluster")[0] == 401
                status, body = http_get(f"http://{ip}:{admin}/api/v1/cluster", api_key=key)
                assert status == 200, body
                views[ip] = body
            return all({f"starling-{i}" for i in range(3)} <= set(strings_in(json.loads(b)))
                       for b in views.values())

        try:
            wait_for(one_cluster, 60, "every node to list the three pods")
        except pytest.fail.Exception as e:
            pytest.fail(f"{e}\n{views}\n" + "\n".join(f"--- {n.name}\n{n.stderr()[-3000:]}"
                                                      for n in nodes))
        # A message published on the last node reaches a subscriber on the first.
        port = ports["STARLING_PORT"]
        got, subscribed = [], threading.Event()
        arrived = threading.Event()
        sub = mqtt.Client(client_id="deploy-sub", protocol=mqtt.MQTTv311)
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.on_message = lambda cl, ud, m: (got.append(m.payload), arrived.set())
        sub.connect(ADDRS[0], port)
        sub.loop_start()
        try:
            sub.subscribe("deploy/cluster", qos=1)
            assert subscribed.wait(10), "no SUBACK"
            run(["mosquitto_pub", "-h", ADDRS[2], "-p", str(port), "-q", "1",
                 "-t", "deploy/cluster", "-m", "across nodes"], timeout=20)
            assert arrived.wait(10), "the message did not cross nodes"
            assert got == [b"across nodes"]
        finally:
            sub.loop_stop()
            sub.disconnect()
    finally:
        codes = [n.stop(timeout=30) for n in nodes]
        errs = {n.name: n.stderr() for n in nodes}
        shutil.rmtree(root, ignore_errors=True)
    assert codes == [0, 0, 0], errs
