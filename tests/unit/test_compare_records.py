"""benchmarks/compare_records.py, the GPU check's verdict on "the same records as on the CPU":
it passes rounding-sized differences and fails a perturbed, missing or non-finite record."""

import json
import math
import sys

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from compare_records import (
    DEFAULT_RTOL,
    compare_runs,
    compare_values,
    flatten,
    main,
)


def _probe_row(step, scale=1.0):
    grad_dist = [0.5 * scale, 0.75 * scale, 1.0 * scale]
    return {
        "step": step,
        "etas": [0.05, 0.1, 0.2],
        "loss": [2.0 - 0.1 * step, 2.1 - 0.1 * step, 2.3 - 0.1 * step],
        "grad_dist": grad_dist,
        "grad_norm": 3.0 * scale,
        "loss0": 2.2 - 0.1 * step,
        "step_norm": [0.15 * scale, 0.3 * scale, 0.6 * scale],
        "beta": max(d / s for d, s in zip(grad_dist, [0.15, 0.3, 0.6], strict=True)),
        "diverged": 0,
    }


def _write_run(root, probe_rows, metric_rows, variants=("standard", "batchnorm")):
    for variant in variants:
        folder = root / variant
        folder.mkdir(parents=True)
        (folder / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probe_rows))
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metric_rows))
    return root


def _rows():
    probe = [_probe_row(0), _probe_row(2, scale=0.5), _probe_row(4, scale=0.01)]
    metrics = [
        {"step": 0, "loss": 2.3, "accuracy": 0.125},
        {"step": 1, "loss": 2.1, "accuracy": 0.25},
        {"step": 2, "test_loss": 2.0, "test_accuracy": 0.3},
    ]
    return probe, metrics


def _perturbed(rows, step, field, index, factor):
    out = json.loads(json.dumps(rows))
    row = next(r for r in out if r["step"] == step and field in r)
    if index is None:
        row[field] *= factor
    else:
        row[field][index] *= factor
    return out


def test_identical_runs_agree_with_zero_difference(tmp_path):
    probe, metrics = _rows()
    a = _write_run(tmp_path / "a", probe, metrics)
    b = _write_run(tmp_path / "b", probe, metrics)
    result = compare_runs(a, b)
    assert result["ok"]
    assert result["max_abs_diff"] == 0 and result["max_rel_diff"] == 0
    # 2 variants x (3 probe rows x 15 numbers without beta + 3 metric rows x 2 numbers)
    assert sum(r["values"] for r in result["records"].values()) == 2 * (3 * 15 + 3 * 2)
    assert main([str(a), str(b)]) == 0


def test_rounding_sized_difference_passes_and_is_reported(tmp_path):
    probe, metrics = _rows()
    a = _write_run(tmp_path / "a", _perturbed(probe, 2, "loss", 1, 1 + 1e-5), metrics)
    b = _write_run(tmp_path / "b", probe, metrics)
    result = compare_runs(a, b)
    assert result["ok"]
    assert result["max_rel_diff"] == pytest.approx(1e-5, rel=1e-6)
    assert result["max_abs_diff"] == pytest.approx(1.9 * 1e-5, rel=1e-6)


@pytest.mark.parametrize(
    ("step", "field", "index"),
    [(0, "loss", 0), (2, "grad_norm", None), (4, "grad_dist", 2), (1, "accuracy", None)],
)
def test_a_perturbed_record_fails_and_is_named(tmp_path, step, field, index):
    probe, metrics = _rows()
    name = "metrics.jsonl" if field == "accuracy" else "probe.jsonl"
    # 1% of the field's largest value: ten times the default tolerance.
    if name == "probe.jsonl":
        probe = _perturbed(probe, step, field, index, 1.0)
        row = next(r for r in probe if r["step"] == step)
        values = [r[field] if index is None else r[field][index] for r in probe]
        bump = 10 * DEFAULT_RTOL * 2 * max(abs(v) for v in values)
        if index is None:
            row[field] += bump
        else:
            row[field][index] += bump
        a = _write_run(tmp_path / "a", probe, metrics)
    else:
        a = _write_run(tmp_path / "a", probe, _perturbed(metrics, step, field, None, 1.1))
    reference_probe, reference_metrics = _rows()
    b = _write_run(tmp_path / "b", reference_probe, reference_metrics)
    result = compare_runs(a, b)
    assert not result["ok"]
    assert result["mismatches"] == 2  # the same change in both variants
    record = result["records"][f"standard/{name}"]
    assert record["worst"]["key"][1:3] == [step, field]
    assert record["of_tolerance_by_step"][str(step)] > 1
    assert main([str(a), str(b)]) == 1


