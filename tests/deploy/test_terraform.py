"""The cloud recipes deploy/terraform/{aws,gcp,azure}.

* `terraform fmt -check` on every file.
* `terraform validate` needs the providers, which `terraform init` downloads
  from the Terraform registry; this machine reaches no such registry, so that
  test tries once and skips, saying so, when init fails.
* Instead, every module is parsed with HashiCorp's HCL parser
  (@cdktf/hcl2json from npm) and checked: its variables, outputs and
  resources, every reference resolving, the load balancer (ports, PROXY
  protocol v2 where the cloud has it, health checks on /api/v1/health:18083),
  the firewall rules (client ports to the world, cluster ports between nodes
  only), the nodes across zones with a data disk, and the systemd unit
  delivered by cloud-init.
* The static seed lists and the cloud-init document are computed by terraform
  itself (`terraform console`, which needs no provider) from the modules'
  own expressions, and checked.
"""

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest
import yaml

from conftest import HERE, ROOT, TOOLS, SKIP_EXIT, run
from test_helm import KNOWN_KEYS

TF_DIR = os.path.join(ROOT, "deploy", "terraform")
CLOUDS = ["aws", "gcp", "azure"]
TEMPLATE = os.path.join(TF_DIR, "cloud-init.yaml.tftpl")
UNIT = os.path.join(ROOT, "deploy", "systemd", "starling.service")
RESOURCE_PREFIX = {"aws": "aws_", "gcp": "google_", "azure": "azurerm_"}
# Required variables, and what the tests give them.
REQUIRED = {
    "aws": {"starling_release_url"},
    "gcp": {"project", "starling_release_url"},
    "azure": {"subscription_id", "ssh_public_key", "starling_release_url"},
}


def terraform():
    exe = shutil.which("terraform")
    if not exe:
        pytest.skip("terraform is not installed on this machine (not in Debian or npm)")
    return exe


def tf_env():
    # No CLI configuration file, no checkpoint calls home.
    return dict(os.environ, TF_CLI_CONFIG_FILE="/dev/null", CHECKPOINT_DISABLE="1",
                TF_IN_AUTOMATION="1")


@pytest.fixture(scope="session")
def hcl2json():
    p = subprocess.run(["sh", os.path.join(HERE, "get-hcl2json.sh"), TOOLS],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    if p.returncode == SKIP_EXIT:
        pytest.skip(f"@cdktf/hcl2json cannot be had from npm here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    mods = p.stdout.strip().splitlines()[-1]

    def parse(cloud):
        d = os.path.join(TF_DIR, cloud)
        files = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".tf"))
        out = run(["node", os.path.join(HERE, "hcl2json.cjs"), mods, *files]).stdout
        return json.loads(out)

    return parse


class Module:
    """A parsed module: blocks merged over its files, plus its source text."""

    def __init__(self, cloud, files):
        self.cloud = cloud
        self.variables, self.outputs, self.locals = {}, {}, {}
        self.resources, self.data = {}, {}
        self.text = ""
        for name, doc in files.items():
            with open(os.path.join(TF_DIR, cloud, name)) as f:
                self.text += f.read()
            for k, v in doc.get("variable", {}).items():
                self.variables[k] = v[0]
            for k, v in doc.get("output", {}).items():
                self.outputs[k] = v[0]
            for block in doc.get("locals", []):
                self.locals.update(block)
            for rtype, named in doc.get("resource", {}).items():
                for rname, body in named.items():
                    self.resources[f"{rtype}.{rname}"] = body[0]
            for rtype, named in doc.get("data", {}).items():
                for rname, body in named.items():
                    self.data[f"data.{rtype}.{rname}"] = body[0]

    def of_type(self, rtype):
        return {k: v for k, v in self.resources.items() if k.split(".")[0] == rtype}

    def one(self, rtype):
        found = list(self.of_type(rtype).values())
        assert len(found) == 1, f"{self.cloud}: expected one {rtype}, found {len(found)}"
        return found[0]


@pytest.fixture(scope="session")
def modules(hcl2json):
    return {c: Module(c, hcl2json(c)) for c in CLOUDS}


# ---- formatting and validation ---------------------------------------------

