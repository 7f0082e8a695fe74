"""Trainer: learning, checkpoints, resume, retention, reuse, probe on/off equality (whole runs
compared bit for bit: integration/test_train_runs.py)."""

import json
import os
import shutil

import numpy as np
import pytest
from helpers import assert_trees_equal, params_of, with_

import landscape.runs as runs
from landscape.checkpoints import Checkpointer, DamagedCheckpointWarning
from landscape.config import CheckpointConfig
from landscape.results import divergence_line, load, load_divergence, load_metrics, read_rows
from landscape.rundir import RunError
from landscape.runs import Trainer, reprobe, run, train_variant
from landscape.step_records import ProbeTiming


def test_loss_decreases_on_synthetic_data(tmp_path, tiny_config, tiny_dataset):
    cfg = with_(
        tiny_config,
        steps=60,
        batch_size=32,
        eval_every=0,
        variants=("batchnorm",),
        checkpoint={"every": 0},
        probe={"enabled": False},
    )
    run(cfg, tmp_path / "r", progress=False, probe_enabled=False, dataset=tiny_dataset)
    train = load_metrics(tmp_path / "r")["batchnorm"]["train"]
    assert len(train["step"]) == 60
    assert train["loss"][-10:].mean() < 0.8 * train["loss"][:10].mean()


def test_run_dir_contents_and_checkpoint_round_trip(tmp_path, tiny_config, tiny_dataset):
    run_dir = tmp_path / "r"
    run(tiny_config, run_dir, progress=False, dataset=tiny_dataset)
    assert json.loads((run_dir / "config.json").read_text())["steps"] == 6
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["dataset_sha256"] == tiny_dataset.checksum and prov["seed"] == 3
    assert {"jax", "flax", "device"} <= set(prov)
    for variant in ("standard", "batchnorm"):
        with Checkpointer(run_dir / variant / "checkpoints") as ckpt:
            assert ckpt.steps() == list(range(7))
        # The checkpoint of step t, trained on from t, reaches the same parameters as the run.
        trainer = Trainer(tiny_config, variant, tiny_dataset)
        state = params_of(run_dir, variant, tiny_config, tiny_dataset, step=4)
        for step in (4, 5):
            state, _ = trainer.train_step(state, trainer.train_source(step))
        assert_trees_equal(state, params_of(run_dir, variant, tiny_config, tiny_dataset, step=6))
    records = load(run_dir)
    assert list(records["standard"]["step"]) == list(range(6))
    metrics = load_metrics(run_dir)["batchnorm"]
    assert list(metrics["test"]["step"]) == [3, 6]


def test_resume_drops_rows_written_after_the_newest_checkpoint(tmp_path, tiny_config, tiny_dataset):
    run_dir = tmp_path / "r"
    cfg = tiny_config.replace(variants=("standard",))
    run(cfg.replace(steps=4), run_dir, progress=False, dataset=tiny_dataset)
    # A killed run may have recorded steps past its newest complete checkpoint.
    path = run_dir / "standard" / "probe.jsonl"
    extra = read_rows(path)[-1] | {"step": 4}
    with open(path, "a") as f:
        f.write(json.dumps(extra) + "\n")
    run(cfg, run_dir, resume=True, progress=False, dataset=tiny_dataset)
    assert [r["step"] for r in read_rows(path)] == list(range(6))
    assert read_rows(path)[4] != extra


def test_probe_does_not_change_training(tmp_path, tiny_config, tiny_dataset):
    on, off = tmp_path / "on", tmp_path / "off"
    run(tiny_config, on, progress=False, dataset=tiny_dataset)
    run(tiny_config, off, progress=False, probe_enabled=False, dataset=tiny_dataset)
    assert not (off / "standard" / "probe.jsonl").exists() or not read_rows(
        off / "standard" / "probe.jsonl"
    )
    for variant in tiny_config.variants:
        a = params_of(on, variant, tiny_config, tiny_dataset)
        b = params_of(off, variant, tiny_config, tiny_dataset)
        assert_trees_equal(a, b)  # params, BN running statistics, optimiser state, step


