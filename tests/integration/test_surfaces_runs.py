"""Surfaces of a trained run (slices, interpolation, the commands) and over 8 host devices."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import REPO
from typer.testing import CliRunner

from landscape import surface_records as records
from landscape.analyses import pictures
from landscape.config import CheckpointConfig, ModelConfig, ProbeConfig, RunConfig

SHARDED_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from landscape import surfaces

    def metric_fn(point, batch):
        w = point["params"]["w"]
        return jnp.stack([jnp.sum(jnp.tanh(batch["x"] @ w) ** 2), jnp.sum(w)])

    rng = np.random.default_rng(0)
    origin = {"params": {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}, "batch_stats": {}}
    dirs = tuple(
        {"params": {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}, "batch_stats": {}}
        for _ in range(2)
    )
    batches = {"x": jnp.asarray(rng.normal(size=(1, 5, 3)), jnp.float32)}
    coords = jnp.asarray(rng.uniform(-1, 1, size=(16, 2)), jnp.float32)
    mesh = surfaces.point_mesh()
    sharded = surfaces.make_grid_fn(metric_fn, strategy="map", mesh=mesh)
    single = surfaces.make_grid_fn(metric_fn, strategy="map")
    out = sharded(origin, dirs, coords, batches)
    ref = single(origin, dirs, coords, batches)
    hlo = sharded.lower(origin, dirs, coords, batches).compile().as_text()
    print(json.dumps({
        "devices": jax.device_count(),
        "max_diff": float(np.max(np.abs(np.asarray(out) - np.asarray(ref)))),
        "spec": list(out.sharding.spec),
        "shard_shapes": sorted({tuple(s.data.shape) for s in out.addressable_shards}),
        "shard_devices": len({s.device for s in out.addressable_shards}),
        "local_coords_in_hlo": "f32[2,2]" in hlo,
        "full_coords_in_hlo": "f32[16,2]" in hlo,
    }))
    """
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from landscape.data import load_dataset
    from landscape.runs import run

    dataset = load_dataset("synthetic", progress=False)  # what the CLI loads for this run
    config = RunConfig(
        preset="test",
        data="synthetic",
        seed=1,
        steps=3,
        batch_size=16,
        eval_every=0,
        eval_batches=1,
        log_every=1,
        model=ModelConfig(width=0.125, conv_impl="xla"),
        checkpoint=CheckpointConfig(every=1, max_to_keep=None, keep_period=None),
        probe=ProbeConfig(enabled=False),
    )
    run_dir = tmp_path_factory.mktemp("surf") / "run"
    run(config, run_dir, probe_enabled=False, progress=False, dataset=dataset)
    return run_dir, dataset


def _loss_at(run_dir, dataset, variant, step, batch_step):
    """The probe's loss at a checkpoint on one step's batch, computed the trainer's way."""
    from landscape.checkpoints import Checkpointer
    from landscape.rundir import load_config
    from landscape.runs import Trainer
    from landscape.train import step_batch

    config = load_config(run_dir)
    trainer = Trainer(config, variant, dataset)
    with Checkpointer(run_dir / variant / "checkpoints") as ckpt:
        state = ckpt.restore(step, trainer.initial_state())
    batch = step_batch(state.replace(step=batch_step), trainer.train_source(batch_step))
    return float(trainer.loss_fn(state.params, state.batch_stats, batch)[0])


def test_sharding_over_8_host_devices_splits_the_points_and_matches_one_device():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO),
    }
    out = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], capture_output=True, text=True, env=env, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    assert result["max_diff"] < 1e-6
    assert result["spec"] == ["points"]
    assert result["shard_shapes"] == [[2, 2]] and result["shard_devices"] == 8
    # The compiled program works on each device's 2 points, not on all 16.
    assert result["local_coords_in_hlo"] and not result["full_coords_in_hlo"]


def test_1d_slice_at_zero_and_interpolation_endpoints_are_the_checkpoint_losses(tiny_run):
    run_dir, dataset = tiny_run
    paths = pictures.surface(
        run_dir, step=2, grid=(-1.0, 1.0, 3), dataset=dataset, variants=["batchnorm"]
    )
    rec = records.load_record(paths["batchnorm"])
    assert rec["header"]["settings"]["mode"] == "train" and rec["done"] == 3
    assert rec["loss"][1] == pytest.approx(_loss_at(run_dir, dataset, "batchnorm", 2, 2), rel=1e-5)
    assert 0.0 <= rec["accuracy"][1] <= 1.0
    paths = pictures.interpolate(
        run_dir, start=1, end="final", grid=(-0.5, 1.5, 5), dataset=dataset, variants=["batchnorm"]
    )
    rec = records.load_record(paths["batchnorm"])
    assert rec["header"]["settings"]["to"] == 3
    t = rec["axes"][0]
    assert t[1] == 0.0 and t[3] == 1.0
    # Both ends on the batch of the first checkpoint's step (1).
    assert rec["loss"][1] == pytest.approx(_loss_at(run_dir, dataset, "batchnorm", 1, 1), rel=1e-5)
    assert rec["loss"][3] == pytest.approx(_loss_at(run_dir, dataset, "batchnorm", 3, 1), rel=1e-5)


def test_cli_surface_and_interpolate_write_records_and_figures(tiny_run):
    from landscape.app.cli import app

    run_dir, _ = tiny_run
    runner = CliRunner()
    args = ["surface", str(run_dir), "--step", "2", "--dims", "2", "--range", "-1:1:5"]
    result = runner.invoke(app, [*args, "--data", "synthetic", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "train mode" in result.output
    for variant in ("standard", "batchnorm"):
        rec = records.load_record(run_dir / variant / "surfaces" / "step2_2d_random.jsonl")
        assert rec["loss"].shape == (5, 5) and np.all(np.isfinite(rec["loss"]))
    figures = run_dir / "figures"
    assert (figures / "surface_step2_2d_random_contour.png").stat().st_size > 0
    assert (figures / "surface_step2_2d_random_3d.png").stat().st_size > 0
    # Different settings under the same name: one line, exit 2.
    result = runner.invoke(app, [*args, "--seed", "5", "--data", "synthetic", "--no-progress"])
    assert result.exit_code == 2 and "other settings" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(
        app,
        [
            *("interpolate", str(run_dir), "--from", "init", "--to", "final"),
            *("--range", "-0.5:1.5:5", "--data", "synthetic", "--no-progress"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (figures / "interpolation_interp_0_3.png").stat().st_size > 0
    result = runner.invoke(app, ["surface", str(run_dir), "--step", "99", "--data", "synthetic"])
    assert result.exit_code == 2
    assert "no checkpoint at step 99" in result.output and "available: 0, 1, 2, 3" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    # landscape plot and the report pick the records up.
    assert runner.invoke(app, ["plot", str(run_dir), "--formats", "png"]).exit_code == 0
    assert runner.invoke(app, ["report", str(run_dir)]).exit_code == 0
    assert "Loss-landscape pictures" in (run_dir / "report.html").read_text()