def test_terraform_fmt_check():
    p = run([terraform(), "fmt", "-check", "-recursive", "-diff", TF_DIR], check=False,
            env=tf_env())
    assert p.returncode == 0, f"run `terraform fmt -recursive deploy/terraform`:\n{p.stdout}"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_terraform_validate_when_providers_can_be_had(cloud, tmp_path):
    tf = terraform()
    work = tmp_path / "terraform"
    shutil.copytree(TF_DIR, work)
    shutil.copytree(os.path.dirname(UNIT), tmp_path / "systemd")
    d = str(work / cloud)
    p = run([tf, "init", "-backend=false", "-input=false", "-no-color"], check=False,
            cwd=d, timeout=180, env=tf_env())
    if p.returncode != 0:
        text = re.sub(r"\x1b\[[0-9;]*m|[│╷╵]", "", p.stdout + p.stderr)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "Failed to query" in ln or "no such host" in ln
                       or "registry.terraform.io" in ln), lines[-1] if lines else "")
        pytest.skip(f"terraform init cannot download the {cloud} provider here ({reason.strip()}); "
                    "the module is checked by the parser tests of this file instead")
    run([tf, "validate", "-no-color"], cwd=d, env=tf_env())


# ---- what every module has ---------------------------------------------------

@pytest.mark.parametrize("cloud", CLOUDS)
def test_variables_are_typed_described_and_used(modules, cloud):
    m = modules[cloud]
    assert m.variables["node_count"]["default"] == 3
    assert m.variables["client_cidrs"]["default"] == ["0.0.0.0/0"]
    assert m.variables["ssh_cidrs"]["default"] == []
    required = {k for k, v in m.variables.items() if "default" not in v}
    assert required == REQUIRED[cloud]
    for k, v in m.variables.items():
        assert v.get("description") and v.get("type"), k
        assert re.search(rf"\bvar\.{k}\b", m.text), f"variable {k} is never used"
    for k in ("tls_key", "cluster_secret"):
        assert m.variables[k]["sensitive"] is True
    used = set(re.findall(r"\bvar\.([a-z_0-9]+)", m.text))
    assert used <= set(m.variables), used - set(m.variables)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_outputs(modules, cloud):
    m = modules[cloud]
    assert {"lb_address", "mqtt_url", "mqtts_url", "node_private_ips"} <= set(m.outputs)
    for k, v in m.outputs.items():
        assert v.get("description"), k
    assert "1883" in m.outputs["mqtt_url"]["value"]


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_reference_resolves(modules, cloud):
    m = modules[cloud]
    prefix = RESOURCE_PREFIX[cloud]
    refs = set(re.findall(rf"(?<![\w.\"])({prefix}[a-z0-9_]+\.[a-z0-9_]+)", m.text))
    # Drop the resource declarations' own "type" "name" (quoted, not matched).
    assert refs, "no references found"
    assert refs <= set(m.resources), refs - set(m.resources)
    data_refs = set(re.findall(rf"\b(data\.{prefix}[a-z0-9_]+\.[a-z0-9_]+)", m.text))
    assert data_refs <= set(m.data), data_refs - set(m.data)
    local_refs = set(re.findall(r"\blocal\.([a-z_0-9]+)", m.text))
    assert local_refs <= set(m.locals), local_refs - set(m.locals)
    assert m.locals["admin_port"] == 18083
    assert m.locals["cluster_port"] == 4370 and m.locals["raft_port"] == 4371


def template_variables():
    with open(TEMPLATE) as f:
        text = f.read()
    names = set(re.findall(r"\$\{\s*(?:base64encode\()?([a-z_]+)", text))
    names |= set(re.findall(r"%\{\s*if\s+([a-z_]+)", text))
    names |= set(re.findall(r"%\{\s*for\s+[a-z_, ]+\s+in\s+([a-z_]+)", text))
    names -= {"key", "value"}
    return names


def templatefile_args(m):
    """The keys of the map each module passes to templatefile()."""
    start = m.text.index("templatefile(")
    body = m.text[start:m.text.index("})", start)]
    assert '"${path.module}/../cloud-init.yaml.tftpl"' in body
    assert 'file("${path.module}/../../systemd/starling.service")' in body
    return set(re.findall(r"^\s*([a-z_]+)\s*=", body, re.M)), body


