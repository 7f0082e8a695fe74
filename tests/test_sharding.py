"""Sharding over devices: the same numbers as one device, and the compiled program splits the work.

JAX fixes the number of (host) devices when it starts, so the checks run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; one script computes everything (one set
of compilations) and the tests read its JSON answer.

Tolerances (float32): one training step from the same state, sharded or not, agrees to 1e-6
absolute in every parameter (the sums over the batch are only split differently; reversing the
batch on one device moves the parameters by as much). Over several steps a BatchNorm network
amplifies those rounding differences (seen: 2e-6 after 3 steps at lr 0.1), so whole runs are
compared at relative 1e-4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import json, re, sys, tempfile
    from pathlib import Path

    import jax, jax.numpy as jnp, numpy as np
    from landscape import sharding
    from landscape.config import CheckpointConfig, ModelConfig, ProbeConfig, RunConfig
    from landscape.data import synthetic_dataset
    from landscape.results import load, load_metrics
    from landscape.runs import Trainer, run

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    out = {"device_count": jax.device_count()}
    resolve = sharding.resolve_device_count
    out["resolved"] = [resolve(None, 16), resolve("all", 12), resolve("all", 7), resolve(2, 16)]
    errors = []
    for requested, batch in ((3, 16), (9, 18), (0, 16)):
        try:
            resolve(requested, batch)
        except ValueError as err:
            errors.append(str(err))
    out["resolve_errors"] = errors
    dataset = synthetic_dataset(seed=0, num_train=256, num_test=200)
    config = RunConfig(
        preset="test", data="synthetic", seed=1, steps=3, batch_size=16, eval_every=0,
        log_every=1, variants=("batchnorm",),
        model=ModelConfig(width=0.125, conv_impl="xla"),
        checkpoint=CheckpointConfig(every=1, max_to_keep=None, keep_period=None),
        probe=ProbeConfig(every=1, num_etas=5, strategy="map"),  # 5 etas: padded to 8
    )
    one = Trainer(config, "batchnorm", dataset)
    mesh = sharding.make_mesh(8)
    eight = Trainer(config, "batchnorm", dataset, mesh)

    # Three training steps, each from the same (single-device) state, plus the probe there.
    steps = []
    state = one.initial_state()
    out["state_spec"] = str(eight.initial_state().params["Conv3x3_0"]["kernel"].sharding.spec)
    for step in range(3):
        batch = one.train_source(step)
        sharded_batch = eight.train_source(step)
        new1, o1 = one.train_step(state, batch)
        new8, o8 = eight.train_step(sharding.place(state, sharding.replicated(mesh)), sharded_batch)
        reversed_batch = jax.tree.map(lambda x: x[::-1], batch)
        new_rev, _ = one.train_step(state, reversed_batch)
        p1 = one.probe_step(state, batch, o1.grads, o1.loss, one.etas)
        p8 = eight.probe_step(
            sharding.place(state, sharding.replicated(mesh)), sharded_batch, o8.grads, o8.loss,
            eight.etas,
        )
        steps.append({
            "loss": [float(o1.loss), float(o8.loss)],
            "params_diff": max_diff(new1.params, new8.params),
            "stats_diff": max_diff(new1.batch_stats, new8.batch_stats),
            "reversed_diff": max_diff(new1.params, new_rev.params),
            "probe1": {k: np.asarray(v).tolist() for k, v in p1._asdict().items()},
            "probe8": {k: np.asarray(v).tolist() for k, v in p8._asdict().items()},
        })
        state = new1
    out["steps"] = steps
    out["batch_spec"] = str(sharded_batch["image"].sharding.spec)
    out["batch_shard_shape"] = list(sharded_batch["image"].addressable_shards[0].data.shape)
    out["new_state_spec"] = str(new8.params["Conv3x3_0"]["kernel"].sharding.spec)
    out["probe_spec"] = str(p8.loss.sharding.spec)
    # A chunk that does not split evenly over 8 devices is replicated, with the same values.
    uneven = next(eight.test_source.chunks(6))
    out["uneven_spec"] = str(uneven["image"].sharding.spec)
    out["uneven_diff"] = max_diff(uneven, next(one.test_source.chunks(6)))

    # The compiled programs: per-device batch of 2 and all-reduces in the step; in the probe,
    # nothing but the batch and the per-eta results crosses devices.
    s8 = sharding.place(state, sharding.replicated(mesh))
    hlo = eight.train_step.lower(s8, sharded_batch).compile().as_text()
    out["train_layout"] = re.search(r"entry_computation_layout=\\{\\((.*?)\\)->", hlo).group(1)
    out["train_all_reduce"] = hlo.count("all-reduce(")
    out["train_all_gather"] = hlo.count("all-gather(")
    hlo = eight.probe_step.lower(s8, sharded_batch, o8.grads, o8.loss, eight.etas).compile().as_text()
    out["probe_all_gather_shapes"] = sorted(set(re.findall(r"= (\\w+\\[[\\d,]*\\])\\S* all-gather\\(", hlo)))
    out["probe_all_reduce_shapes"] = sorted(set(re.findall(r"= (\\w+\\[[\\d,]*\\])\\S* all-reduce\\(", hlo)))

    # Whole runs through landscape.runs.run: 8 devices against 1.
    with tempfile.TemporaryDirectory() as tmp:
        run(config, Path(tmp) / "1", progress=False, dataset=dataset, devices=1)
        # The 8-device run is interrupted after 2 steps and resumed from its checkpoint, which
        # is restored replicated over the mesh.
        run(config.replace(steps=2), Path(tmp) / "8", progress=False, dataset=dataset, devices=8)
        run(config, Path(tmp) / "8", resume=True, progress=False, dataset=dataset, devices=8)
        def records(name):
            probe = load(Path(tmp) / name)["batchnorm"]
            metrics = load_metrics(Path(tmp) / name)["batchnorm"]
            return {
                "probe_loss": probe["loss"].tolist(), "grad_dist": probe["grad_dist"].tolist(),
                "beta": probe["beta"].tolist(), "train_loss": metrics["train"]["loss"].tolist(),
                # the last evaluation (the interrupted run also evaluated at its step 2)
                "test_accuracy": metrics["test"]["test_accuracy"][-1:].tolist(),
                "test_loss": metrics["test"]["test_loss"][-1:].tolist(),
            }
        out["run"] = {"1": records("1"), "8": records("8")}
        out["provenance_devices"] = json.loads((Path(tmp) / "8" / "provenance.json").read_text())[
            "devices_used"]
    print("RESULT " + json.dumps(out))
    """
)


