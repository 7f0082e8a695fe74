"""Internal covariate shift over a run's checkpoints: the records match the saved next checkpoint,
and the `ics` command (records, reruns that skip what is done, one-line errors)."""

import numpy as np
import optax
import pytest

from landscape.analyses.ics import record_ics
from landscape.results import ICS_FILE, DamagedRecordWarning, load_ics, read_rows


def test_record_ics_matches_the_saved_next_checkpoint(keep_all_run):
    """The classifier's G' recomputed from checkpoints t and t+1 equals the recorded distance:
    the update used is the one training took."""
    from landscape.checkpoints import Checkpointer
    from landscape.data import synthetic_dataset
    from landscape.rundir import load_config
    from landscape.runs import Trainer

    tiny_dataset = synthetic_dataset()
    written = record_ics(
        keep_all_run, steps=[2], layers="1,9", progress=False, dataset=tiny_dataset
    )
    row = read_rows(written["batchnorm"])[-1]
    assert row["step"] == 2 and row["layer"] == [1, 9] and row["bn_mode"] == "train"
    assert row["layer_name"] == ["conv1", "classifier"]
    assert row["dist"][0] == 0.0 and row["cosine"][0] == pytest.approx(1.0, abs=1e-6)

    config = load_config(keep_all_run)
    trainer = Trainer(config, "batchnorm", tiny_dataset)
    template = trainer.initial_state()
    with Checkpointer(keep_all_run / "batchnorm" / "checkpoints", config.checkpoint) as ckpt:
        now, after = ckpt.restore(2, template), ckpt.restore(3, template)
    batch = trainer.train_source(2)
    mixed = {**after.params, "Dense_0": now.params["Dense_0"]}
    g = trainer.train_step(now, batch)[1].grads["Dense_0"]
    g_shift = trainer.train_step(now.replace(params=mixed), batch)[1].grads["Dense_0"]
    dist = float(optax.tree.norm(optax.tree.sub(g, g_shift)))
    assert dist > 0
    assert row["dist"][1] == pytest.approx(dist, rel=1e-4)
    assert row["grad_norm"][1] == pytest.approx(float(optax.tree.norm(g)), rel=1e-5)


def test_ics_command(keep_all_run):
    from typer.testing import CliRunner

    from landscape.app.cli import app

    runner = CliRunner()
    args = ["ics", str(keep_all_run), "--every", "3", "--layers", "2,9", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    path = keep_all_run / "batchnorm" / ICS_FILE
    steps = [r["step"] for r in read_rows(path) if r["layer"] == [2, 9]]
    assert steps == [0, 3, 6]
    lines = path.read_text().count("\n")
    again = runner.invoke(app, args)  # everything is done: nothing is appended
    assert again.exit_code == 0, again.output
    assert path.read_text().count("\n") == lines
    # Killed while appending step 6's row: the rerun cuts the torn line off, measures step 6
    # again and appends it whole (glued onto the fragment, the row used to be lost).
    whole = path.read_text()
    path.write_text(whole[: -len(whole.splitlines()[-1]) // 2])
    with pytest.warns(DamagedRecordWarning, match="cut off a torn last line"):
        torn = runner.invoke(app, args)
    assert torn.exit_code == 0, torn.output
    assert path.read_text() == whole
    records = load_ics(keep_all_run)["batchnorm"]
    assert set(records) >= {2, 9} and records[9]["name"] == "classifier"
    np.testing.assert_array_equal(records[2]["step"], [0, 3, 6])
    r = records[9]  # the shift in units of the gradient's size
    np.testing.assert_allclose(r["relative"], np.asarray(r["dist"]) / np.asarray(r["grad_norm"]))
    assert np.all(np.asarray(r["relative"]) > 0)
    for bad, message in (
        (["ics", str(keep_all_run / "nothing")], "not a landscape run"),
        (["ics", str(keep_all_run), "--layers", "10"], "numbered 1..9"),
        (["ics", str(keep_all_run), "--layers", "x"], "--layers"),
        (["ics", str(keep_all_run), "--every", "0"], "--every"),
        (["ics", str(keep_all_run), "--variants", "standard"], "not in the run"),
    ):
        out = runner.invoke(app, [*bad, "--no-progress"])
        assert out.exit_code == 2, out.output
        assert message in out.output and "Traceback" not in out.output
        assert len(out.output.strip().splitlines()) == 1