@pytest.mark.parametrize("cloud", CLOUDS)
def test_nodes_get_the_systemd_unit_through_cloud_init(modules, cloud):
    m = modules[cloud]
    keys, body = templatefile_args(m)
    assert keys == template_variables()
    assert re.search(r"seeds\s*=\s*local\.seeds", body)
    assert re.search(r"private_ip\s*=\s*local\.private_ips\[count\.index\]", body)
    assert re.search(r"release_url\s*=\s*var\.starling_release_url", body)
    proxy = re.search(r"proxy_protocol\s*=\s*(\S+)", body).group(1)
    assert proxy == ("var.proxy_protocol" if cloud == "aws" else "false")


@pytest.mark.parametrize("cloud", CLOUDS)
def test_nodes_across_zones_with_a_data_disk(modules, cloud):
    m = modules[cloud]
    if cloud == "aws":
        node = m.one("aws_instance")
        disk, attach = m.one("aws_ebs_volume"), m.one("aws_volume_attachment")
        assert m.variables["zone_count"]["default"] == 3
        assert m.locals["node_zone_index"] == \
            "${[for i in range(var.node_count) : i % var.zone_count]}"
        assert node["subnet_id"] == \
            "${aws_subnet.zone[local.node_zone_index[count.index]].id}"
        assert disk["availability_zone"] == "${local.zones[local.node_zone_index[count.index]]}"
        assert node["private_ip"] == "${local.private_ips[count.index]}"
    elif cloud == "gcp":
        node = m.one("google_compute_instance")
        disk = m.one("google_compute_disk")
        assert len(m.variables["zones"]["default"]) == 3
        assert node["zone"] == disk["zone"] == "${var.zones[count.index % length(var.zones)]}"
        assert node["attached_disk"][0]["device_name"] == "starling-data"
        assert node["network_interface"][0]["network_ip"] == "${local.private_ips[count.index]}"
        assert node["boot_disk"][0]["initialize_params"][0]["image"] == "debian-cloud/debian-12"
        attach = node["attached_disk"][0]
    else:
        node = m.one("azurerm_linux_virtual_machine")
        disk = m.one("azurerm_managed_disk")
        attach = m.one("azurerm_virtual_machine_data_disk_attachment")
        assert m.variables["zones"]["default"] == ["1", "2", "3"]
        assert node["zone"] == disk["zone"] == "${var.zones[count.index % length(var.zones)]}"
        nic = m.one("azurerm_network_interface")
        ipc = nic["ip_configuration"][0]
        assert ipc["private_ip_address_allocation"] == "Static"
        assert ipc["private_ip_address"] == "${local.private_ips[count.index]}"
        assert node["source_image_reference"][0]["offer"] == "debian-12"
    assert node["count"] == "${var.node_count}"
    assert disk["count"] == "${var.node_count}"
    assert attach


# ---- load balancers -----------------------------------------------------------

def test_aws_nlb_with_proxy_protocol_v2_and_health_checks(modules):
    m = modules["aws"]
    lb = m.one("aws_lb")
    assert lb["load_balancer_type"] == "network" and lb["internal"] is False
    assert lb["enable_cross_zone_load_balancing"] is True
    tg = m.one("aws_lb_target_group")
    assert tg["protocol"] == "TCP"
    assert tg["proxy_protocol_v2"] == "${var.proxy_protocol}"
    assert m.variables["proxy_protocol"]["default"] is True
    hc = tg["health_check"][0]
    assert hc["protocol"] == "HTTP" and hc["path"] == "/api/v1/health"
    assert hc["port"] == "${tostring(local.admin_port)}" and hc["matcher"] == "200"
    assert tg["for_each"] == "${toset([for p in local.mqtt_ports : tostring(p)])}"
    assert m.locals["mqtt_ports"] == "${local.tls_enabled ? [1883, 8883] : [1883]}"
    listener = m.one("aws_lb_listener")
    assert listener["protocol"] == "TCP" and listener["for_each"] == "${aws_lb_target_group.mqtt}"
    assert listener["default_action"][0]["type"] == "forward"
    att = m.one("aws_lb_target_group_attachment")
    assert "range(var.node_count)" in att["for_each"]
    # The nodes expect PROXY v2 exactly when the NLB sends it.
    _, body = templatefile_args(m)
    assert re.search(r"proxy_protocol\s*=\s*var\.proxy_protocol\b", body)


