"""The Python half of benchmarks/gpu_check.sh: reading `landscape probe`'s timings, extrapolating
a protocol's wall time, and the summary's verdict."""

import json
import sys

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from gpu_check import extrapolate_protocol, parse_variant_lines, summary

from landscape.step_records import VariantReport

PRINTED = """run directory: /tmp/run
standard: 300 steps in 41.5 s (7.23 steps/s), probe 61% of it (300 probed steps), checkpoints 2.3 s
batchnorm: 300 steps in 47.0 s (6.38 steps/s), probe 64% of it (300 probed steps), checkpoints 2.4 s
Landscape probe: medians over probed steps (early = steps < 3)
"""


READ = {
    "standard": {
        "steps": 300,
        "wall_s": 41.5,
        "probe_share": 0.61,
        "probed_steps": 300,
        "checkpoint_s": 2.3,
    },
    "batchnorm": {
        "steps": 300,
        "wall_s": 47.0,
        "probe_share": 0.64,
        "probed_steps": 300,
        "checkpoint_s": 2.4,
    },
}


def test_the_printed_per_variant_timings_are_read():
    assert parse_variant_lines(PRINTED) == READ
    assert parse_variant_lines("nothing here\n") == {}


def test_the_timing_line_a_run_prints_is_the_one_read_back():
    report = VariantReport(
        "batchnorm", steps_run=300, probes_run=300, wall_s=47.04, probe_s=30.1, checkpoint_s=2.41
    )
    assert parse_variant_lines(report.timing_line()) == {"batchnorm": READ["batchnorm"]}


def _run(steps, seconds, walls, rc=0):
    return {
        "steps": steps,
        "seconds": seconds,
        "rc": rc,
        "variants": {v: {"steps": steps, "wall_s": w} for v, w in walls.items()},
    }


def test_the_protocol_is_the_long_run_plus_the_rest_at_the_marginal_rate():
    short = _run(30, 50.0, {"standard": 10.0, "batchnorm": 12.0})
    long = _run(300, 80.0, {"standard": 20.0, "batchnorm": 24.0})
    result = extrapolate_protocol(short, long, 15_000, ["standard", "batchnorm"])
    assert result["marginal_step_s"]["standard"] == pytest.approx(10 / 270)
    assert result["marginal_step_s"]["batchnorm"] == pytest.approx(12 / 270)
    assert result["protocol_s"] == pytest.approx(80 + 14_700 * 22 / 270)
    assert result["rate_from"] == "per-variant lines"
    assert not result["under_10_min"]  # 80 + 1198 s


def test_without_variant_lines_the_whole_commands_give_the_rate():
    short = _run(30, 50.0, {})
    long = _run(300, 77.0, {"standard": 20.0})
    result = extrapolate_protocol(short, long, 1_000, ["standard", "batchnorm"])
    assert result["rate_from"] == "whole commands"
    assert result["protocol_s"] == pytest.approx(77 + 700 * 27 / 270)
    assert result["under_10_min"]


def test_a_rate_lost_in_noise_falls_back_to_an_upper_bound():
    short = _run(2, 20.0, {"standard": 6.7, "batchnorm": 6.7})
    long = _run(6, 22.0, {"standard": 5.3, "batchnorm": 8.2})  # standard got faster: jitter
    result = extrapolate_protocol(short, long, 60, ["standard", "batchnorm"])
    assert result["rate_from"].startswith("the long run's average")
    assert result["protocol_s"] == pytest.approx(22 + 54 * 22 / 6)


