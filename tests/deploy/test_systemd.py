"""deploy/systemd: the unit passes `systemd-analyze verify` (no warnings) and
`systemd-analyze security --offline` with an exposure of at most 2.0, and
carries the settings the cloud recipes rely on. The environment file example
names only known keys."""

import os
import re
import shutil

import pytest

from conftest import ROOT, run
from test_helm import KNOWN_KEYS

UNIT = os.path.join(ROOT, "deploy", "systemd", "starling.service")
ENV_EXAMPLE = os.path.join(ROOT, "deploy", "systemd", "starling.env.example")


def unit_settings():
    """{section: {key: [values]}}: systemd allows repeated keys."""
    out, section = {}, None
    with open(UNIT) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = re.fullmatch(r"\[(\w+)\]", line)
            if m:
                section = out.setdefault(m.group(1), {})
                continue
            k, _, v = line.partition("=")
            section.setdefault(k, []).append(v)
    return out


@pytest.fixture
def unit_copy(tmp_path, release_build):
    """The unit with ExecStart pointing at the built binary (verify checks
    that the program exists)."""
    with open(UNIT) as f:
        text = f.read()
    assert "ExecStart=/usr/local/bin/starling " in text
    text = text.replace("/usr/local/bin/starling",
                        os.path.join(release_build, "node", "starling"))
    path = tmp_path / "starling.service"
    path.write_text(text)
    return str(path)


def need_systemd_analyze():
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")


def test_unit_verifies_without_warnings(unit_copy):
    need_systemd_analyze()
    p = run(["systemd-analyze", "verify", "--man=no", unit_copy])
    assert p.stderr == "", p.stderr


def test_unit_exposure_is_low(unit_copy):
    need_systemd_analyze()
    p = run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", unit_copy],
            check=False)
    m = re.search(r"Overall exposure level for starling.service: ([0-9.]+)", p.stdout)
    assert m, p.stdout + p.stderr
    assert float(m.group(1)) <= 2.0 and p.returncode == 0, p.stdout[-3000:]


def test_unit_settings():
    s = unit_settings()
    svc = s["Service"]
    assert svc["ExecStart"] == ["/usr/local/bin/starling $DAEMON_OPTS"]
    assert svc["User"] == ["starling"] and svc["Group"] == ["starling"]
    assert svc["StateDirectory"] == ["starling"]
    assert "STARLING_DATA_DIR=/var/lib/starling" in svc["Environment"]
    assert svc["EnvironmentFile"] == ["-/etc/starling/starling.env"]
    assert int(svc["LimitNOFILE"][0]) >= 1048576
    assert svc["ProtectSystem"] == ["strict"] and svc["NoNewPrivileges"] == ["yes"]
    assert svc["CapabilityBoundingSet"] == [""]
    assert svc["Restart"] == ["on-failure"]
    assert svc["KillSignal"] == ["SIGTERM"]
    assert s["Unit"]["RequiresMountsFor"] == ["/var/lib/starling"]
    assert "network-online.target" in s["Unit"]["After"][0]
    assert s["Install"]["WantedBy"] == ["multi-user.target"]


def test_env_example_names_only_known_keys():
    names = []
    with open(ENV_EXAMPLE) as f:
        for line in f:
            m = re.match(r"^#?([A-Z_]+)=", line.strip())
            if m:
                names.append(m.group(1))
    starling = [n for n in names if n.startswith("STARLING_")]
    assert len(starling) > 15
    for n in starling:
        assert n[len("STARLING_"):].lower() in KNOWN_KEYS, n
    # The one other variable is the unit's command line, deliberately not a
    # STARLING_* name (the node would reject it as an unknown key).
    assert set(names) - set(starling) == {"DAEMON_OPTS"}