def test_retention_keeps_newest_and_periodic(tmp_path, tiny_config, tiny_dataset):
    cfg = with_(
        tiny_config,
        steps=12,
        variants=("standard",),
        probe={"enabled": False},
        checkpoint={"every": 1, "max_to_keep": 2, "keep_period": 5},
    )
    run(cfg, tmp_path / "r", progress=False, probe_enabled=False, dataset=tiny_dataset)
    with Checkpointer(tmp_path / "r" / "standard" / "checkpoints", cfg.checkpoint) as ckpt:
        assert ckpt.steps() == [0, 5, 10, 11, 12]
    keep_all = with_(cfg, checkpoint={"keep_all": True, "max_to_keep": 2})
    run(keep_all, tmp_path / "all", progress=False, probe_enabled=False, dataset=tiny_dataset)
    with Checkpointer(tmp_path / "all" / "standard" / "checkpoints", CheckpointConfig()) as ckpt:
        assert ckpt.steps() == list(range(13))


def test_existing_run_dir_is_refused(tmp_path, tiny_config, tiny_dataset):
    run_dir = tmp_path / "r"
    cfg = tiny_config.replace(steps=1, variants=("standard",))
    run(cfg, run_dir, progress=False, dataset=tiny_dataset)
    with pytest.raises(RunError, match="already exists"):
        run(cfg, run_dir, progress=False, dataset=tiny_dataset)
    run(cfg, run_dir, overwrite=True, progress=False, dataset=tiny_dataset)
    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(RunError, match="does not look like"):
        run(cfg, other, overwrite=True, progress=False, dataset=tiny_dataset)
    assert (other / "precious.txt").exists()


def test_results_table_reads_into_pandas(tmp_path, tiny_config, tiny_dataset):
    pd = pytest.importorskip("pandas")
    from landscape.results import table

    run_dir = tmp_path / "r"
    run(tiny_config, run_dir, progress=False, dataset=tiny_dataset)
    df = pd.DataFrame(table(run_dir))
    assert len(df) == 2 * 6 * 3  # variants x probed steps x etas
    assert {"variant", "step", "eta", "loss", "grad_dist", "step_norm", "beta"} <= set(df.columns)
    per_step = df.groupby(["variant", "step"])["loss"].agg(["min", "max"])
    records = load(run_dir)
    np.testing.assert_allclose(per_step.loc["standard"]["max"], records["standard"]["loss_max"])


def test_limited_evaluation_sees_every_class():
    from landscape.train import BatchSource

    labels = np.repeat(np.arange(10), 100)  # sorted by class, as image folders are
    images = np.zeros((1000, 32, 32, 3), np.uint8)
    source = BatchSource(images, labels, np.zeros(3), np.ones(3), 10, seed=0)
    seen = np.concatenate([np.asarray(b["label"]) for b in source.chunks(100, limit=2)])
    assert len(seen) == 200 and set(seen.tolist()) == set(range(10))
    everything = np.concatenate([np.asarray(b["label"]) for b in source.chunks(300)])
    assert sorted(everything.tolist()) == sorted(labels.tolist())


