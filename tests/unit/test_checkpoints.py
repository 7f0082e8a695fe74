"""Checkpoints: both formats round-trip a TrainState, retention, crash leftovers, errors."""

import errno
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_state

from landscape.checkpoints import (
    STATE_FILE,
    Checkpointer,
    CheckpointWriteError,
    DamagedCheckpointError,
    DamagedCheckpointWarning,
    gathers_by_default,
    kept_steps,
    writer_count,
)
from landscape.config import CheckpointConfig


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("fmt", ["npz", "orbax"])
def test_round_trip_both_formats(tmp_path, fmt):
    state = make_state()
    config = CheckpointConfig(format=fmt)
    with Checkpointer(tmp_path / "c", config) as ckpt:
        ckpt.save(3, state)
        ckpt.save(4, make_state(1))
    with Checkpointer(tmp_path / "c") as ckpt:  # read back with the default (npz) reader
        assert ckpt.steps() == [3, 4] and ckpt.latest_step() == 4
        template = make_state(5)
        assert_trees_equal(ckpt.restore(3, template), state)
        assert_trees_equal(ckpt.restore(None, template), make_state(1))


def test_npz_save_returns_before_the_write_and_close_finishes_it(tmp_path):
    ckpt = Checkpointer(tmp_path / "c")
    for step in range(6):
        ckpt.save(step, make_state(step))
    ckpt.close()
    assert ckpt.steps() == list(range(6))
    assert all((tmp_path / "c" / str(s) / STATE_FILE).exists() for s in range(6))
    assert not list((tmp_path / "c").glob(".tmp-*"))


def test_retention_matches_orbax_semantics(tmp_path):
    config = CheckpointConfig(max_to_keep=2, keep_period=5)
    assert kept_steps(list(range(13)), config) == [0, 5, 10, 11, 12]
    assert kept_steps(list(range(4)), CheckpointConfig(keep_all=True, max_to_keep=1)) == [
        0,
        1,
        2,
        3,
    ]
    for fmt in ("npz", "orbax"):
        cfg = CheckpointConfig(max_to_keep=2, keep_period=5, format=fmt)
        with Checkpointer(tmp_path / fmt, cfg) as ckpt:
            for step in range(13):
                ckpt.save(step, make_state())
        assert Checkpointer(tmp_path / fmt).steps() == [0, 5, 10, 11, 12], fmt


def test_several_writers_keep_every_state_and_the_same_checkpoints(tmp_path):
    # Writers finish out of order; what is kept and what each step holds must not depend on it.
    config = CheckpointConfig(max_to_keep=3, keep_period=7)
    states = [
        make_state().replace(step=jnp.asarray(step), params={"w": jnp.full((64, 64), step)})
        for step in range(30)
    ]
    with Checkpointer(tmp_path / "c", config, writers=4) as ckpt:
        for step, state in enumerate(states):
            ckpt.save(step, state)
    assert not list((tmp_path / "c").glob(".*")), "a temporary or dropped checkpoint is left"
    reader = Checkpointer(tmp_path / "c", config)
    assert reader.steps() == kept_steps(list(range(30)), config) == [0, 7, 14, 21, 27, 28, 29]
    for step in reader.steps():
        restored = reader.restore(step, states[0])
        assert int(restored.step) == step
        np.testing.assert_array_equal(restored.params["w"], np.full((64, 64), step))


def test_gathering_on_the_device_writes_the_same_files(tmp_path):
    # The accelerator's path (one buffer per dtype, cut back on the host) forced on the CPU:
    # every member of the file must be bit for bit the leaf-by-leaf path's, mixed dtypes,
    # scalars and empty leaves included, and restore to the state.
    state = make_state(2).replace(
        step=jnp.asarray(7, jnp.int32),
        params={
            "w": jnp.arange(12.0).reshape(3, 4) / 7,
            "b": jnp.asarray([-0.0, np.nan, np.inf], jnp.float32),
            "half": jnp.linspace(0, 1, 5, dtype=jnp.bfloat16),
            "empty": jnp.zeros((0, 3)),
            "count": jnp.asarray([3, -4], jnp.int32),
        },
    )
    for gather in (True, False):
        with Checkpointer(tmp_path / str(gather), gather=gather) as ckpt:
            ckpt.save(1, state)
    with (
        np.load(tmp_path / "True" / "1" / STATE_FILE) as gathered,
        np.load(tmp_path / "False" / "1" / STATE_FILE) as leaf_by_leaf,
    ):
        assert gathered.files == leaf_by_leaf.files
        for name in gathered.files:
            a, b = gathered[name], leaf_by_leaf[name]
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert a.tobytes() == b.tobytes(), name
    restored = Checkpointer(tmp_path / "True").restore(1, state)
    assert_trees_equal(restored, state)


