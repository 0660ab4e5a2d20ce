"""The Helm chart helm/starling: helm lint, helm template with the defaults and
with every values file in helm/starling/ci/, and assertions on the rendered
objects (the fields issue 14 names), plus offline schema validation of every
object against the Kubernetes API schemas (kubernetes-models, from npm)."""

import json
import os
import re
import subprocess

import pytest
import yaml

from conftest import CHART, HERE, ROOT, ci_values_files, run

CI = {os.path.basename(f)[: -len("-values.yaml")]: f for f in ci_values_files()}
RELEASE, NAMESPACE = "starling", "mqtt"
FULL, HEADLESS = "starling", "starling-headless"

# Configuration keys the chart may set: those documented today, and those of
# the cluster (issue 9), admin API and security (issue 11) work.
NEW_KEYS = {
    "node_name", "cluster_address", "cluster_advertise", "cluster_port", "raft_port",
    "cluster_seeds", "cluster_dns", "cluster_secret", "admin_port", "api_key", "tls_port", "ws_port",
    "wss_port", "tls_certfile", "tls_keyfile", "tls_cafile", "tls_require_certificate",
    "password_file", "acl_file", "allow_anonymous", "proxy_protocol",
}


def documented_keys():
    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        return set(re.findall(r"^\| `([a-z_]+)` \| `STARLING_", f.read(), re.M))


KNOWN_KEYS = documented_keys() | NEW_KEYS


# ---- helpers on rendered objects ------------------------------------------

def sts_of(r):
    return r.one("StatefulSet", FULL)


def pod_spec(r):
    return sts_of(r)["spec"]["template"]["spec"]


def container(r):
    (c,) = pod_spec(r)["containers"]
    return c