def test_reuse_copies_a_finished_identical_variant_and_trains_the_rest(
    tmp_path, tiny_config, tiny_dataset
):
    """--reuse: a finished variant with the same settings and data is copied, bit-identical to a
    rerun; a variant the source lacks is trained; settings that differ forbid the copy."""
    cfg = tiny_config.replace(steps=4, variants=("standard",))
    source = tmp_path / "source"
    run(cfg, source, progress=False, dataset=tiny_dataset)
    both = cfg.replace(variants=("standard", "batchnorm"))
    lines: list[str] = []
    reports = run(
        both,
        tmp_path / "new",
        progress=False,
        dataset=tiny_dataset,
        reuse=[source],
        say=lines.append,
    )
    assert [r.reused_from for r in reports] == [str(source), None]
    assert reports[1].steps_run == 4
    assert lines[0].startswith("standard: reused from") and "no 'batchnorm'" in lines[1]
    fresh = tmp_path / "fresh"
    run(both, fresh, progress=False, dataset=tiny_dataset)
    for name in ("metrics.jsonl", "probe.jsonl"):
        assert (tmp_path / "new/standard" / name).read_text() == (
            fresh / "standard" / name
        ).read_text()
    assert sorted(os.listdir(tmp_path / "new/standard/checkpoints")) == sorted(
        os.listdir(fresh / "standard/checkpoints")
    )
    assert not list(tmp_path.glob("new/*.reuse-partial"))
    assert_trees_equal(
        params_of(tmp_path / "new", "standard", cfg, tiny_dataset),
        params_of(fresh, "standard", cfg, tiny_dataset),
    )

    other = both.replace(seed=cfg.seed + 1)
    lines.clear()
    reports = run(
        other,
        tmp_path / "other",
        progress=False,
        dataset=tiny_dataset,
        reuse=[source, tmp_path / "nope"],
        say=lines.append,
    )
    assert all(r.reused_from is None for r in reports)
    assert "other settings (seed" in lines[0] and "does not exist" in lines[0]


def test_reuse_refuses_unfinished_or_extended_sources_and_leaves_them_untouched(
    tmp_path, tiny_config, tiny_dataset
):
    """A source whose newest checkpoint or final evaluation is missing, or that was extended
    from a shorter run, is not copied; looking into it never touches it (a write in progress
    there, a .tmp-* folder, survives); a source that cannot be read is a reason, not an error."""
    from landscape.rundir import plan_reuse

    cfg = tiny_config.replace(steps=4, variants=("standard",))
    run(cfg, tmp_path / "src", progress=False, dataset=tiny_dataset)
    source = tmp_path / "src"
    in_progress = source / "standard/checkpoints/.tmp-5"
    in_progress.mkdir()

    def reasons(sources=(source,)) -> str:
        lines: list[str] = []
        assert plan_reuse(tmp_path / "new", cfg, tiny_dataset, sources, lines.append) == {}
        return lines[0]

    assert plan_reuse(tmp_path / "new", cfg, tiny_dataset, [source]) == {"standard": source}
    metrics = source / "standard/metrics.jsonl"
    full = metrics.read_text()
    metrics.write_text("".join(r + "\n" for r in full.splitlines() if '"test_accuracy"' not in r))
    assert "no final evaluation at step 4" in reasons()
    metrics.write_text(full + '{"step": 2, "test_accuracy": 0.5, "test_l')  # torn last line
    assert plan_reuse(tmp_path / "new", cfg, tiny_dataset, [source]) == {"standard": source}
    metrics.write_text(full + '{"step": 1, "test_accuracy": 0.5, "test_loss": 2.0}\n')
    assert "extended from a shorter run" in reasons()
    metrics.write_text(full)
    shutil.rmtree(source / "standard/checkpoints/4")
    assert "not finished (newest checkpoint 3 of 4)" in reasons()
    assert in_progress.is_dir()
    (source / "config.json").write_text("{not json")
    assert "could not be read" in reasons()


def test_train_reuses_a_probed_run_without_its_probe_records(tmp_path, tiny_config, tiny_dataset):
    """Probing does not change training, so ``train --reuse`` takes a probed run's variant (its
    checkpoints and metrics, not its probe records); order of the reports follows the config."""
    cfg = tiny_config.replace(steps=3, variants=("standard",))
    run(cfg, tmp_path / "probed", progress=False, dataset=tiny_dataset)
    reports = run(
        cfg.replace(variants=("batchnorm", "standard")),
        tmp_path / "trained",
        progress=False,
        probe_enabled=False,
        dataset=tiny_dataset,
        reuse=[tmp_path / "probed"],
    )
    assert [(r.variant, r.reused_from) for r in reports] == [
        ("batchnorm", None),
        ("standard", str(tmp_path / "probed")),
    ]
    copied = tmp_path / "trained/standard"
    assert (copied / "metrics.jsonl").exists() and not (copied / "probe.jsonl").exists()