def test_variants_run_at_once_take_the_slowest_ones_rate_not_the_sum():
    short = _run(30, 50.0, {"standard": 10.0, "batchnorm": 12.0})
    long = _run(300, 80.0, {"standard": 20.0, "batchnorm": 24.0})
    result = extrapolate_protocol(short, long, 15_000, ["standard", "batchnorm"], concurrent=True)
    assert result["concurrent"] and result["rate_from"] == "per-variant lines"
    assert result["protocol_s"] == pytest.approx(80 + 14_700 * 12 / 270)
    # Without the lines each variant took the whole command's step, not half of it.
    whole = extrapolate_protocol(
        _run(30, 50.0, {}), _run(300, 77.0, {}), 1_000, ["a", "b"], concurrent=True
    )
    assert whole["marginal_step_s"] == {"a": pytest.approx(0.1), "b": pytest.approx(0.1)}
    assert whole["protocol_s"] == pytest.approx(77 + 700 * 0.1)


def test_runs_that_cannot_give_a_rate_are_refused():
    with pytest.raises(ValueError, match="more steps"):
        extrapolate_protocol(_run(30, 1.0, {}), _run(30, 2.0, {}), 100, ["a"])
    with pytest.raises(ValueError, match="failed"):
        extrapolate_protocol(_run(3, 1.0, {}), _run(30, 2.0, {}, rc=1), 100, ["a"])


def _stages(out, **statuses):
    lines = [
        json.dumps({"stage": n, "status": s, "rc": 0, "seconds": 1.0, "limit_s": 9})
        for n, s in statuses.items()
    ]
    (out / "stages.jsonl").write_text("\n".join(lines) + "\n")


def _compare(out, ok, records=None):
    numbers = {"rtol": 1e-3, "max_abs_diff": 1e-5, "max_rel_diff": 1e-4, "mismatches": 0}
    (out / "compare.json").write_text(json.dumps({"ok": ok, **numbers, "records": records or {}}))


def test_the_summary_separates_drift_from_a_defect_at_the_first_step(tmp_path, capsys):
    _stages(tmp_path, devices="ok", smoke_compare="ok")
    drift = {  # as the H200 gave: tiny at step 0, over the tolerance by the end
        "batchnorm/probe.jsonl": {"of_tolerance_by_step": {"0": 3.6e-4, "2": 4e-4, "16": 0.73}},
        "batchnorm/metrics.jsonl": {"of_tolerance_by_step": {"0": 0.0, "10": 1e-5, "30": 1.4}},
    }
    _compare(tmp_path, False, drift)
    assert summary(tmp_path, "gpu", "synthetic") == 1
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["records_at_first_step_of_tolerance"] == 3.6e-4
    assert "at the first step the largest difference is 0.00036" in capsys.readouterr().out
    _compare(tmp_path, False)  # no per-step figures
    summary(tmp_path, "gpu", "synthetic")
    assert (
        json.loads((tmp_path / "summary.json").read_text())["records_at_first_step_of_tolerance"]
        is None
    )


def test_summary_passes_only_when_every_stage_passed_and_the_records_agree(tmp_path, capsys):
    _stages(tmp_path, devices="ok", smoke_compare="ok", bench="ok")
    _compare(tmp_path, True)
    assert summary(tmp_path, "gpu", "synthetic") == 0
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["ok"] and saved["records_agree"] and saved["incomplete_stages"] == []
    assert "OK" in capsys.readouterr().out

    _compare(tmp_path, False)
    assert summary(tmp_path, "gpu", "synthetic") == 1
    _compare(tmp_path, True)
    _stages(tmp_path, devices="ok", smoke_compare="ok", bench="timeout")
    assert summary(tmp_path, "gpu", "synthetic") == 1
    assert json.loads((tmp_path / "summary.json").read_text())["incomplete_stages"] == ["bench"]
    # A stage the budget left no time to start is said, and does not fail the check.
    _stages(tmp_path, devices="ok", smoke_compare="ok", peers="skipped")
    assert summary(tmp_path, "gpu", "synthetic") == 0
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["skipped_stages"] == ["peers"] and saved["incomplete_stages"] == []
    assert "skipped, the time budget spent: peers" in capsys.readouterr().out
    _stages(tmp_path, devices="ok")  # the comparison never ran
    assert summary(tmp_path, "gpu", "synthetic") == 1
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["failed_required_stages"] == ["smoke_compare"]
