"""Files a user reads are written whole or not at all: a full disk mid-write leaves the previous
report, figure or table (or none) and no temporary file (docs/robustness.md)."""

import builtins
import errno
import io
import os
import stat

import pytest
from matplotlib.figure import Figure
from test_report import write_run

from landscape import report
from landscape.files import atomic_open, atomic_write_text
from landscape.plots import save_figure
from landscape.sweep import write_csv


class _FullDisk:
    """A file that takes ``room`` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, file, room):
        self._file, self._room = file, room

    def write(self, data):
        if len(data) > self._room:
            self._file.write(data[: self._room])
            self._file.flush()
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)


@pytest.fixture
def fill_disk(monkeypatch):
    """Returns ``fill()``: every file opened for writing after it takes 100 bytes, then the
    disk is full."""
    real_open = builtins.open

    def opener(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return _FullDisk(handle, 100) if "w" in mode else handle

    def fill():
        monkeypatch.setattr(builtins, "open", opener)
        monkeypatch.setattr(io, "open", opener)  # pathlib's write_text opens through io.open

    return fill


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_open_replaces_whole_or_keeps_the_old_file(tmp_path):
    path = tmp_path / "table.csv"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half of the new")
        raise RuntimeError("the writer failed")
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []
    with atomic_open(path, "wb") as f:
        f.write(b"new\n")
    assert path.read_bytes() == b"new\n" and leftovers(tmp_path) == []
    # The usual permissions (the umask's), not a temporary file's owner-only ones.
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    with pytest.raises(ValueError, match="whole file"), atomic_open(path, "a"):
        pass


def test_full_disk_keeps_the_previous_report_and_names_it(tmp_path, fill_disk):
    run = write_run(tmp_path / "run")
    (run / "report.html").write_text("<html>the previous report</html>")
    fill_disk()
    with pytest.raises(OSError) as err:
        report.write_report(run)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(run / "report.html")
    assert (run / "report.html").read_text() == "<html>the previous report</html>"
    assert leftovers(run) == []


def test_full_disk_leaves_no_partial_figure_or_table(tmp_path, fill_disk):
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    fill_disk()
    with pytest.raises(OSError, match="No space left"):
        save_figure(fig, tmp_path / "figures" / "loss", formats=("pdf",))
    assert list((tmp_path / "figures").iterdir()) == []
    with pytest.raises(OSError, match="No space left"):
        write_csv([{"name": "x" * 60, "value": 1.0}] * 3, tmp_path / "summary.csv")
    assert list(tmp_path.glob("*.csv*")) == [] and leftovers(tmp_path) == []