def test_small_entries_are_held_to_the_fields_size_not_their_own():
    # A gradient distance a hundredth of the field's largest, off by 5% of itself: 5e-4 of
    # the field, inside the tolerance; the same 5% on the largest entry is not.
    b = flatten([_probe_row(0), _probe_row(4, scale=0.01)], "probe.jsonl")
    small = dict(b)
    small[("probe.jsonl", 4, "grad_dist", 0, 0)] *= 1.05
    assert compare_values(small, b)["ok"]
    large = dict(b)
    large[("probe.jsonl", 0, "grad_dist", 0, 2)] *= 1.05
    assert not compare_values(large, b)["ok"]


def test_beta_is_left_out_its_inputs_are_not():
    rows = [_probe_row(0)]
    flat = flatten(rows, "probe.jsonl")
    assert not any(key[2] == "beta" for key in flat)
    assert ("probe.jsonl", 0, "grad_dist", 0, 1) in flat
    assert flat[("probe.jsonl", 0, "grad_norm", 0, -1)] == 3.0


def test_nan_matches_nan_but_not_a_number():
    key = ("probe.jsonl", 0, "loss", 0, 0)
    assert compare_values({key: math.nan}, {key: math.nan})["ok"]
    assert compare_values({key: None}, {key: math.nan})["ok"]  # JSON's NaN written as null
    assert not compare_values({key: math.nan}, {key: 1.0})["ok"]
    assert not compare_values({key: math.inf}, {key: 1.0})["ok"]
    assert compare_values({key: math.inf}, {key: math.inf})["ok"]


def test_missing_rows_variants_and_files_fail(tmp_path):
    probe, metrics = _rows()
    b = _write_run(tmp_path / "b", probe, metrics)
    short = _write_run(tmp_path / "short", probe[:-1], metrics)
    result = compare_runs(short, b)
    assert not result["ok"]
    assert result["records"]["standard/probe.jsonl"]["missing_count"] == 15
    one = _write_run(tmp_path / "one", probe, metrics, variants=("standard",))
    assert compare_runs(one, b)["missing"] == ["batchnorm"]
    (tmp_path / "one" / "standard" / "metrics.jsonl").unlink()
    assert "standard/metrics.jsonl" in compare_runs(one, b)["missing"]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    probe, metrics = _rows()
    b = _write_run(tmp_path / "b", probe, metrics)
    assert main([str(tmp_path / "nowhere"), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a run directory" in err
    broken = _write_run(tmp_path / "broken", probe, metrics)
    (broken / "standard" / "probe.jsonl").write_text("{not json\n")
    assert main([str(broken), str(b)]) == 2
    assert "probe.jsonl:1 is not JSON" in capsys.readouterr().err
    assert main([str(b), str(b), "--rtol", "0"]) == 2


def test_the_result_file_holds_the_verdict(tmp_path):
    probe, metrics = _rows()
    a = _write_run(tmp_path / "a", probe, metrics)
    out = tmp_path / "out" / "compare.json"
    assert main([str(a), str(a), "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["ok"] and saved["rtol"] == DEFAULT_RTOL
    assert set(saved["records"]) == {
        "standard/probe.jsonl",
        "standard/metrics.jsonl",
        "batchnorm/probe.jsonl",
        "batchnorm/metrics.jsonl",
    }
