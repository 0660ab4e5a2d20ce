"""The container image without a container engine: deploy/Dockerfile parsed
and checked (stages, packages, user, ports, volume, health check, entry
point), and the runtime stage's contents - the `cmake --install` tree - built
into a directory and run the way the image runs it.

hadolint is in neither Debian nor npm; when a `hadolint` binary is on PATH it
is run as well, otherwise that test skips and says so."""

import fnmatch
import os
import pathlib
import re
import shlex
import shutil
import stat
import subprocess
import tempfile

import pytest

from conftest import (ROOT, Node, can_connect, clean_env, free_port, run, wait_for)
from test_helm import KNOWN_KEYS

DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")
IMAGE_UID = 10001


def parse_dockerfile(path):
    """[(instruction, argument string)], continuation lines joined, comments
    and blank lines dropped (parser directives too)."""
    out, cur = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not cur and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.lstrip().startswith("#"):
                continue  # a comment inside a continued instruction
            if line.endswith("\\"):
                cur += line[:-1] + " "
                continue
            cur += line
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
            cur = ""
    assert not cur, "Dockerfile ends inside a continued line"
    return out


def stages(instrs):
    """{stage name: [(instruction, arg)]}, in order, from FROM ... AS name."""
    result, name = {}, None
    for ins, arg in instrs:
        if ins == "FROM":
            m = re.fullmatch(r"(\S+) AS (\S+)", arg, re.I)
            assert m, f"every stage is named: FROM {arg}"
            name = m.group(2)
            result[name] = [(ins, m.group(1))]
        else:
            assert name, f"{ins} before the first FROM"
            result[name].append((ins, arg))
    return result


def apt_packages(run_args):
    """The package names of the `apt-get install` commands in RUN lines."""
    pkgs = set()
    for arg in run_args:
        for part in arg.split("&&"):
            words = part.split()
            if words[:2] == ["apt-get", "install"]:
                pkgs |= {w for w in words[2:] if not w.startswith("-") and not w.startswith("$")}
    return pkgs


def makefile_packages():
    with open(os.path.join(ROOT, "Makefile")) as f:
        text = f.read()
    m = re.search(r"^PACKAGES := (.*?)(?<!\\)\n", text, re.S | re.M)
    return m.group(1).replace("\\\n", " ").split()


@pytest.fixture(scope="module")
def df():
    return stages(parse_dockerfile(DOCKERFILE))


def test_two_stages_on_debian_12_runtime_last(df):
    assert list(df) == ["build", "runtime"]
    assert df["build"][0][1] == "debian:12"
    assert df["runtime"][0][1] == "debian:12-slim"
    with open(DOCKERFILE) as f:
        assert f.readline().startswith("# syntax=docker/dockerfile:1")


def test_build_stage_has_every_build_package_of_the_makefile(df):
    build = apt_packages(a for i, a in df["build"] if i == "RUN")
    needed = {p for p in makefile_packages()
              if p.endswith("-dev") or p.endswith("-compiler")} | {"cmake", "pkg-config"}
    assert needed - build == set(), "add these to the build stage of deploy/Dockerfile"


def test_build_stage_builds_release_and_installs_into_a_prefix(df):
    runs = " && ".join(a for i, a in df["build"] if i == "RUN")
    assert "-DCMAKE_BUILD_TYPE=Release" in runs
    assert "cmake --install /build --prefix /opt/starling" in runs
    assert "deploy/runtime-packages.sh /opt/starling/bin/starling" in runs
    assert ("COPY", ". .") in df["build"]


def test_runtime_stage_is_slim_and_non_root(df):
    rt = df["runtime"]
    pkgs = apt_packages(a for i, a in rt if i == "RUN")
    assert not {p for p in pkgs if p.endswith("-dev")}
    assert not pkgs & {"build-essential", "cmake", "gcc", "clang", "pkg-config"}
    assert "curl" in pkgs  # the health check's client
    runs = " ".join(a for i, a in rt if i == "RUN")
    assert "$(cat /tmp/runtime-packages.txt)" in runs
    assert f"--uid {IMAGE_UID}" in runs and "chown starling:starling /data" in runs
    copies = [a for i, a in rt if i == "COPY"]
    assert "--from=build /opt/starling/ /usr/local/" in copies
    users = [a for i, a in rt if i == "USER"]
    assert users == [f"{IMAGE_UID}:{IMAGE_UID}"]
    # Nothing runs as root after USER.
    after = [i for i, _ in rt[[i for i, _ in rt].index("USER"):]]
    assert "RUN" not in after