def test_resume_past_a_damaged_newest_checkpoint_equals_an_uninterrupted_run(
    tmp_path, tiny_config, tiny_dataset
):
    cfg = tiny_config.replace(variants=("batchnorm",))
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run(cfg, whole, progress=False, dataset=tiny_dataset)
    run(cfg.replace(steps=4), cut, progress=False, dataset=tiny_dataset)
    newest = cut / "batchnorm" / "checkpoints" / "4" / "state.npz"
    newest.write_bytes(newest.read_bytes()[:1000])  # a disk that filled up, a copy cut short
    with pytest.warns(DamagedCheckpointWarning, match="4/state.npz is damaged"):
        run(cfg, cut, resume=True, progress=False, dataset=tiny_dataset)
    for name in ("metrics.jsonl", "probe.jsonl"):
        a, b = (d / "batchnorm" / name for d in (whole, cut))
        assert a.read_bytes() == b.read_bytes(), name
    for step in (3, 4, 6):
        a, b = (d / "batchnorm" / "checkpoints" / str(step) / "state.npz" for d in (whole, cut))
        assert a.read_bytes() == b.read_bytes(), step


def test_reprobe_leaves_a_damaged_checkpoint_out_and_says_so(tmp_path, tiny_config, tiny_dataset):
    cfg = tiny_config.replace(variants=("standard",), steps=3)
    run(cfg, tmp_path / "r", progress=False, dataset=tiny_dataset)
    damaged = tmp_path / "r" / "standard" / "checkpoints" / "1" / "state.npz"
    damaged.write_bytes(damaged.read_bytes()[:-200])
    with pytest.warns(DamagedCheckpointWarning, match="1/state.npz is damaged.*step 1 left out"):
        written = reprobe(tmp_path / "r", progress=False, dataset=tiny_dataset)
    assert [r["step"] for r in read_rows(written["standard"])] == [0, 2, 3]