def test_a_cpu_state_is_copied_leaf_by_leaf():
    # The copy to host costs nothing on a CPU; gathering would only add a copy of the state.
    assert not gathers_by_default(make_state())
    assert not gathers_by_default({"w": np.zeros(3)})  # not JAX arrays at all


def test_a_bfloat16_checkpoint_is_not_read_as_another_two_byte_dtype(tmp_path):
    # npy stores bfloat16 as raw 2-byte values; only bfloat16 may read them back.
    state = {"w": jnp.asarray([1.5, 2.0], jnp.bfloat16)}
    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(0, state)
        for other in (jnp.float16, jnp.int16):
            with pytest.raises(ValueError, match="expected"):
                ckpt.restore(0, {"w": jnp.zeros(2, other)})
        assert ckpt.restore(0, state)["w"].dtype == jnp.bfloat16


def test_writer_count_leaves_small_machines_one_writer():
    assert writer_count(2) == writer_count(4) == 1
    assert writer_count(16) == 4 and writer_count(64) == 4 and writer_count(8) == 2


def test_restore_refuses_another_structure(tmp_path):
    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(0, make_state())
        wrong = make_state().replace(params={"other": jnp.zeros(3)})
        with pytest.raises(ValueError, match="another structure"):
            ckpt.restore(0, wrong)
        bigger = jax.tree.map(lambda a: a, make_state())
        bigger = bigger.replace(
            batch_stats={"BatchNorm_0": {"mean": jnp.zeros(5), "var": jnp.zeros(4)}}
        )
        with pytest.raises(ValueError, match="expected float32"):
            ckpt.restore(0, bigger)
        with pytest.raises(FileNotFoundError):
            ckpt.restore(9, make_state())


def test_interrupted_write_leaves_no_checkpoint_and_is_cleaned(tmp_path):
    directory = tmp_path / "c"
    with Checkpointer(directory) as ckpt:
        ckpt.save(0, make_state())
    # What a write killed before its rename leaves behind: a temporary directory.
    leftover = directory / ".tmp-1"
    leftover.mkdir()
    (leftover / STATE_FILE).write_bytes(b"truncated")
    ckpt = Checkpointer(directory)
    assert ckpt.steps() == [0] and not leftover.exists()
    ckpt.close()


def test_a_failed_write_is_reported_not_swallowed(tmp_path):
    directory = tmp_path / "c"
    ckpt = Checkpointer(directory)
    ckpt.save(0, make_state())
    ckpt.wait()
    # The checkpoint directory disappears under the run (a full or unmounted disk, say).
    shutil.rmtree(directory)
    directory.write_text("not a directory")
    ckpt.save(1, make_state())
    with pytest.raises(CheckpointWriteError, match="writing checkpoint 1 failed"):
        ckpt.wait()
    ckpt.close()


def test_a_full_disk_says_which_file_and_how_much_and_leaves_the_run_as_it_was(
    tmp_path, monkeypatch
):
    directory = tmp_path / "c"
    with Checkpointer(directory) as ckpt:
        ckpt.save(0, make_state())

    def full(file, **arrays):
        file.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    ckpt = Checkpointer(directory)
    ckpt.save(1, make_state(1))
    with pytest.raises(
        CheckpointWriteError, match=r"No space left on device \(it needs 0\.\d MB\)"
    ) as err:
        ckpt.wait()
    assert err.value.errno == errno.ENOSPC and err.value.filename.endswith("1/state.npz")
    ckpt.close()
    assert sorted(p.name for p in directory.iterdir()) == ["0"]


def _damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one flipped bit inside an array's bytes: the member's CRC-32 no longer matches
        data[len(data) // 3] ^= 0x10
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_a_damaged_checkpoint_is_caught_and_the_previous_one_used(tmp_path, how):
    with Checkpointer(tmp_path / "c") as ckpt:
        for step in range(3):
            ckpt.save(step, make_state(step))
    _damage(tmp_path / "c" / "2" / STATE_FILE, how)
    with Checkpointer(tmp_path / "c") as ckpt:
        with pytest.raises(DamagedCheckpointError, match=r"checkpoint .*2/state.npz is damaged"):
            ckpt.restore(2, make_state(9))
        with pytest.warns(DamagedCheckpointWarning, match="continuing from the previous"):
            step, state = ckpt.restore_newest_intact(make_state(9))
        assert step == 1
        assert_trees_equal(state, make_state(1))
        with pytest.warns(DamagedCheckpointWarning, match="step 2 left out"):
            assert ckpt.restore_or_skip(2, make_state(9)) is None
        assert_trees_equal(ckpt.restore_or_skip(0, make_state(9)), make_state(0))
