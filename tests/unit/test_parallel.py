"""Parallel sweeps without starting workers: device plans, a refused --devices, the progress count
(the workers themselves: integration/test_parallel_workers.py)."""

from __future__ import annotations

import json

import pytest
from helpers import parallel_config

from landscape.config import RunConfig
from landscape.parallel import Backend, plan_slots, run_parallel
from landscape.sweep import SweepError

GRID = {"seed": [0, 1]}


@pytest.fixture(scope="module")
def base() -> RunConfig:
    """The base configuration of integration/test_parallel_workers.py: conftest's tiny VGG-11
    (width 1/16, batch 16, synthetic data), one variant, 20 steps, every step checkpointed and
    probed."""
    return parallel_config()


def test_plan_slots_splits_cores_and_devices():
    cpu = Backend("cpu", 4, "test")
    slots = plan_slots(2, cpu, cpus=[0, 1, 2, 3])
    assert [s.env["LANDSCAPE_WORKER_CPUS"] for s in slots] == ["0,1", "2,3"]
    assert [s.env["OMP_NUM_THREADS"] for s in slots] == ["2", "2"]
    assert [s.label for s in plan_slots(3, cpu, cpus=[4, 5, 6, 7])] == [
        "cpu cores 4",
        "cpu cores 5",
        "cpu cores 6",
    ]  # 4 // 3 = 1 core each; the fourth stays idle
    with pytest.raises(SweepError, match="only 4 CPU cores"):
        plan_slots(5, cpu, cpus=[0, 1, 2, 3])
    shared = plan_slots(3, cpu, cpus=[0, 1], oversubscribe=True)
    assert [s.env["LANDSCAPE_WORKER_CPUS"] for s in shared] == ["0", "1", "0"]

    gpus = Backend("cuda", 4, "test")
    slots = plan_slots(2, gpus, env={})
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0,1", "2,3"]
    assert [s.devices for s in slots] == [2, 2]
    # The parent's own CUDA_VISIBLE_DEVICES are the ids that get split.
    slots = plan_slots(2, Backend("cuda", 2, "test"), env={"CUDA_VISIBLE_DEVICES": "3,5"})
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["3", "5"]
    with pytest.raises(SweepError, match="--oversubscribe"):
        plan_slots(3, Backend("cuda", 2, "test"), env={})
    shared = plan_slots(4, Backend("cuda", 2, "test"), env={}, oversubscribe=True)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in shared] == ["0", "1", "0", "1"]
    assert shared[0].env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.450"

    tpu = plan_slots(2, Backend("tpu", 4, "test"), env={})
    assert [s.env["TPU_VISIBLE_CHIPS"] for s in tpu] == ["0,1", "2,3"]
    assert tpu[0].env["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,2,1"
    assert tpu[0].env["TPU_PROCESS_PORT"] != tpu[1].env["TPU_PROCESS_PORT"]
    with pytest.raises(SweepError, match="cannot be shared"):
        plan_slots(5, Backend("tpu", 4, "test"), env={}, oversubscribe=True)
    with pytest.raises(SweepError, match="positive"):
        plan_slots(0, cpu)


def test_more_devices_per_run_than_a_worker_has_is_refused(base, tmp_path):
    with pytest.raises(SweepError, match="--devices 2: each of the 2 workers has only 1"):
        run_parallel(
            tmp_path / "s", base, GRID, parallel=2, devices=2, backend=Backend("cuda", 2, "test")
        )


def test_step_counter_starts_over_when_a_resumed_run_rewrites_its_records(tmp_path):
    """The progress count reads only new bytes, and starts over when the file is replaced (a
    resumed run drops the rows past its checkpoint by rewriting the file)."""
    from landscape.parallel import _StepCounter

    path = tmp_path / "standard" / "metrics.jsonl"
    path.parent.mkdir()

    def write(steps, mode="w"):
        with open(path, mode) as f:
            f.writelines(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in steps)

    counter = _StepCounter(tmp_path, ["standard"])
    assert counter() == 0
    write(range(5))
    assert counter() == 5
    write(range(5, 7), mode="a")
    assert counter() == 7
    replacement = path.with_suffix(".tmp")
    replacement.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(3)))
    replacement.replace(path)
    assert counter() == 3