def env_of(r):
    """name -> value or valueFrom of the starling container."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(r)["env"]}


def container_ports(r):
    return {p["name"]: p["containerPort"] for p in container(r)["ports"]}


def service_ports(svc):
    return {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def mount_path_of_secret_item(r, secret_name, key):
    """The file path at which the pod sees `key` of Secret `secret_name`."""
    vols = {v["name"]: v for v in pod_spec(r)["volumes"]}
    for m in container(r)["volumeMounts"]:
        v = vols.get(m["name"])
        if v and "secret" in v and v["secret"]["secretName"] == secret_name:
            for item in v["secret"].get("items", []):
                if item["key"] == key:
                    return os.path.join(m["mountPath"], item["path"])
    return None


# ---- lint and render -------------------------------------------------------

def test_helm_lint_strict_with_defaults_and_every_ci_values_file(helm):
    assert CI, "helm/starling/ci holds no *-values.yaml"
    run([helm, "lint", "--strict", CHART])
    for name, f in CI.items():
        p = run([helm, "lint", "--strict", CHART, "-f", f])
        assert "0 chart(s) failed" in p.stdout, name


def test_the_documented_sets_of_values_exist():
    assert {"aws-nlb", "gcp", "azure", "tls", "monitoring"} <= set(CI)


def test_defaults_render_the_objects_of_a_cluster(render):
    r = render()
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in r.objects)
    assert kinds == [
        ("PodDisruptionBudget", FULL),
        ("Secret", FULL + "-cluster"),
        ("Service", FULL),
        ("Service", HEADLESS),
        ("ServiceAccount", FULL),
        ("StatefulSet", FULL),
    ]


def test_statefulset_parallel_stable_names_and_a_volume_per_pod(render):
    r = render()
    sts = sts_of(r)
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == HEADLESS
    assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain", "whenScaled": "Retain"}
    mounts = {m["name"]: m["mountPath"] for m in container(r)["volumeMounts"]}
    assert mounts["data"] == "/data"
    assert env_of(r)["STARLING_DATA_DIR"] == "/data"
    # The claim is not shadowed by a pod volume of the same name.
    assert "data" not in {v["name"] for v in pod_spec(r)["volumes"]}


def test_pod_labels_match_the_selectors(render):
    r = render()
    sts = sts_of(r)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert selects(sts["spec"]["selector"]["matchLabels"], labels)
    for svc in r.all("Service"):
        assert selects(svc["spec"]["selector"], labels), svc["metadata"]["name"]
    assert selects(r.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)


def test_headless_service_gives_every_pod_a_stable_name_that_is_its_identity(render):
    r = render()
    h = r.one("Service", HEADLESS)
    assert h["spec"]["clusterIP"] == "None"
    assert h["spec"]["publishNotReadyAddresses"] is True
    ports = service_ports(h)
    assert ports["cluster"] == (4370, "cluster")
    assert ports["raft"] == (4371, "raft")
    assert ports["admin"] == (18083, "admin")
    env = env_of(r)
    domain = f"{HEADLESS}.{NAMESPACE}.svc.cluster.local"
    # The pod's stable name (after $(STARLING_NODE_NAME), the pod name, is
    # expanded by the kubelet) is its Raft identity; the seeds are the first
    # cluster.seedCount pods by the same names. No cluster_dns: its records
    # are pod IPs, which change when a pod restarts.
    names = [e["name"] for e in container(r)["env"]]
    assert names.index("STARLING_NODE_NAME") < names.index("STARLING_CLUSTER_ADVERTISE")
    assert env["STARLING_CLUSTER_ADVERTISE"] == f"$(STARLING_NODE_NAME).{domain}"
    assert env["STARLING_CLUSTER_SEEDS"] == ",".join(f"{FULL}-{i}.{domain}" for i in range(3))
    assert "STARLING_CLUSTER_DNS" not in env
    assert env["STARLING_CLUSTER_SECRET"] == {
        "secretKeyRef": {"name": FULL + "-cluster", "key": "cluster-secret"}}
    assert env["STARLING_CLUSTER_PORT"] == "4370"
    assert env["STARLING_RAFT_PORT"] == "4371"
    # Every port a Service targets by name is a port of the container.
    cports = container_ports(r)
    for svc in r.all("Service"):
        for name, (_, target) in service_ports(svc).items():
            assert target in cports, (svc["metadata"]["name"], name)


def test_client_service_is_cluster_ip_with_client_ports_only(render):
    svc = render().one("Service", FULL)
    assert svc["spec"]["type"] == "ClusterIP"
    assert service_ports(svc) == {"mqtt": (1883, "mqtt")}
    assert "annotations" not in svc["metadata"]


def test_node_identity_comes_from_the_pod(render):
    env = env_of(render())
    assert env["STARLING_NODE_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["STARLING_CLUSTER_ADDRESS"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["STARLING_BIND_ADDRESS"] == "0.0.0.0"
    assert env["STARLING_PORT"] == "1883"
    assert env["STARLING_ADMIN_PORT"] == "18083"


@pytest.mark.parametrize("values", ["default"] + sorted(CI))
def test_every_variable_names_a_configuration_key(render, values):
    r = render([CI[values]] if values != "default" else [])
    for name, value in env_of(r).items():
        assert name.startswith("STARLING_"), name
        key = name[len("STARLING_"):].lower()
        assert key in KNOWN_KEYS, f"{name}: no configuration key {key!r}"
        if isinstance(value, str):
            assert value != "", f"{name} is empty: the node refuses an empty value"


def test_probes_read_the_health_endpoint_on_the_admin_port(render):
    r = render()
    c = container(r)
    assert container_ports(r)["admin"] == 18083
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/api/v1/health", "port": "admin"}, probe
    # Liveness must not restart a cluster that is electing: it tolerates
    # minutes of 503 where readiness reacts in seconds.
    live, ready = c["livenessProbe"], c["readinessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 120
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 30


def test_pdb_allows_one_node_down(render):
    pdb = render().one("PodDisruptionBudget", FULL)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]


def test_soft_anti_affinity_across_nodes_and_zones(render):
    r = render()
    aa = pod_spec(r)["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in aa
    terms = {t["podAffinityTerm"]["topologyKey"]: t
             for t in aa["preferredDuringSchedulingIgnoredDuringExecution"]}
    assert set(terms) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    labels = sts_of(r)["spec"]["template"]["metadata"]["labels"]
    for t in terms.values():
        assert selects(t["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)


def test_hard_anti_affinity_requires_one_pod_per_node(render):
    aa = pod_spec(render(set_values={"antiAffinity": "hard"}))["affinity"]["podAntiAffinity"]
    (req,) = aa["requiredDuringSchedulingIgnoredDuringExecution"]
    assert req["topologyKey"] == "kubernetes.io/hostname"
    (pref,) = aa["preferredDuringSchedulingIgnoredDuringExecution"]
    assert pref["podAffinityTerm"]["topologyKey"] == "topology.kubernetes.io/zone"
    assert "affinity" not in pod_spec(render(set_values={"antiAffinity": "none"}))


def test_service_links_off_and_no_service_account_token(render):
    spec = pod_spec(render())
    assert spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is False


def test_non_root_read_only_root_filesystem(render):
    r = render()
    pod_sc, c_sc = pod_spec(r)["securityContext"], container(r)["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 10001
    assert pod_sc["fsGroup"] == 10001  # the data volume is writable by the node
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c_sc["readOnlyRootFilesystem"] is True
    assert c_sc["allowPrivilegeEscalation"] is False
    assert c_sc["capabilities"] == {"drop": ["ALL"]}
    # With a read-only root, /tmp is an emptyDir.
    mounts = {m["mountPath"]: m["name"] for m in container(r)["volumeMounts"]}
    vols = {v["name"]: v for v in pod_spec(r)["volumes"]}
    assert "emptyDir" in vols[mounts["/tmp"]]


def test_resources_requested(render):
    res = container(render())["resources"]
    assert res["requests"]["cpu"] == "500m" and res["requests"]["memory"] == "512Mi"
    assert res["limits"]["memory"] == "2Gi"


def test_graceful_rolling_update(render):
    r = render()
    spec = pod_spec(r)
    cmd = container(r)["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd == ["/bin/sh", "-c", "sleep 15"]
    # SIGTERM comes after preStop; the grace period covers both.
    assert spec["terminationGracePeriodSeconds"] == 60
    assert sts_of(r)["spec"]["minReadySeconds"] == 10
    r2 = render(set_values={"preStopSleepSeconds": 40, "terminationGracePeriodSeconds": 120})
    assert container(r2)["lifecycle"]["preStop"]["exec"]["command"][-1] == "sleep 40"
    assert pod_spec(r2)["terminationGracePeriodSeconds"] == 120


def test_service_monitor_off_by_default_and_on_in_monitoring_values(render):
    assert render().all("ServiceMonitor") == []
    r = render([CI["monitoring"]])
    sm = r.one("ServiceMonitor", FULL)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "admin" and ep["path"] == "/metrics" and ep["interval"] == "15s"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # It selects the headless Service (every pod, ready or not), which has the
    # admin port, and not the client Service.
    chosen = [s for s in r.all("Service")
              if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in chosen] == [HEADLESS]
    assert "admin" in service_ports(chosen[0])


def test_aws_nlb_values(render):
    r = render([CI["aws-nlb"]])
    svc = r.one("Service", FULL)
    assert svc["spec"]["type"] == "LoadBalancer"
    a = svc["metadata"]["annotations"]
    assert a["service.beta.kubernetes.io/aws-load-balancer-type"] == "external"
    assert a["service.beta.kubernetes.io/aws-load-balancer-nlb-target-type"] == "ip"
    assert a["service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"] == "*"
    assert a["service.beta.kubernetes.io/aws-load-balancer-healthcheck-protocol"] == "HTTP"
    assert a["service.beta.kubernetes.io/aws-load-balancer-healthcheck-path"] == "/api/v1/health"
    assert int(a["service.beta.kubernetes.io/aws-load-balancer-healthcheck-port"]) == \
        container_ports(r)["admin"]
    assert service_ports(svc) == {"mqtt": (1883, "mqtt"), "mqtts": (8883, "mqtts")}
    env = env_of(r)
    # The NLB sends PROXY v2 on both ports, so both listeners expect it.
    assert env["STARLING_PROXY_PROTOCOL"] == "tcp,tls"
    assert env["STARLING_TLS_PORT"] == "8883"


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_gcp_and_azure_keep_client_addresses_without_proxy_protocol(render, cloud):
    r = render([CI[cloud]])
    svc = r.one("Service", FULL)
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert "STARLING_PROXY_PROTOCOL" not in env_of(r)
    a = svc["metadata"]["annotations"]
    if cloud == "gcp":
        assert a["cloud.google.com/l4-rbs"] == "enabled"
    else:
        assert a["service.beta.kubernetes.io/azure-load-balancer-internal"] == "false"
        assert a["service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout"] == "30"


def test_proxy_protocol_only_when_asked(render):
    assert "STARLING_PROXY_PROTOCOL" not in env_of(render())
    env = env_of(render(set_values={"proxyProtocol.enabled": True,
                                    "proxyProtocol.listeners": "tcp"}))
    assert env["STARLING_PROXY_PROTOCOL"] == "tcp"


def test_tls_auth_and_api_key_from_secrets(render):
    r = render([CI["tls"]])
    env = env_of(r)
    ports = container_ports(r)
    assert (ports["mqtts"], ports["ws"], ports["wss"]) == (8883, 8083, 8084)
    assert (env["STARLING_TLS_PORT"], env["STARLING_WS_PORT"], env["STARLING_WSS_PORT"]) == \
        ("8883", "8083", "8084")
    assert service_ports(r.one("Service", FULL)).keys() == {"mqtt", "mqtts", "ws", "wss"}
    # Each file variable names the file the Secret's key is mounted as.
    assert env["STARLING_TLS_CERTFILE"] == mount_path_of_secret_item(r, "starling-tls", "tls.crt")
    assert env["STARLING_TLS_KEYFILE"] == mount_path_of_secret_item(r, "starling-tls", "tls.key")
    assert env["STARLING_TLS_CAFILE"] == mount_path_of_secret_item(r, "starling-tls", "ca.crt")
    assert env["STARLING_TLS_REQUIRE_CERTIFICATE"] == "true"
    assert env["STARLING_PASSWORD_FILE"] == mount_path_of_secret_item(r, "starling-auth", "passwd")
    assert env["STARLING_ACL_FILE"] == mount_path_of_secret_item(r, "starling-auth", "acl")
    assert env["STARLING_ALLOW_ANONYMOUS"] == "false"
    assert env["STARLING_API_KEY"] == {"secretKeyRef": {"name": "starling-admin", "key": "api-key"}}
    assert env["STARLING_CLUSTER_SECRET"] == {
        "secretKeyRef": {"name": "starling-cluster", "key": "cluster-secret"}}
    mounts = [m for m in container(r)["volumeMounts"] if m["mountPath"].startswith("/etc/starling")]
    assert mounts and all(m["readOnly"] for m in mounts)
    # Without TLS none of it is there.
    env0 = env_of(render())
    assert not {k for k in env0 if k.startswith("STARLING_TLS")}
    assert "STARLING_API_KEY" not in env0 and "STARLING_PASSWORD_FILE" not in env0


def test_secrets_made_as_the_readme_says_have_the_keys_the_pods_read(render, kubectl, tmp_path):
    """Run the README's `kubectl create secret ... --dry-run=client` commands
    (offline) and check every Secret key the tls values reference is there."""
    with open(os.path.join(CHART, "README.md")) as f:
        cmds = [c.strip() for c in re.findall(r"^(kubectl create secret .*)$", f.read(), re.M)]
    assert len(cmds) >= 4, cmds
    for name in ("tls.crt", "tls.key", "ca.crt", "passwd", "acl"):
        (tmp_path / name).write_text("x\n")
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=starling", "-keyout", str(tmp_path / "tls.key"),
         "-out", str(tmp_path / "tls.crt")])
    secrets = {}
    for c in cmds:
        argv = c.split()
        p = run([kubectl] + argv[1:] + ["--dry-run=client", "-o", "yaml"], cwd=str(tmp_path),
                env=dict(os.environ, KUBECONFIG=os.devnull))
        s = yaml.safe_load(p.stdout)
        secrets[s["metadata"]["name"]] = set(s["data"])
    r = render([CI["tls"]])
    spec = pod_spec(r)
    for v in spec["volumes"]:
        if "secret" in v:
            have = secrets[v["secret"]["secretName"]]
            assert {i["key"] for i in v["secret"]["items"]} <= have, v["name"]
    for e in container(r)["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["key"] in secrets[ref["name"]], e["name"]


def test_production_values(render):
    r = render([CI["production"]])
    assert sts_of(r)["spec"]["replicas"] == 5
    aa = pod_spec(r)["affinity"]["podAntiAffinity"]
    assert aa["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == \
        "kubernetes.io/hostname"
    assert pod_spec(r)["topologySpreadConstraints"][0]["topologyKey"] == \
        "topology.kubernetes.io/zone"
    claim = sts_of(r)["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    env = env_of(r)
    # Integers from YAML reach the pod whole, not as 1e+06.
    assert env["STARLING_MAX_CONNECTIONS"] == "1000000"
    assert env["STARLING_SYNC"] == "interval 100"
    assert env["STARLING_WORKERS"] == "4"


def test_persistence_off_uses_an_empty_dir(render):
    r = render(set_values={"persistence.enabled": False})
    assert "volumeClaimTemplates" not in sts_of(r)["spec"]
    vols = {v["name"]: v for v in pod_spec(r)["volumes"]}
    assert vols["data"] == {"name": "data", "emptyDir": {}}


def test_storage_class_dash_means_no_class(render):
    claim = sts_of(render(set_values={"persistence.storageClass": "-"}))["spec"][
        "volumeClaimTemplates"][0]
    assert claim["spec"]["storageClassName"] == ""


@pytest.mark.parametrize("values, message", [
    ({"listeners.mqtts.enabled": True}, "need tls.enabled=true"),
    ({"tls.enabled": True, "listeners.mqtts.enabled": True}, "needs tls.existingSecret"),
    ({"replicaCount": 1}, "replicaCount must be at least cluster.seedCount"),
    ({"tls.enabled": True, "tls.existingSecret": "s"}, "neither listeners.mqtts nor"),
    ({"tls.enabled": True, "tls.existingSecret": "s", "listeners.mqtts.enabled": True,
      "tls.requireCertificate": True}, "needs tls.caKey"),
    ({"replicaCunt": 3}, "additional properties 'replicaCunt' not allowed"),
    ({"replicaCount": 0}, "minimum"),
    ({"logLevel": "verbose"}, "logLevel"),
    ({"proxyProtocol.listeners": "udp"}, "does not match pattern"),
    ({"config.Max-Connections": 5}, "invalid propertyName 'Max-Connections'"),
    ({"service.type": "ExternalName"}, "service/type"),
    ({"antiAffinity": "sometimes"}, "antiAffinity"),
])
def test_bad_values_are_refused_with_a_message(render, values, message):
    p = render(set_values=values, expect_error=True)
    assert p.returncode != 0
    assert message in p.stderr, p.stderr


# ---- schema validation of the objects --------------------------------------

def _validate(kube_models, objects):
    p = subprocess.run(["node", os.path.join(HERE, "validate-k8s.mjs"), kube_models],
                       input=json.dumps(objects), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=120)
    return p


@pytest.mark.parametrize("values", ["default", "no-persistence"] + sorted(CI))
def test_objects_match_the_kubernetes_api_schemas(render, kube_models, values):
    if values == "default":
        r = render()
    elif values == "no-persistence":
        r = render(set_values={"persistence.enabled": False})
    else:
        r = render([CI[values]])
    p = _validate(kube_models, r.objects)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("\nok ") + p.stdout.startswith("ok ") == len(r.objects)


def test_the_schema_validator_rejects_a_broken_object(render, kube_models):
    """The check above can fail: a StatefulSet with a string for replicas and a
    Service port out of range are refused."""
    r = render()
    sts, svc = sts_of(r), r.one("Service", FULL)
    sts["spec"]["replicas"] = "three"
    svc["spec"]["ports"][0]["port"] = "not-a-port"
    p = _validate(kube_models, [sts, svc])
    assert p.returncode == 1
    assert "invalid StatefulSet/starling" in p.stdout and "replicas" in p.stdout
    assert "invalid Service/starling" in p.stdout


# ---- documentation ---------------------------------------------------------

def _leaf_paths(d, schema, prefix=""):
    """Dotted paths of the values to document: down to the leaves, except in
    values the schema passes through to Kubernetes whole (resources,
    securityContext, ...), which are documented as one value."""
    for k, v in d.items():
        path = f"{prefix}{k}"
        sub = schema.get("properties", {}).get(k, {})
        if isinstance(v, dict) and v and "properties" in sub:
            yield from _leaf_paths(v, sub, path + ".")
        else:
            yield path


def test_every_value_is_documented_in_the_readme_and_the_schema():
    with open(os.path.join(CHART, "values.yaml")) as f:
        values = yaml.safe_load(f)
    with open(os.path.join(CHART, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(CHART, "values.schema.json")) as f:
        schema = json.load(f)
    missing = [p for p in _leaf_paths(values, schema) if f"`{p}`" not in readme]
    assert not missing, f"values not documented in helm/starling/README.md: {missing}"
    assert set(schema["properties"]) == set(values), "values.schema.json vs values.yaml"
    assert schema["additionalProperties"] is False


def test_chart_packages(helm, tmp_path):
    p = run([helm, "package", CHART, "-d", str(tmp_path)])
    (tgz,) = [f for f in os.listdir(tmp_path) if f.endswith(".tgz")]
    assert tgz == "starling-0.1.0.tgz", p.stdout
    names = run(["tar", "-tzf", str(tmp_path / tgz)]).stdout.split()
    for f in ("Chart.yaml", "values.yaml", "values.schema.json", "README.md",
              "templates/statefulset.yaml", "templates/NOTES.txt"):
        assert f"starling/{f}" in names, f