def run_script(script: str, devices: int) -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "PYTHONPATH": str(REPO),
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.fixture(scope="module")
def eight() -> dict:
    return run_script(SCRIPT, 8)


def test_device_count_divides_the_batch(eight):
    assert eight["resolved"] == [8, 6, 7, 2]  # "all": the most devices that split the batch
    three, nine, zero = eight["resolve_errors"]
    assert "does not divide the batch size 16" in three
    assert "choose 1 to 8" in nine and "choose 1 to 8" in zero


def test_train_step_matches_one_device(eight):
    assert eight["device_count"] == 8
    for step in eight["steps"]:
        one, sharded = step["loss"]
        assert sharded == pytest.approx(one, abs=1e-6)
        # BatchNorm's statistics are over the global batch: parameters and running averages
        # agree as closely as a reordering of the batch on one device does.
        assert step["params_diff"] < 1e-6
        assert step["stats_diff"] < 1e-6
        assert step["reversed_diff"] < 1e-6


def test_batch_is_split_and_state_replicated(eight):
    assert eight["batch_spec"] == "P('devices',)"
    assert eight["batch_shard_shape"] == [2, 32, 32, 3]  # 16 examples over 8 devices
    assert eight["state_spec"] == eight["new_state_spec"] == "P()"
    assert eight["uneven_spec"] == "P()"
    assert eight["uneven_diff"] == 0.0


