"""The integration tier: the command end to end (in-process CliRunner invocations and
subprocesses), kill and resume, real data, several processes. Every test here is marked
``slow``: ``python -m pytest tests/unit`` (or ``-m "not slow"``) is the quick loop."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from landscape.app.runtime import MALLOC_OPT_OUT

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    # This hook sees every collected item, not only this folder's: mark just the ones here.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def _no_malloc_tuning_in_the_test_process():
    """Commands invoked in-process (CliRunner) that train, probe, draw surfaces or run sweeps
    call ``runtime.prepare_compute()``, which applies the command's glibc malloc settings to
    the whole process: the pytest process would keep them for every later test. Opt it out;
    the tests of the settings themselves (test_process.py) start fresh interpreters without
    the opt-out."""
    before = os.environ.get(MALLOC_OPT_OUT)
    os.environ.setdefault(MALLOC_OPT_OUT, "0")
    yield
    if before is None:
        os.environ.pop(MALLOC_OPT_OUT, None)