def test_divergence_stops_the_variant_with_a_record_and_keep_going_trains_on(
    tmp_path, tiny_config, tiny_dataset
):
    cfg = with_(tiny_config, steps=8, variants=("standard",), optimizer={"learning_rate": 1e4})
    said = []
    (report,) = run(cfg, tmp_path / "stop", progress=False, dataset=tiny_dataset, say=said.append)
    record = load_divergence(tmp_path / "stop")["standard"]
    assert report.diverged == record and record["stopped"] and record["learning_rate"] == 1e4
    rows = [r for r in read_rows(tmp_path / "stop" / "standard" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows][-1] == record["step"] < 7
    assert all(np.isfinite(r["loss"]) for r in rows[:-1]) and not np.isfinite(rows[-1]["loss"])
    assert record["last_finite_step"] == record["step"] - 1
    assert said == [divergence_line("standard", record)]
    assert f"standard diverged at step {record['step']}: training loss nan" in said[0]
    # No state past the non-finite loss's step is saved: its update made it non-finite.
    assert (
        max(Checkpointer(tmp_path / "stop" / "standard" / "checkpoints").steps()) <= record["step"]
    )
    # Resumed, it stays stopped; with keep_going it trains on to the end.
    (again,) = run(cfg, tmp_path / "stop", resume=True, progress=False, dataset=tiny_dataset)
    assert again.steps_run == 0 and again.diverged == record
    (on,) = run(cfg, tmp_path / "on", progress=False, dataset=tiny_dataset, keep_going=True)
    assert on.steps_run == 8 and on.diverged["stopped"] is False
    assert on.diverged["step"] == record["step"]


def test_a_resnet_with_batchnorm_trains_and_probes(tmp_path, tiny_config, tiny_dataset):
    cfg = with_(
        tiny_config, steps=3, variants=("batchnorm",), model={"arch": "resnet20", "width": 0.25}
    )
    (report,) = run(cfg, tmp_path / "r", progress=False, dataset=tiny_dataset)
    rows = read_rows(tmp_path / "r" / "batchnorm" / "probe.jsonl")
    assert report.steps_run == 3 and [r["step"] for r in rows] == [0, 1, 2]
    assert all(np.isfinite(r["beta"]) for r in rows)


def test_a_vision_transformer_trains_and_probes(tmp_path, tiny_config, tiny_dataset):
    cfg = with_(tiny_config, steps=3, variants=("layernorm",), model={"arch": "vit2", "width": 0.5})
    (report,) = run(cfg, tmp_path / "r", progress=False, dataset=tiny_dataset)
    rows = read_rows(tmp_path / "r" / "layernorm" / "probe.jsonl")
    assert report.steps_run == 3 and all(np.isfinite(r["beta"]) for r in rows)


def test_the_loop_queues_each_step_before_the_host_work_for_the_steps_before_it(
    monkeypatch, tmp_path, tiny_config, tiny_dataset
):
    # The device computes step n while the host fetches the rows of the steps before it and
    # starts the checkpoint of step n's starting state; the host waits only to time compilation
    # and the sampled probes, not on every probed step.
    cfg = with_(tiny_config, steps=12, eval_every=0, log_every=4)
    trainer = Trainer(cfg, "batchnorm", tiny_dataset)
    events, waits = [], []
    train_step, probe_step = trainer.train_step, trainer.probe_step
    save, flush, real_wait = runs.Checkpointer.save, runs.Recorder.flush, runs.jax.block_until_ready

    def logged_train_step(state, batch):
        events.append(("step", sum(e[0] == "step" for e in events)))  # no sync to read it
        return train_step(state, batch)

    def logged_probe_step(*args):
        events.append(("probe", events[-1][1]))
        return probe_step(*args)

    def logged_save(self, step, state, **kwargs):
        events.append(("save", step))
        return save(self, step, state, **kwargs)

    def logged_flush(self):
        if self._metrics:
            events.append(("flush", self._metrics[-1]["step"]))  # the newest row it writes
        return flush(self)

    def counted_wait(x):
        waits.append(1)
        return real_wait(x)

    trainer.train_step, trainer.probe_step = logged_train_step, logged_probe_step
    monkeypatch.setattr(runs.Checkpointer, "save", logged_save)
    monkeypatch.setattr(runs.Recorder, "flush", logged_flush)
    monkeypatch.setattr(runs.jax, "block_until_ready", counted_wait)
    report = train_variant(trainer, tmp_path / "batchnorm")
    assert report.steps_run == report.probes_run == 12
    assert events[:2] == [("step", 0), ("probe", 0)]
    for n in range(1, 12):
        i = events.index(("save", n))
        assert events[i - 3 : i] == [("step", n), ("probe", n), ("flush", n - 1)]
    # One wait for compilation, two for each of the 3 sampled probes (before and after it).
    assert len(waits) == 1 + 2 * 3
    assert report.compile_s <= report.wall_s and report.probe_s < report.wall_s


def test_probe_timing_counts_the_unsampled_steps_at_the_sampled_mean():
    timing = ProbeTiming(first=3, every=25)
    assert [i for i in range(60) if timing.samples(i)] == [0, 1, 2, 25, 50]
    assert timing.estimate(0) == 0.0
    timing.add(0, 5.0)  # the first includes compilation
    assert timing.estimate(1) == 5.0
    for index, seconds in ((1, 1.0), (2, 2.0), (3, None), (25, 3.0)):
        timing.add(index, seconds)
    assert timing.estimate(60) == pytest.approx(5.0 + 2.0 * 59)