def test_ports_volume_and_environment(df):
    rt = df["runtime"]
    (expose,) = [a for i, a in rt if i == "EXPOSE"]
    assert sorted(int(p) for p in expose.split()) == sorted(
        [1883, 8883, 8083, 8084, 18083, 4370, 4371])
    assert ("VOLUME", '["/data"]') in rt
    assert ("WORKDIR", "/data") in rt
    env = dict(kv.split("=", 1) for i, a in rt if i == "ENV" for kv in shlex.split(a))
    assert env["STARLING_DATA_DIR"] == "/data"
    for name in env:
        assert name.startswith("STARLING_") and name[9:].lower() in KNOWN_KEYS, name


def test_health_check_and_entry_point(df):
    rt = df["runtime"]
    (hc,) = [a for i, a in rt if i == "HEALTHCHECK"]
    assert re.search(r"CMD curl -fsS .*http://127\.0\.0\.1:\$\{STARLING_ADMIN_PORT:-18083\}"
                     r"/api/v1/health", hc), hc
    assert "--interval=" in hc and "--retries=" in hc
    (ep,) = [a for i, a in rt if i == "ENTRYPOINT"]
    assert ep == '["/usr/local/bin/starling"]'
    assert ("STOPSIGNAL", "SIGTERM") in rt


def test_dockerignore_keeps_what_the_build_needs():
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        patterns = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    tracked = run(["git", "-C", ROOT, "ls-files"]).stdout.split()
    needed = [p for p in tracked if p.endswith(("CMakeLists.txt", ".c", ".h", ".proto"))
              or p.startswith(("docs/", "deploy/systemd/")) or p in (
                  "README.md", "deploy/starling.conf.example", "deploy/runtime-packages.sh")]
    assert "node/main.c" in needed
    for path in needed:
        for pat in patterns:
            assert not (fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat.rstrip("/") + "/*")
                        or path.startswith(pat.rstrip("/") + "/")), (path, pat)
    assert ".git" in patterns and "build" in patterns


def test_hadolint():
    exe = shutil.which("hadolint")
    if not exe:
        pytest.skip("hadolint is not packaged in Debian 12 or npm; the Dockerfile is checked "
                    "by the parser tests of this file instead")
    run([exe, DOCKERFILE])


