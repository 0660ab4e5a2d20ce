"""Shared by every pytest suite under tests/ (integration, cluster).

Temporary files: pytest's temporary directory (every `tmp_path`, and what
the suites' fixtures put under it) is one directory made under $TMPDIR
(default /tmp) and removed when pytest exits, so a run leaves nothing behind
-- pytest by itself keeps its last three runs in $TMPDIR/pytest-of-<user>.
STARLING_TEST_KEEP_TMP=1 keeps it (the path is printed). With pytest-xdist
(-n N) the workers use subdirectories of it. An explicit --basetemp is left
alone.

Ports: every port the tests give a node comes from tests/ports.py (outside
the kernel's ephemeral range, reserved machine-wide while in use); the ports
a test reserved are given back when it ends.
"""

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ports  # noqa: E402


def _is_xdist_worker(config):
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # tryfirst: before pytest's tmp_path plugin reads --basetemp
    if config.option.basetemp is None and not _is_xdist_worker(config):
        config.option.basetemp = tempfile.mkdtemp(prefix="starling-pytest-")
        config._starling_tmp = config.option.basetemp


def pytest_unconfigure(config):
    path = getattr(config, "_starling_tmp", None)
    if path is None:
        return
    if os.environ.get("STARLING_TEST_KEEP_TMP"):
        print(f"\ntemporary files kept in {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _test_ports():
    """Give back the ports the test reserved (tests/ports.py), after its own
    fixtures stopped their nodes; those of module and session fixtures, set
    up before it, stay theirs."""
    before = set(ports.held())
    yield
    ports.release(*(set(ports.held()) - before))