def test_gcp_passthrough_nlb_with_health_checks(modules):
    m = modules["gcp"]
    hc = m.one("google_compute_region_health_check")["http_health_check"][0]
    assert hc["request_path"] == "/api/v1/health" and hc["port"] == "${local.admin_port}"
    be = m.one("google_compute_region_backend_service")
    assert be["protocol"] == "TCP" and be["load_balancing_scheme"] == "EXTERNAL"
    assert be["health_checks"] == ["${google_compute_region_health_check.health.id}"]
    fr = m.one("google_compute_forwarding_rule")
    assert fr["ports"] == "${local.mqtt_ports}" and fr["ip_protocol"] == "TCP"
    assert m.locals["mqtt_ports"] == '${local.tls_enabled ? ["1883", "8883"] : ["1883"]}'
    assert "PROXY v1" in m.text  # why PROXY v2 is not used here, said in the module


def test_azure_standard_lb_with_health_probe(modules):
    m = modules["azure"]
    lb = m.one("azurerm_lb")
    assert lb["sku"] == "Standard"
    probe = m.one("azurerm_lb_probe")
    assert probe["protocol"] == "Http" and probe["request_path"] == "/api/v1/health"
    assert probe["port"] == "${local.admin_port}"
    rule = m.one("azurerm_lb_rule")
    assert rule["for_each"] == "${toset([for p in local.mqtt_ports : tostring(p)])}"
    assert rule["protocol"] == "Tcp" and rule["probe_id"] == "${azurerm_lb_probe.health.id}"
    assert rule["idle_timeout_in_minutes"] == 30 and rule["enable_tcp_reset"] is True
    assert m.one("azurerm_network_interface_backend_address_pool_association")
    assert "Private Link" in m.text  # why PROXY v2 is not used here, said in the module


# ---- firewalls ----------------------------------------------------------------

def test_aws_security_group(modules):
    m = modules["aws"]
    rules = m.of_type("aws_vpc_security_group_ingress_rule")
    mqtt = rules["aws_vpc_security_group_ingress_rule.mqtt"]
    assert "setproduct(local.mqtt_ports, var.client_cidrs)" in mqtt["for_each"]
    assert mqtt["cidr_ipv4"] == "${each.value[1]}"
    cluster = rules["aws_vpc_security_group_ingress_rule.cluster"]
    assert "local.cluster_port" in cluster["for_each"] and "local.raft_port" in cluster["for_each"]
    assert cluster["referenced_security_group_id"] == "${aws_security_group.node.id}"
    assert "cidr_ipv4" not in cluster
    health = rules["aws_vpc_security_group_ingress_rule.health"]
    assert health["from_port"] == "${local.admin_port}" and health["cidr_ipv4"] == "${var.vpc_cidr}"
    # Nothing else is open to a CIDR.
    for name, r in rules.items():
        if "cidr_ipv4" in r:
            assert name.rsplit(".", 1)[1] in {"mqtt", "health", "ssh"}, name


def test_gcp_firewall(modules):
    m = modules["gcp"]
    fw = {k.split(".")[1]: v for k, v in m.of_type("google_compute_firewall").items()}
    assert fw["mqtt"]["source_ranges"] == "${var.client_cidrs}"
    assert fw["mqtt"]["allow"][0]["ports"] == "${local.mqtt_ports}"
    assert fw["cluster"]["source_tags"] == ["${local.node_tag}"]
    assert "source_ranges" not in fw["cluster"]
    assert fw["cluster"]["allow"][0]["ports"] == [
        "${tostring(local.cluster_port)}", "${tostring(local.raft_port)}"]
    assert fw["health"]["allow"][0]["ports"] == ["${tostring(local.admin_port)}"]
    assert fw["health"]["source_ranges"] == "${local.health_check_ranges}"
    assert "35.191.0.0/16" in m.locals["health_check_ranges"]
    node = m.one("google_compute_instance")
    assert "access_config" not in node["network_interface"][0]  # no public address