def test_probe_matches_one_device(eight):
    for step in eight["steps"]:
        one, sharded = step["probe1"], step["probe8"]
        assert len(sharded["loss"]) == 5  # the 3 padding step sizes are dropped
        for key in ("loss", "grad_dist", "step_norm", "loss0", "grad_norm"):
            np.testing.assert_allclose(sharded[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert eight["probe_spec"] == "P()"  # replicated: process 0 can read it


def test_compiled_train_step_splits_the_batch(eight):
    layout = eight["train_layout"]
    # The program each device runs takes 2 of the 16 images and labels ...
    assert "f32[2,32,32,3]" in layout and "s32[2]" in layout
    assert "f32[16,32,32,3]" not in layout
    # ... and sums gradients and batch statistics across devices; nothing is gathered.
    assert eight["train_all_reduce"] > 0
    assert eight["train_all_gather"] == 0


def test_compiled_probe_only_gathers_batch_and_results(eight):
    # The batch is gathered once (every step size sees the whole batch) and the 8 padded
    # per-eta results at the end; no activation or parameter crosses devices.
    assert set(eight["probe_all_gather_shapes"]) <= {"f32[16,32,32,3]", "s32[16]", "f32[8]"}
    assert "f32[8]" in eight["probe_all_gather_shapes"]
    for shape in eight["probe_all_reduce_shapes"]:
        size = np.prod([int(d) for d in shape[shape.index("[") + 1 : -1].split(",") if d])
        assert size <= 8, shape


def test_run_records_match_one_device(eight):
    one, sharded = eight["run"]["1"], eight["run"]["8"]
    assert set(one) == set(sharded)
    for key in one:
        np.testing.assert_allclose(sharded[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert len(one["probe_loss"]) == 3 and len(one["probe_loss"][0]) == 5
    assert eight["provenance_devices"] == 8


MULTI_HOST = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from landscape import sharding

    process, count = sharding.initialize_distributed()  # before any other JAX call
    import jax
    from landscape.config import CheckpointConfig, ModelConfig, ProbeConfig, RunConfig
    from landscape.data import synthetic_dataset
    from landscape.runs import run

    config = RunConfig.from_dict(json.loads(sys.argv[2]))
    dataset = synthetic_dataset(seed=0, num_train=256, num_test=200)
    run(config, Path(sys.argv[1]), progress=False, dataset=dataset)
    print("RESULT " + json.dumps([process, count, jax.device_count(), jax.local_device_count()]))
    """
)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_device(tmp_path, tiny_config):
    """Two processes with 2 host devices each (jax.distributed over gloo) = 4 devices, one run."""
    from landscape.data import synthetic_dataset
    from landscape.results import load, load_metrics
    from landscape.runs import run

    config = tiny_config.replace(steps=3, variants=("batchnorm",), eval_every=0)
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                MULTI_HOST,
                str(tmp_path / "multi"),
                json.dumps(config.to_dict()),
            ],
            env={
                **os.environ,
                "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                "JAX_PLATFORMS": "cpu",
                "PYTHONPATH": str(REPO),
                "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(i),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for i in range(2)
    ]
    answers = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, answers, strict=True):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.split("RESULT ")[1]) for out, _ in answers]
    assert results == [[0, 2, 4, 2], [1, 2, 4, 2]]

    dataset = synthetic_dataset(seed=0, num_train=256, num_test=200)
    run(config, tmp_path / "single", progress=False, dataset=dataset, devices=1)
    multi, single = load(tmp_path / "multi")["batchnorm"], load(tmp_path / "single")["batchnorm"]
    for key in ("loss", "grad_dist", "beta"):
        np.testing.assert_allclose(multi[key], single[key], rtol=1e-4, atol=1e-6, err_msg=key)
    train = [load_metrics(tmp_path / d)["batchnorm"]["train"]["loss"] for d in ("multi", "single")]
    np.testing.assert_allclose(*train, rtol=1e-4)
    # Process 0 wrote each record once; process 1 wrote none.
    assert len(multi["step"]) == 3
    assert json.loads((tmp_path / "multi" / "provenance.json").read_text())["devices_used"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "abc"], "--devices 'abc'"),
        (["--devices", "0"], "positive number"),
        (["--devices", "2"], "choose 1 to 1"),  # this process sees one CPU device
        (["--distributed"], "--distributed needs --out"),
    ],
)
def test_bad_devices_or_distributed_is_one_line_and_exit_2(args, message, tmp_path):
    from landscape.cli import app
    from typer.testing import CliRunner

    out = [] if "--distributed" in args else ["--out", str(tmp_path / "r")]
    result = CliRunner().invoke(app, ["train", "--preset", "smoke", *out, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_distributed_without_coordinator_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM", "OMPI"))}
    proc = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "train", "--distributed", "--preset", "smoke",
         "--out", str(tmp_path / "r")],
        capture_output=True, text=True, env={**env, "PYTHONPATH": str(REPO)}, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--distributed" in proc.stderr and "coordinator" in proc.stderr
    assert "Traceback" not in proc.stderr
