"""The run directory's contract: its lock, symbolic links, overwrite."""

import fcntl
import json
import os

import pytest

from landscape.config import RunConfig
from landscape.rundir import RunError, prepare_run_dir, run_dir_lock


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    (tmp_path / ".lock").write_text(
        json.dumps({"pid": 4242, "host": "node7", "command": "landscape probe --resume r"})
    )
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process would hold it
    try:
        refused = pytest.raises(RunError, match=r"in use by process 4242 on node7 \(landscape")
        with refused, run_dir_lock(tmp_path):
            pass
    finally:
        os.close(fd)
    # The holder is gone: its stale file is taken over; and one process may nest.
    with run_dir_lock(tmp_path), run_dir_lock(tmp_path):
        facts = json.loads((tmp_path / ".lock").read_text())
        assert facts["pid"] == os.getpid()


def test_symbolic_links_get_one_line(tmp_path):
    dangling = tmp_path / "out"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(RunError, match=r"symbolic link to .*nowhere, which does not exist"):
        prepare_run_dir(dangling, RunConfig(), resume=False, overwrite=False)
    with pytest.raises(RunError, match="no such directory"), run_dir_lock(tmp_path / "missing"):
        pass


def test_overwrite_empties_a_symlinked_run_in_place(tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    prepare_run_dir(real, RunConfig(), resume=False, overwrite=False)
    (real / "standard").mkdir()
    (real / "standard" / "metrics.jsonl").write_text("{}\n")
    link.symlink_to(real)
    with run_dir_lock(link):
        prepare_run_dir(link, RunConfig(steps=7), resume=False, overwrite=True)
    assert link.is_symlink() and sorted(p.name for p in real.iterdir()) == [
        ".lock",
        "config.json",
    ]
    assert json.loads((real / "config.json").read_text())["steps"] == 7
