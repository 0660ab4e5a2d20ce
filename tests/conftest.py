"""Shared by every pytest suite under tests/ (integration, cluster).

Temporary files: pytest's temporary directory (every `tmp_path`, and what
the suites' fixtures put under it) is one directory made under $TMPDIR
(default /tmp) and removed when pytest exits, so a run leaves nothing behind
-- pytest by itself keeps its last three runs in $TMPDIR/pytest-of-<user>.
STARLING_TEST_KEEP_TMP=1 keeps it (the path is printed). With pytest-xdist
(-n N) the workers use subdirectories of it. An explicit --basetemp is left
alone.
"""

import os
import shutil
import tempfile

import pytest


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
