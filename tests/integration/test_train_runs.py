"""Whole runs compared with each other: a resumed run is bit-identical to an uninterrupted one, an
offline re-probe reproduces the inline probe, the fused train-and-probe step gives the same run."""

import numpy as np
from helpers import assert_trees_equal, params_of, with_

from landscape.results import read_rows
from landscape.runs import Trainer, reprobe, run


def test_resume_is_bit_identical_and_records_have_no_duplicates(
    tmp_path, tiny_config, tiny_dataset
):
    full, part = tmp_path / "full", tmp_path / "part"
    run(tiny_config, full, progress=False, dataset=tiny_dataset)
    run(tiny_config.replace(steps=3), part, progress=False, dataset=tiny_dataset)
    # Simulate a kill after step 4 was recorded but before its checkpoint: stale rows must go.
    run(tiny_config.replace(steps=6), part, resume=True, progress=False, dataset=tiny_dataset)
    for variant in tiny_config.variants:
        assert_trees_equal(
            params_of(full, variant, tiny_config, tiny_dataset),
            params_of(part, variant, tiny_config, tiny_dataset),
        )
        rows = read_rows(part / variant / "probe.jsonl")
        assert [r["step"] for r in rows] == list(range(6))
        full_rows = read_rows(full / variant / "probe.jsonl")
        for a, b in zip(rows, full_rows, strict=True):
            assert a == b
        steps = [r["step"] for r in read_rows(part / variant / "metrics.jsonl") if "loss" in r]
        assert steps == list(range(6))


def test_offline_reprobe_matches_inline(tmp_path, tiny_config, tiny_dataset):
    run_dir = tmp_path / "r"
    run(tiny_config, run_dir, progress=False, dataset=tiny_dataset)
    written = reprobe(run_dir, progress=False, dataset=tiny_dataset)
    for variant, path in written.items():
        offline = {r["step"]: r for r in read_rows(path)}
        inline = read_rows(run_dir / variant / "probe.jsonl")
        assert inline
        for row in inline:
            assert offline[row["step"]] == row
    # Any grid, any length: a new grid is accepted.
    written = reprobe(
        run_dir, etas=(0.01, 0.02), progress=False, dataset=tiny_dataset, out_name="fine.jsonl"
    )
    assert len(read_rows(written["standard"])[0]["etas"]) == 2


def test_fused_train_and_probe_gives_the_same_run(tmp_path, tiny_config, tiny_dataset):
    fused_cfg = with_(tiny_config, probe={"fuse": True})
    plain, fused = tmp_path / "plain", tmp_path / "fused"
    run(tiny_config, plain, progress=False, dataset=tiny_dataset)
    reports = run(fused_cfg, fused, progress=False, dataset=tiny_dataset)
    assert Trainer(fused_cfg, "standard", tiny_dataset).train_probe_step is not None
    assert all(r.probes_run == tiny_config.steps for r in reports)
    for variant in tiny_config.variants:
        assert_trees_equal(
            params_of(plain, variant, tiny_config, tiny_dataset),
            params_of(fused, variant, fused_cfg, tiny_dataset),
        )
        rows = read_rows(fused / variant / "probe.jsonl")
        reference = read_rows(plain / variant / "probe.jsonl")
        assert len(rows) == len(reference) == tiny_config.steps
        for a, b in zip(rows, reference, strict=True):
            np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
            np.testing.assert_allclose(a["grad_dist"], b["grad_dist"], rtol=1e-5)