def test_azure_network_security_group(modules):
    m = modules["azure"]
    nsg = m.one("azurerm_network_security_group")
    rules = {r["name"]: r for r in nsg["security_rule"]}
    assert rules["mqtt-from-clients"]["source_address_prefixes"] == "${var.client_cidrs}"
    assert rules["mqtt-from-clients"]["access"] == "Allow"
    cl = rules["cluster-between-nodes"]
    assert cl["source_application_security_group_ids"] == \
        ["${azurerm_application_security_group.nodes.id}"]
    assert cl["destination_port_ranges"] == [
        "${tostring(local.cluster_port)}", "${tostring(local.raft_port)}"]
    assert rules["health-from-load-balancer"]["source_address_prefix"] == "AzureLoadBalancer"
    deny = rules["deny-cluster-ports-otherwise"]
    assert deny["access"] == "Deny" and deny["priority"] > max(
        r["priority"] for n, r in rules.items() if n != deny["name"])
    assert deny["priority"] < 65000  # before Azure's AllowVnetInBound


# ---- computed by terraform itself ------------------------------------------------

def console(expr, files=None, variables=None):
    """Evaluate `expr` with `terraform console` in a scratch directory holding
    `files` ({name: text}); no provider is needed for that."""
    tf = terraform()
    d = tempfile.mkdtemp(prefix="starling-tf-")
    try:
        for name, text in (files or {}).items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        cmd = [tf, "console"]
        for k, v in (variables or {}).items():
            cmd += ["-var", f"{k}={v}"]
        p = subprocess.run(cmd, input=f"jsonencode({expr})\n", stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=120, cwd=d, env=tf_env())
        assert p.returncode == 0, p.stdout + p.stderr
        return json.loads(json.loads(p.stdout.strip()))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def seed_config(m, cloud, zones_stub):
    """variables.tf of the module plus its address locals, the zones list
    stubbed for AWS (it comes from a data source)."""
    names = ["cluster_port", "private_ips", "seeds"] + {
        "aws": ["node_zone_index"], "gcp": [], "azure": ["subnet_cidr"]}[cloud]
    def hcl(v):  # "${expr}" strings back to the expression; literals as JSON
        if isinstance(v, str) and v.startswith("${") and v.endswith("}"):
            return v[2:-1]
        return json.dumps(v)

    lines = [f"  {n} = {hcl(m.locals[n])}" for n in names]
    if cloud == "aws":
        lines.append(f"  zones = {json.dumps(zones_stub)}")
    with open(os.path.join(TF_DIR, cloud, "variables.tf")) as f:
        variables = f.read()
    return {"variables.tf": variables, "locals.tf": "locals {\n" + "\n".join(lines) + "\n}\n"}


@pytest.mark.parametrize("cloud", CLOUDS)
@pytest.mark.parametrize("count", [3, 5])
def test_static_seeds_are_the_nodes_private_addresses(modules, cloud, count):
    m = modules[cloud]
    files = seed_config(m, cloud, ["z-a", "z-b", "z-c"])
    variables = {k: "x" for k in REQUIRED[cloud]}
    variables["node_count"] = str(count)
    ips = console("local.private_ips", files, variables)
    seeds = console("local.seeds", files, variables)
    assert len(ips) == len(set(ips)) == count
    assert seeds == ",".join(f"{ip}:4370" for ip in ips)
    if cloud == "aws":
        zi = console("local.node_zone_index", files, variables)
        assert zi == [i % 3 for i in range(count)]
        # Node i's address is in its zone's subnet 10.40.<zone>.0/24.
        for i, ip in enumerate(ips):
            assert ip.startswith(f"10.40.{zi[i]}."), (i, ip)
    else:
        assert all(ip.startswith("10.40.0.") for ip in ips)


