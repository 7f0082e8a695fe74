"""Activation statistics over a run's checkpoints: consecutive changes match the saved next
checkpoint, a noisy variant's change is the next step's own draw, and the `activations` command
(records, reruns that skip what is done, one-line errors)."""

import numpy as np
from typer.testing import CliRunner

from landscape.analyses.activations import record_activations
from landscape.app.cli import app
from landscape.results import ACTIVATIONS_FILE, load_activations, read_rows


def test_consecutive_change_matches_the_saved_next_checkpoint(keep_all_run):
    from landscape.data import synthetic_dataset

    written = record_activations(
        keep_all_run,
        steps=[2, 3],
        layers=[1, 5],
        examples=40,
        progress=False,
        dataset=synthetic_dataset(),
    )
    rows = {r["step"]: r for r in read_rows(written["batchnorm"]) if r["examples"] == 40}
    assert sorted(rows) == [2, 3] and rows[2]["bn_mode"] == "train"
    for key in ("mean", "var", "unit_mean"):
        # Step 3 recomputed from checkpoint 2 with the train step is checkpoint 3.
        change = np.subtract(rows[3][key], rows[2][key])
        np.testing.assert_allclose(rows[2][f"d_{key}"], change, rtol=1e-4, atol=1e-7)
    assert np.any(np.abs(rows[2]["d_mean"]) > 0)


def test_noisy_change_is_the_next_steps_own_draw(tmp_path):
    """For noisy BatchNorm, step t + 1 is measured with its own noise (what training at t + 1
    drew): the change recorded at t is the record at t + 1 minus the record at t, noise and all."""
    from landscape.config import CheckpointConfig, ModelConfig, ProbeConfig, RunConfig
    from landscape.data import synthetic_dataset
    from landscape.runs import run

    data = synthetic_dataset(seed=0, num_train=64, num_test=40)
    config = RunConfig(
        preset="test",
        data="synthetic",
        seed=2,
        steps=3,
        batch_size=8,
        eval_every=0,
        eval_batches=1,
        log_every=1,
        variants=("noisy_batchnorm",),
        model=ModelConfig(width=0.0625, conv_impl="xla"),
        checkpoint=CheckpointConfig(every=1, keep_all=True),
        probe=ProbeConfig(enabled=False),
    )
    run(config, tmp_path / "run", progress=False, dataset=data)
    written = record_activations(
        tmp_path / "run", steps=[1, 2], layers=[2], examples=16, progress=False, dataset=data
    )
    rows = {r["step"]: r for r in read_rows(written["noisy_batchnorm"])}
    for key in ("mean", "var", "unit_mean"):
        change = np.subtract(rows[2][key], rows[1][key])
        np.testing.assert_allclose(rows[1][f"d_{key}"], change, rtol=1e-4, atol=1e-6)
    # The injected per-unit shift U(-0.5, 0.5) moves one unit's mean by far more than a step of
    # BatchNorm training does on its own.
    assert abs(rows[1]["d_unit_mean"][0]) > 1e-2


def test_activations_command(keep_all_run):
    runner = CliRunner()
    args = ["activations", str(keep_all_run), "--every", "3", "--examples", "30"]
    args += ["--layers", "1,8", "--no-progress", "--unit", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    path = keep_all_run / "batchnorm" / ACTIVATIONS_FILE
    rows = [r for r in read_rows(path) if r["layer"] == [1, 8]]
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert all(len(r["percentiles"]) == 2 and len(r["d_var"]) == 2 for r in rows)
    lines = path.read_text().count("\n")
    assert runner.invoke(app, args).exit_code == 0
    assert path.read_text().count("\n") == lines  # a rerun skips what is done
    loaded = load_activations(keep_all_run)["batchnorm"]
    assert loaded[8]["percentiles"].shape[1] == 3 and loaded[8]["unit"] == 1
    for bad, message in (
        (["activations", str(keep_all_run / "none")], "not a landscape run"),
        (["activations", str(keep_all_run), "--layers", "9"], "numbered 1..8"),
        (["activations", str(keep_all_run), "--bn-mode", "test"], "--bn-mode"),
        (["activations", str(keep_all_run), "--examples", "1"], "--examples"),
        (["activations", str(keep_all_run), "--steps", "a"], "--steps"),
    ):
        out = runner.invoke(app, [*bad, "--no-progress"])
        assert out.exit_code == 2, out.output
        assert message in out.output and "Traceback" not in out.output
        assert len(out.output.strip().splitlines()) == 1
