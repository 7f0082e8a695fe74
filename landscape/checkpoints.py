"""Checkpoints of the training state: save, restore, list steps, retention.

The paper's analysis wants a checkpoint at every step, so saving must cost next to nothing.
The default format (``npz``) writes each checkpoint as one uncompressed ``state.npz`` per step,
from background threads: ``save`` only hands the (immutable) device arrays to a writer and
returns, the copy to host and the write overlap the next training steps. On an accelerator a
step can take less time than writing its checkpoint (the copy and the members' CRC-32), so
machines with many cores run several writers at once (``writer_count``); the checkpoints may
then be completed out of order, which retention and resume do not depend on. There, too,
starting one host copy per leaf (a state has dozens) costs the training thread more than the
step's own dispatch, so for a state on one accelerator ``save`` first gathers the leaves into
one buffer per dtype on the device (one compiled call, exact: a concatenation) and copies
those; the writer cuts the host buffers back into the leaves (docs/performance.md#on-a-gpu).
Each checkpoint is written into a temporary directory and renamed into place only when
complete, so a run killed mid-write never leaves a half-written checkpoint that is read as good.
A checkpoint damaged afterwards (a truncated file, flipped bits) is caught on load: ``state.npz``
is a zip archive whose members each carry a CRC-32 that reading checks, and ``restore`` raises
``DamagedCheckpointError`` for it, so callers can fall back to an intact one (docs/layout.md).

Orbax's ``CheckpointManager`` (``format="orbax"``) is kept for interoperability; its per-save
bookkeeping runs on the training thread, so it slows every step, where the npz writer does all
its work on its own thread (``landscape bench`` measures both; docs/performance.md has the
figures). ``restore`` reads either format,
so runs saved by earlier versions stay readable.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import re
import shutil
import threading
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.config import CheckpointConfig

# Orbax logs every save at INFO level; a run saving each step would drown its own progress bar.
logging.getLogger("absl").setLevel(logging.WARNING)

FORMATS = ("npz", "orbax")
STATE_FILE = "state.npz"
_TMP_PREFIX = ".tmp-"
_DELETE_PREFIX = ".del-"  # a checkpoint retention dropped, renamed away before it is removed


def writer_count(cpu_count: int | None = None) -> int:
    """Returns how many threads write npz checkpoints at once on a machine with ``cpu_count``
    cores (default: this one's): one on small machines, whose cores the training needs, up to
    four where cores are plenty. Zlib's CRC-32 and file writes release the GIL, so the writers
    overlap."""
    cores = os.cpu_count() if cpu_count is None else cpu_count
    return max(1, min(4, (cores or 1) // 4))


class DamagedCheckpointError(Exception):
    """A checkpoint that exists but cannot be read back intact (truncated, corrupted)."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk, a read-only directory): the ``OSError`` with
    the file, and the size the checkpoint needed. Nothing half-written is left behind."""


class DamagedCheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped: resume fell back to an older one, or an analysis left
    that step out."""


def _leaf_name(path: tuple) -> str:
    """Returns a stable '/'-joined name for a pytree key path (the npz member name)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _is_orbax_step(path: Path) -> bool:
    return path.is_dir() and path.name.isdigit() and (path / "_CHECKPOINT_METADATA").exists()


def _is_npz_step(path: Path) -> bool:
    return path.is_dir() and path.name.isdigit() and (path / STATE_FILE).exists()


def kept_steps(steps: list[int], config: CheckpointConfig) -> list[int]:
    """Returns the steps retention keeps: the newest ``max_to_keep`` and every ``keep_period``-th."""
    if config.keep_all or config.max_to_keep is None:
        return sorted(steps)
    newest = set(sorted(steps)[-config.max_to_keep :]) if config.max_to_keep > 0 else set()
    period = config.keep_period
    return sorted(s for s in steps if s in newest or (period and s % period == 0))


def _gather_by_dtype(arrays: list[jax.Array]) -> tuple[jax.Array, ...]:
    """Returns the arrays flattened and concatenated, one 1-D buffer per dtype, dtypes in order
    of first appearance and each dtype's arrays in their order (``_cut_by_dtype`` undoes it)."""
    groups: dict[np.dtype, list[jax.Array]] = {}
    for a in arrays:
        groups.setdefault(np.dtype(a.dtype), []).append(a.ravel())
    return tuple(jnp.concatenate(g) if len(g) > 1 else g[0] for g in groups.values())


_gather_on_device = jax.jit(_gather_by_dtype)


def _cut_by_dtype(buffers: list[np.ndarray], shapes: list[tuple[tuple[int, ...], np.dtype]]):
    """Returns the arrays of ``shapes`` (shape, dtype) cut out of ``_gather_by_dtype``'s buffers
    (copied to host): views, no copies."""
    order = list(dict.fromkeys(dtype for _, dtype in shapes))
    totals = dict.fromkeys(order, 0)
    for shape, dtype in shapes:
        totals[dtype] += int(np.prod(shape, dtype=np.int64))
    if [(b.dtype, b.size) for b in buffers] != [(d, totals[d]) for d in order]:
        raise ValueError("the gathered buffers do not hold the state's leaves")  # a defect
    offsets = dict.fromkeys(order, 0)
    out = []
    for shape, dtype in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        buffer = buffers[order.index(dtype)]
        out.append(buffer[offsets[dtype] : offsets[dtype] + size].reshape(shape))
        offsets[dtype] += size
    return out


def gathers_by_default(state: Any) -> bool:
    """Returns whether ``Checkpointer.save`` gathers ``state``'s leaves on the device before
    copying them to host by default: when every leaf is a JAX array on one and the same GPU or
    TPU. A state replicated over several devices is copied leaf by leaf, as on a CPU: gathering
    would run on every device, and on several hosts it would be a program that only the
    writing process runs."""
    arrays = jax.tree.leaves(state)
    if not arrays or not all(isinstance(a, jax.Array) for a in arrays):
        return False
    try:
        devices = {frozenset(a.sharding.device_set) for a in arrays}
    except Exception:  # an array deleted or not addressable here: copy leaf by leaf
        return False
    if len(devices) != 1:
        return False
    (device_set,) = devices
    return len(device_set) == 1 and next(iter(device_set)).platform != "cpu"


def _place_like(array: np.ndarray, leaf: Any) -> jax.Array:
    """Returns ``array`` on the devices and with the sharding of ``leaf`` (a replicated state on a
    mesh stays replicated; on several hosts each process places its own shards)."""
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        return jax.device_put(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def complete_steps(directory: str | os.PathLike) -> list[int]:
    """Returns the steps of the complete checkpoints (either format) in ``directory``, ascending.

    Reads only: unlike opening a ``Checkpointer``, it leaves another process's writes in
    progress alone (``--reuse`` looks into runs that may still be training).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in directory.iterdir()
        if re.fullmatch(r"\d+", p.name) and (_is_npz_step(p) or _is_orbax_step(p))
    )


class Checkpointer:
    """Saves and restores a pytree (the ``TrainState``) under ``directory/<step>/``.

    ``save`` returns before the write ends; ``wait`` or ``close`` block until every started write
    is on disk. At most ``queue_size`` states (at least one per writer) wait to be written, so
    memory stays flat when the disk is slower than training (``save`` then waits:
    back-pressure, never dropped saves). ``writers`` threads write (default ``writer_count()``).
    ``gather`` says whether ``save`` gathers the leaves into one buffer per dtype on the device
    before copying them to host (default None: on GPUs and TPUs, where it saves the training
    thread dozens of copy calls; on a CPU the copy is free and the gathering is not). The files
    are the same either way.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        config: CheckpointConfig | None = None,
        *,
        queue_size: int = 2,
        writers: int | None = None,
        gather: bool | None = None,
    ):
        self.config = config or CheckpointConfig()
        fmt = getattr(self.config, "format", "npz")
        if fmt not in FORMATS:
            raise ValueError(f"unknown checkpoint format {fmt!r}; choose one of {FORMATS}")
        self.format = fmt
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._orbax = None
        self._error: BaseException | None = None
        self._writer_count = max(1, writer_count() if writers is None else writers)
        self._gather = gather
        self._layout: tuple[Any, list[str], bool] | None = None  # treedef, names, gathering
        self._queue: queue.Queue = queue.Queue(maxsize=max(queue_size, self._writer_count))
        self._writers: list[threading.Thread] = []
        # Renaming into place and retention see and change the whole directory: one at a time.
        self._directory_lock = threading.Lock()
        self._set_aside_count = itertools.count()
        if self.format == "orbax":
            self._orbax = self._orbax_manager()
        else:
            # Leftovers of a write interrupted by a crash are incomplete by construction, and
            # those of a removal were dropped already.
            for prefix in (_TMP_PREFIX, _DELETE_PREFIX):
                for leftover in self.directory.glob(f"{prefix}*"):
                    shutil.rmtree(leftover, ignore_errors=True)

    # --- saving -------------------------------------------------------------------------------

    def save(self, step: int, state: Any, *, force: bool = False) -> None:
        """Starts writing ``state`` as checkpoint ``step`` (returns before the write ends).

        ``force`` is accepted for orbax compatibility; every npz save is written.
        """
        if self._orbax is not None:
            import orbax.checkpoint as ocp

            self._orbax.save(int(step), args=ocp.args.StandardSave(state), force=force)
            return
        self._raise_writer_error()
        if jax.process_index() != 0:
            # The state is replicated: on several hosts one process writes the shared directory.
            return
        if not self._writers:
            for _ in range(self._writer_count):
                writer = threading.Thread(target=self._write_loop, daemon=True)
                writer.start()
                self._writers.append(writer)
        # JAX arrays are immutable and the train step donates nothing, so the copies to host can
        # start here and be awaited by the writer thread while the next steps run.
        values, treedef = jax.tree_util.tree_flatten(state)
        if self._layout is None or self._layout[0] != treedef:
            # A run saves states of one structure and placement: names and the way of copying
            # are worked out once, off the per-step path.
            names = [_leaf_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
            gather = gathers_by_default(values) if self._gather is None else self._gather
            gather = gather and bool(values) and all(isinstance(v, jax.Array) for v in values)
            self._layout = (treedef, names, gather)
        _, names, gather = self._layout
        if gather:
            buffers = _gather_on_device(values)
            for buffer in buffers:
                buffer.copy_to_host_async()
            shapes = [(tuple(v.shape), np.dtype(v.dtype)) for v in values]

            def fetch(buffers=buffers, shapes=shapes) -> list[np.ndarray]:
                return _cut_by_dtype([np.asarray(b) for b in buffers], shapes)
        else:
            for value in values:
                if isinstance(value, jax.Array):
                    value.copy_to_host_async()

            def fetch(values=values) -> list[np.ndarray]:
                return [np.asarray(v) for v in values]

        self._queue.put((int(step), names, fetch))

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._write(*item)
            except BaseException as error:  # reported to the training thread on its next call
                if self._error is None:
                    self._error = error
            finally:
                self._queue.task_done()

    def _write(self, step: int, names: list[str], fetch: Callable[[], list[np.ndarray]]) -> None:
        arrays = dict(zip(names, fetch(), strict=True))
        tmp = self.directory / f"{_TMP_PREFIX}{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            with open(tmp / STATE_FILE, "wb") as f:
                np.savez(f, **arrays)
        except OSError as err:
            # The temporary directory is all there is of this checkpoint: removing it leaves
            # the run as it was after the previous one.
            shutil.rmtree(tmp, ignore_errors=True)
            needed = sum(a.nbytes for a in arrays.values()) / 1e6
            raise CheckpointWriteError(
                err.errno,
                f"writing checkpoint {step} failed: {err.strerror} (it needs {needed:.1f} MB)",
                str(self.directory / str(step) / STATE_FILE),
            ) from err
        final = self.directory / str(step)
        with self._directory_lock:
            dropped = [self._set_aside(final)] if final.exists() else []
            os.replace(tmp, final)
            steps = self.steps()
            keep = set(kept_steps(steps, self.config))
            dropped += [self._set_aside(self.directory / str(s)) for s in steps if s not in keep]
        # Removing a large file can take longer than a training step on some file systems: it
        # happens outside the lock, so the other writers go on meanwhile.
        for path in dropped:
            shutil.rmtree(path, ignore_errors=True)

    def _set_aside(self, path: Path) -> Path:
        """Renames ``path`` out of the checkpoints' names (one quick rename) and returns where."""
        aside = self.directory / f"{_DELETE_PREFIX}{path.name}-{next(self._set_aside_count)}"
        os.replace(path, aside)
        return aside

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, CheckpointWriteError):
                raise error
            raise RuntimeError(
                f"writing a checkpoint to {self.directory} failed: {error}"
            ) from error

    # --- reading ------------------------------------------------------------------------------

    def restore(self, step: int | None, target: Any) -> Any:
        """Returns checkpoint ``step`` (newest if None) with the structure of ``target``.

        Raises FileNotFoundError when there is no such checkpoint, DamagedCheckpointError when
        it cannot be read back intact, and ValueError when its arrays do not match ``target``
        (another model or configuration).
        """
        self.wait()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        path = self.directory / str(int(step))
        if _is_npz_step(path):
            return self._restore_npz(path, target)
        if _is_orbax_step(path):
            import orbax.checkpoint as ocp

            manager = self._orbax or self._orbax_manager()
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
            return manager.restore(int(step), args=ocp.args.StandardRestore(abstract))
        raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory}")

    def _restore_npz(self, path: Path, target: Any) -> Any:
        leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
        try:
            # Reading each member to its end makes zipfile check its CRC-32.
            with np.load(path / STATE_FILE, allow_pickle=False) as saved:
                arrays = {name: saved[name] for name in saved.files}
        except (zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise DamagedCheckpointError(
                f"checkpoint {path / STATE_FILE} is damaged ({type(err).__name__}: {err})"
            ) from None
        names = [_leaf_name(p) for p, _ in leaves]
        if set(names) != set(arrays):
            raise ValueError(
                f"checkpoint {path} holds another structure than expected "
                f"({len(arrays)} arrays, expected {len(names)})"
            )
        restored = []
        for name, (_, leaf) in zip(names, leaves, strict=True):
            array = arrays[name]
            expected = np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
            if (
                array.dtype.kind == expected.kind == "V"
                and array.dtype.itemsize == expected.itemsize
            ):
                # npy has no code for bfloat16 (and ml_dtypes' other types of numpy's void kind):
                # it is stored as raw bytes of its width, which bfloat16 reads back exactly. A
                # float16 or int16 leaf is not void and is never reinterpreted.
                array = array.view(expected)
            if array.shape != np.shape(leaf) or array.dtype != expected:
                raise ValueError(
                    f"checkpoint {path}: {name} is {array.dtype}{list(array.shape)}, "
                    f"expected {expected}{list(np.shape(leaf))}"
                )
            restored.append(_place_like(array, leaf))
        return jax.tree_util.tree_unflatten(treedef, restored)

    def restore_or_skip(self, step: int, target: Any) -> Any | None:
        """Returns checkpoint ``step`` like ``restore``, or None when it is damaged, with a
        DamagedCheckpointWarning saying the step is left out (for the analyses over steps)."""
        try:
            return self.restore(step, target)
        except DamagedCheckpointError as err:
            warnings.warn(f"{err}; step {step} left out", DamagedCheckpointWarning, stacklevel=2)
            return None

    def restore_newest_intact(self, target: Any) -> tuple[int, Any] | None:
        """Returns ``(step, state)`` of the newest checkpoint that reads back intact, or None
        when there is none; each damaged newer one is skipped with a DamagedCheckpointWarning.
        """
        for step in reversed(self.steps()):
            try:
                return step, self.restore(step, target)
            except DamagedCheckpointError as err:
                warnings.warn(
                    f"{err}; continuing from the previous checkpoint",
                    DamagedCheckpointWarning,
                    stacklevel=2,
                )
        return None

    def steps(self) -> list[int]:
        """Returns the steps of all complete checkpoints (either format), ascending."""
        return complete_steps(self.directory)

    def latest_step(self) -> int | None:
        """Returns the newest complete checkpoint's step, or None."""
        self.wait()
        steps = self.steps()
        return steps[-1] if steps else None

    # --- lifecycle ----------------------------------------------------------------------------

    def wait(self) -> None:
        """Blocks until every started write has finished; raises if one failed."""
        if self._orbax is not None:
            self._orbax.wait_until_finished()
            return
        if self._writers:
            self._queue.join()
        self._raise_writer_error()

    def close(self) -> None:
        """Finishes every started write and stops the writer."""
        if self._orbax is not None:
            self._orbax.wait_until_finished()
            self._orbax.close()
            self._orbax = None
            return
        for _ in self._writers:
            self._queue.put(None)
        for writer in self._writers:
            writer.join()
        self._writers = []
        self._raise_writer_error()

    def _orbax_manager(self):
        import orbax.checkpoint as ocp

        config = self.config
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if config.keep_all else config.max_to_keep,
            keep_period=None if config.keep_all else config.keep_period,
            enable_async_checkpointing=True,
            create=True,
        )
        return ocp.CheckpointManager(self.directory, options=options)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
