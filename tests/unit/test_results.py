"""Record files: a torn last line is repaired before the next append, a damaged line elsewhere
is reported with its file and line number and never deleted (docs/robustness.md)."""

import json

import pytest

from landscape.results import (
    DamagedRecordWarning,
    RecordWriter,
    read_rows,
    repair_tail,
    truncate_rows,
)

ROWS = [
    {"step": s, "layer": [1, 2], "dist": [0.5 * s, float("nan")], "bn_mode": "train"}
    for s in range(4)
]


def write_lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.read_bytes()


def same(a, b):
    return json.dumps(a) == json.dumps(b)  # NaN-aware equality of rows


@pytest.fixture
def warnings_seen(recwarn):
    return lambda: [str(w.message) for w in recwarn if w.category is DamagedRecordWarning]


def test_a_torn_tail_is_cut_off_before_the_next_append(tmp_path, warnings_seen):
    path = tmp_path / "ics.jsonl"
    whole = write_lines(path, ROWS[:3])
    path.write_bytes(whole + json.dumps(ROWS[3]).encode()[:25])  # a crash mid-append
    assert [r["step"] for r in read_rows(path)] == [0, 1, 2]  # the fragment is no row yet
    with RecordWriter(path) as writer:
        writer.write([ROWS[3]])
    rows = read_rows(path)
    assert len(rows) == 4 and all(same(a, b) for a, b in zip(rows, ROWS, strict=True))
    assert path.read_bytes() == whole + (json.dumps(ROWS[3]) + "\n").encode()
    (message,) = warnings_seen()
    assert str(path) in message and "torn last line (25 bytes" in message and "\n" not in message


def test_a_last_row_missing_only_its_newline_is_kept(tmp_path, warnings_seen):
    path = tmp_path / "probe.jsonl"
    whole = write_lines(path, ROWS[:2])
    path.write_bytes(whole[:-1])
    assert len(read_rows(path)) == 2
    repair_tail(path)
    assert path.read_bytes() == whole and warnings_seen() == []
    repair_tail(tmp_path / "absent.jsonl")  # nothing to repair, nothing created
    assert not (tmp_path / "absent.jsonl").exists()
    # A torn first line: the file is emptied, then appended to.
    path.write_bytes(b'{"step": 0, "lo')
    with RecordWriter(path) as writer:
        writer.write([ROWS[0]])
    assert path.read_text() == json.dumps(ROWS[0]) + "\n"


def test_a_damaged_middle_line_is_reported_and_survives_truncation(tmp_path, warnings_seen):
    path = tmp_path / "metrics.jsonl"
    lines = write_lines(path, ROWS).splitlines(keepends=True)
    lines[1] = b'{"step": 1, "lay\x00er": [1,\n'  # a damaged line, the file goes on
    path.write_bytes(b"".join(lines))
    assert [r["step"] for r in read_rows(path)] == [0, 2, 3]
    (message,) = warnings_seen()
    assert f"{path} line 2 is damaged" in message and "\n" not in message
    read_rows(path)  # read again in the same process (summary, figures, report): said once
    assert len(warnings_seen()) == 1
    # Resume drops the rows past its checkpoint, never the damaged line: its step is unknown.
    assert truncate_rows(path, lambda row: row["step"] < 3) == 2
    assert path.read_bytes() == b"".join(lines[:3])
    assert truncate_rows(path, lambda row: row["step"] < 1) == 1
    assert path.read_bytes() == b"".join(lines[:2])


def test_truncate_rows_keeps_rows_byte_for_byte_and_cuts_a_torn_tail(tmp_path, warnings_seen):
    path = tmp_path / "probe.jsonl"
    # Spacing json.dumps would not write: a rewrite that re-encoded rows would change it.
    path.write_bytes(b'{"step":0,"loss":1e-05}\n{"step": 1}\n{"step": 2, "lo')
    assert truncate_rows(path, lambda row: True) == 2
    assert path.read_bytes() == b'{"step":0,"loss":1e-05}\n{"step": 1}\n'
    assert "torn last line" in warnings_seen()[0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