def test_make_image_says_when_there_is_no_engine():
    engines = [e for e in ("docker", "podman") if shutil.which(e) and subprocess.run(
        [e, "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=30).returncode == 0]
    if engines:
        pytest.skip(f"{engines[0]} runs here: `make image` would build the image (not run by the tests)")
    p = run(["make", "-s", "-C", ROOT, "image"], check=False, timeout=120)
    assert p.returncode != 0
    assert "no container engine (docker or podman) is running on this machine" in p.stderr


# ---- the install tree: what the runtime stage copies to /usr/local ---------

def project_version():
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        return re.search(r"project\(starling VERSION ([0-9.]+)", f.read()).group(1)


def test_install_tree_has_the_binary_and_docs(install_tree):
    exe = os.path.join(install_tree, "bin", "starling")
    assert os.access(exe, os.X_OK)
    p = run([exe, "-v"])
    assert p.stdout == f"starling {project_version()}\n"
    doc = os.path.join(install_tree, "share", "doc", "starling")
    for f in ("README.md", "configuration.md", "examples/starling.conf.example",
              "examples/starling.service", "examples/starling.env.example"):
        assert os.path.isfile(os.path.join(doc, f)), f


def test_runtime_packages_are_debian_runtime_libraries(install_tree):
    exe = os.path.join(install_tree, "bin", "starling")
    p = run(["sh", os.path.join(ROOT, "deploy", "runtime-packages.sh"), exe])
    pkgs = p.stdout.split()
    assert {"libc6", "libuv1", "liblmdb0", "libssl3"} <= set(pkgs), pkgs
    assert not [x for x in pkgs if x.endswith("-dev")], pkgs
    for pkg in pkgs:  # each is a real, installable Debian package
        q = run(["dpkg-query", "-W", "-f=${Status}", pkg])
        assert q.stdout == "install ok installed", pkg
    # A binary that needs a library nobody ships is refused.
    bad = run(["sh", os.path.join(ROOT, "deploy", "runtime-packages.sh"), "/nonexistent"],
              check=False)
    assert bad.returncode == 1 and "not an executable" in bad.stderr


def image_env(df):
    return dict(kv.split("=", 1) for i, a in df["runtime"] if i == "ENV"
                for kv in shlex.split(a))


@pytest.fixture
def open_tmp():
    """A scratch directory that another uid can reach (pytest's tmp_path lives
    under a 0700 directory)."""
    d = tempfile.mkdtemp(prefix="starling-image-")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_installed_binary_serves_and_keeps_its_data(install_tree, df, open_tmp):
    """Run the installed binary as the image does: the image's ENV, its data
    directory as working directory, as uid 10001 when we can switch user; a
    retained message published with mosquitto_pub is read back with
    mosquitto_sub, and again after a restart (the data directory persists)."""
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} missing: it is in the Makefile's PACKAGES (mosquitto-clients)")
    tmp_path = open_tmp
    data = tmp_path / "data"
    data.mkdir()
    exe = os.path.join(install_tree, "bin", "starling")
    prefix = []
    if os.geteuid() == 0 and shutil.which("setpriv"):
        os.chown(data, IMAGE_UID, IMAGE_UID)
        # the image's user must reach the data directory and the binary:
        # the temporary directories above them are 0700 (mkdtemp)
        for path in (str(tmp_path), install_tree):
            while path not in ("/", "/tmp", "/var/tmp"):
                os.chmod(path, os.stat(path).st_mode | stat.S_IXOTH)
                path = os.path.dirname(path)
        prefix = ["setpriv", f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups"]
    port = free_port()
    env = image_env(df)
    env.update(STARLING_DATA_DIR=str(data), STARLING_BIND_ADDRESS="127.0.0.1",
               STARLING_PORT=str(port), STARLING_WORKERS="1")
    env = clean_env(env)

    def start():
        if prefix:
            n = Node(prefix[0], env, str(data), args=prefix[1:] + [exe], name="image")
        else:
            n = Node(exe, env, str(data), name="image")
        wait_for(lambda: not n.alive() or can_connect("127.0.0.1", port), 20,
                 "the installed starling to listen")
        assert n.alive(), n.stderr()
        return n

    node = start()
    try:
        run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-r",
             "-t", "deploy/image", "-m", "from the install tree"], timeout=20)
        got = run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "deploy/image",
                   "-C", "1", "-W", "10"], timeout=20)
        assert got.stdout == "from the install tree\n"
    finally:
        rc = node.stop()
    assert rc == 0, node.stderr()
    # The store is in the data directory, owned by the image's user.
    assert os.path.isfile(data / "data.mdb")
    if prefix:
        assert os.stat(data / "data.mdb").st_uid == IMAGE_UID
    node = start()
    try:
        got = run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "deploy/image",
                   "-C", "1", "-W", "10"], timeout=20)
        assert got.stdout == "from the install tree\n"
    finally:
        rc = node.stop()
    assert rc == 0, node.stderr()


def test_build_stage_commands_run_here(df, tmp_path):
    """The build stage's own RUN command (the one after `COPY . .`), run in
    this checkout with /build and /opt/starling moved into a scratch
    directory: it builds, installs, lists the runtime packages and runs the
    binary. The runtime stage's apt-get line can install every package listed."""
    build = [a for i, a in df["build"] if i == "RUN"]
    cmd = build[-1]
    assert cmd.startswith("cmake -S . -B /build")
    cmd = cmd.replace("/opt/starling", str(tmp_path / "opt")).replace("/build", str(tmp_path / "b"))
    p = run(["sh", "-c", cmd], cwd=ROOT, timeout=1200)
    assert re.search(r"^starling [0-9.]+$", p.stdout, re.M), p.stdout
    with open(tmp_path / "opt" / "share" / "starling" / "runtime-packages.txt") as f:
        pkgs = f.read().split()
    assert "libuv1" in pkgs and "liblmdb0" in pkgs
    policy = run(["apt-cache", "policy", "curl", *pkgs]).stdout
    if "Candidate:" not in policy:
        pytest.skip("apt has no package lists here (run apt-get update) to check the runtime stage")
    for pkg in ["curl", "ca-certificates", *pkgs]:
        q = run(["apt-cache", "policy", pkg]).stdout
        assert re.search(r"Candidate: (?!\(none\))\S+", q), f"{pkg} cannot be installed: {q}"