def test_cloud_init_document(modules):
    """The template rendered by terraform as a recipe renders it: valid
    cloud-config, the unit of deploy/systemd byte for byte, the node's
    environment with known keys only, the data disk mounted before start."""
    with open(UNIT) as f:
        unit = f.read()
    args = {
        "unit": f"file({json.dumps(UNIT)})", "node_name": '"starling-1"',
        "private_ip": '"10.40.1.10"', "seeds": '"10.40.0.10:4370,10.40.1.10:4370,10.40.2.10:4370"',
        "cluster_port": "4370", "raft_port": "4371", "admin_port": "18083",
        "tls_enabled": "true", "tls_cert": '"CERT"', "tls_key": '"KEY"',
        "proxy_protocol": "true", "proxy_protocol_listeners": '"tcp,tls"',
        "cluster_secret": '"s3cret"', "extra_env": '{STARLING_LOG_LEVEL = "debug"}',
        "release_url": '"https://example.invalid/starling.tar.gz"',
        "data_device": '"/dev/disk/by-id/google-starling-data"',
    }
    assert set(args) == template_variables()
    expr = f"templatefile({json.dumps(TEMPLATE)}, {{{', '.join(f'{k} = {v}' for k, v in args.items())}}})"
    text = console(expr)
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    files = {f["path"]: f for f in doc["write_files"]}
    assert base64.b64decode(files["/etc/systemd/system/starling.service"]["content"]).decode() == unit
    env = dict(line.split("=", 1) for line in files["/etc/starling/starling.env"]["content"].splitlines())
    for k in env:
        assert k.startswith("STARLING_") and k[9:].lower() in KNOWN_KEYS, k
    assert env["STARLING_NODE_NAME"] == "starling-1"
    assert env["STARLING_CLUSTER_ADDRESS"] == "10.40.1.10"
    assert env["STARLING_CLUSTER_SEEDS"] == "10.40.0.10:4370,10.40.1.10:4370,10.40.2.10:4370"
    assert env["STARLING_PROXY_PROTOCOL"] == "tcp,tls"
    assert env["STARLING_TLS_PORT"] == "8883"
    assert env["STARLING_ADMIN_PORT"] == "18083"
    assert env["STARLING_LOG_LEVEL"] == "debug"
    assert files["/etc/starling/starling.env"]["permissions"] == "0640"
    assert base64.b64decode(files["/etc/starling/tls/tls.key"]["content"]) == b"KEY"
    disk = files["/usr/local/sbin/starling-data-disk"]["content"]
    assert "dev=/dev/disk/by-id/google-starling-data" in disk
    assert "blkid \"$dev\" >/dev/null 2>&1 || mkfs.ext4" in disk  # never reformats
    cmds = [" ".join(c) if isinstance(c, list) else c for c in doc["runcmd"]]
    assert cmds[0] == "/usr/local/sbin/starling-data-disk"
    assert cmds[-1] == "systemctl enable --now starling.service"
    assert any("https://example.invalid/starling.tar.gz" in c and "tar -xz -C /usr/local" in c
               for c in cmds)
    assert {"name": "starling", "system": True, "homedir": "/var/lib/starling",
            "shell": "/usr/sbin/nologin", "no_create_home": True} in doc["users"]
    assert doc["users"][0] == "default"  # the image's login user is kept
    # Without TLS, PROXY protocol or a secret, none of their lines appear.
    args.update(tls_enabled="false", proxy_protocol="false", cluster_secret='""',
                extra_env="{}")
    expr = f"templatefile({json.dumps(TEMPLATE)}, {{{', '.join(f'{k} = {v}' for k, v in args.items())}}})"
    doc = yaml.safe_load(console(expr))
    files = {f["path"]: f for f in doc["write_files"]}
    env = files["/etc/starling/starling.env"]["content"]
    for absent in ("STARLING_TLS", "STARLING_PROXY_PROTOCOL", "STARLING_CLUSTER_SECRET"):
        assert absent not in env
    assert "/etc/starling/tls/tls.key" not in files


def test_dist_tarball_is_what_cloud_init_installs(release_build, tmp_path):
    """deploy/dist.sh packs bin/ and share/ (never a ./ entry that would
    change /usr/local's mode) with the runtime package list cloud-init reads."""
    p = run(["sh", os.path.join(ROOT, "deploy", "dist.sh"), str(tmp_path)], timeout=900)
    tarball = p.stdout.strip().splitlines()[-1]
    assert re.search(r"starling-[0-9.]+-linux-[a-z0-9]+\.tar\.gz$", tarball)
    names = run(["tar", "-tzf", tarball]).stdout.split()
    assert "bin/starling" in names and "share/starling/runtime-packages.txt" in names
    assert not [n for n in names if n in ("./", ".") or not n.startswith(("bin", "share"))]
    with open(TEMPLATE) as f:
        assert "$(cat /usr/local/share/starling/runtime-packages.txt)" in f.read()
