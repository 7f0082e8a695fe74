"""The run directory's contract: create or reopen it, its saved configuration and provenance,
the checks that a later command uses the same data, and reusing a variant another run finished.

A run directory holds ``config.json`` (the ``RunConfig``), ``provenance.json`` (versions,
device, data checksum) and one folder per variant with its records and checkpoints. Every
function that writes into one holds its advisory lock (``.lock``, ``run_dir_lock``), so two
processes never interleave their appends.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import os
import platform
import shutil
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np

from landscape.checkpoints import complete_steps
from landscape.config import ConfigError, ModelConfig, RunConfig, is_dln, validate
from landscape.data import Dataset
from landscape.network import parameter_shapes
from landscape.results import LOCK_FILE, METRICS_FILE, PROBE_FILE, read_rows


class RunError(Exception):
    """A user-facing problem with a run (the CLI prints the one-line message, exits 2)."""


_held: dict[Path, int] = {}  # run directories this process holds, with their nesting depth


def _holder(path: Path) -> str:
    try:
        facts = json.loads(path.read_text())
        return f"process {facts['pid']} on {facts['host']} ({facts['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def check_run_dir_path(run_dir: Path) -> None:
    """Raises RunError for a run directory path that cannot be one: a dangling symbolic link,
    or a file."""
    if run_dir.is_symlink() and not run_dir.exists():
        raise RunError(
            f"{run_dir} is a symbolic link to {os.readlink(run_dir)}, which does not exist; "
            "create its target or choose another directory"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} is a file, not a run directory")


@contextlib.contextmanager
def run_dir_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Holds the advisory lock of ``run_dir`` (created if needed) for the ``with`` block.

    A second process asking for it gets a RunError naming the process that holds it. The lock
    is the kernel's (``fcntl.flock``), so it dies with its process: a crashed holder leaves a
    stale ``.lock`` file that the next command simply takes over. Nested calls in one process
    share the lock. The directory must exist; in a multi-host run only process 0, the one that
    writes, takes the lock.
    """
    run_dir = Path(run_dir)
    if jax.process_index() != 0:
        yield
        return
    check_run_dir_path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a landscape run (no such directory)")
    key = run_dir.absolute()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(
                f"{run_dir} is in use by {_holder(path)}; wait for it to finish or stop it"
            ) from None
        facts = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(facts) + "\n").encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
    finally:
        os.close(fd)  # closing releases the lock


def locks_run_dir(function: Callable) -> Callable:
    """Decorates a function taking ``run_dir`` so that it runs holding ``run_dir_lock``."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def locked(*args, **kwargs):
        run_dir = signature.bind(*args, **kwargs).arguments["run_dir"]
        with run_dir_lock(run_dir):
            return function(*args, **kwargs)

    return locked


def _has_files(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds anything but its lock file."""
    return run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir())


def prepare_run_dir(
    run_dir: Path, config: RunConfig, *, resume: bool, overwrite: bool
) -> RunConfig:
    """Creates or reopens ``run_dir`` and returns the config the run continues with.

    Writes ``config.json``. An existing directory is refused unless ``resume`` (then it must be
    a landscape run) or ``overwrite`` is given: results are never lost by accident.
    """
    config_path = run_dir / "config.json"
    check_run_dir_path(run_dir)
    if resume:
        if not config_path.exists():
            raise RunError(f"cannot resume: {run_dir} has no config.json (not a landscape run)")
    elif _has_files(run_dir):
        if not overwrite:
            raise RunError(
                f"run directory {run_dir} already exists; pass --resume to continue it "
                "or --overwrite to replace it"
            )
        if not (config_path.exists() or (run_dir / "provenance.json").exists()):
            raise RunError(
                f"refusing to overwrite {run_dir}: it does not look like a landscape run"
            )
        # Emptied in place rather than removed: the directory may be a symbolic link the user
        # made, and its lock file is held by this process.
        for entry in run_dir.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return config


def provenance(dataset: Dataset, config: RunConfig) -> dict[str, Any]:
    """Returns what is needed to trust or reproduce a run: versions, device, data, seed."""

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    device = jax.devices()[0]
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "landscape": version("landscape"),
        "jax": jax.__version__,
        "jaxlib": version("jaxlib"),
        "flax": version("flax"),
        "optax": version("optax"),
        "orbax-checkpoint": version("orbax-checkpoint"),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "device": f"{device.platform}: {getattr(device, 'device_kind', str(device))}",
        "device_count": jax.device_count(),
        "seed": config.seed,
        "dataset": dataset.name,
        "dataset_source": dataset.source,
        "dataset_sha256": dataset.checksum,
        "train_examples": int(dataset.train_images.shape[0]),
        "test_examples": int(dataset.test_images.shape[0]),
    }


# What a reused variant brings along: what training wrote, not later analyses (ICS, curvature,
# surfaces, re-probes), which the new run computes itself with its own options.
NETWORK_FILE = "network.json"  # how a variant's network is rebuilt, and its shapes
_TRAINING_OUTPUTS = (METRICS_FILE, PROBE_FILE, NETWORK_FILE)


# Settings that do not change what is trained: the variant list, where the data lies (its
# checksum is compared instead) and the preset's name.
_REUSE_IGNORES = ("variants", "data", "preset")


def reuse_mismatch(source: Path, variant: str, config: RunConfig, dataset: Dataset) -> str | None:
    """Returns why ``source/variant`` cannot stand in for training ``variant`` now, or None.

    It can when ``source`` is a run with the same settings (all but the variant list, the data's
    path and the preset's name; the probe's too when this run does not probe), trained on the
    same data (sha256) with the same JAX version on the same kind of device, and finished: its
    newest checkpoint is the last step, its final evaluation was recorded and it was not
    extended from a shorter run. Such a run is deterministic (same seed, data order and
    compiled program), so the copy equals a rerun (on a CPU with another number of cores, to
    float32 rounding: XLA splits its sums by thread). Only reads ``source``.
    """
    try:
        return _reuse_mismatch(source, variant, config, dataset)
    except (OSError, ValueError, TypeError, KeyError, RunError) as err:
        return f"{source} could not be read ({type(err).__name__}: {err})"


def _reuse_mismatch(source: Path, variant: str, config: RunConfig, dataset: Dataset) -> str | None:
    if not (source / "config.json").exists():
        return f"{source} is not a landscape run"
    saved_config = load_config(source)
    if variant not in saved_config.variants or not (source / variant).is_dir():
        return f"{source} has no {variant!r}"
    ignored = _REUSE_IGNORES if config.probe.enabled else (*_REUSE_IGNORES, "probe")
    wanted = {k: v for k, v in config.to_dict().items() if k not in ignored}
    difference = _first_difference(saved_config.to_dict(), wanted)
    if difference is not None:
        return f"{source} was run with other settings ({difference})"
    saved = load_provenance(source)
    if saved.get("dataset_sha256") != dataset.checksum:
        return f"{source} was trained on other data"
    device = jax.devices()[0]
    here = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": f"{device.platform}: {getattr(device, 'device_kind', str(device))}",
    }
    for key, value in here.items():
        if saved.get(key) != value:
            return f"{source} was run with another {key} ({saved.get(key)} vs {value})"
    if config.checkpoint.enabled:
        steps = complete_steps(source / variant / "checkpoints")
        latest = steps[-1] if steps else None
        if latest != config.steps:
            return (
                f"{source}/{variant} is not finished (newest checkpoint {latest} of {config.steps})"
            )
    tests = [r["step"] for r in read_rows(source / variant / METRICS_FILE) if "test_accuracy" in r]
    if config.steps not in tests:
        return f"{source}/{variant} has no final evaluation at step {config.steps}"
    every = config.eval_every
    if any(step != config.steps and not (every and step % every == 0) for step in tests):
        return f"{source}/{variant} was extended from a shorter run (evaluated off schedule)"
    return None


def _first_difference(saved: dict, wanted: dict, prefix: str = "") -> str | None:
    """Returns ``"key: saved vs wanted"`` for the first setting of ``wanted`` that differs."""
    for key, value in wanted.items():
        other = saved.get(key)
        if isinstance(value, dict) and isinstance(other, dict):
            found = _first_difference(other, value, f"{prefix}{key}.")
            if found is not None:
                return found
        elif other != value:
            return f"{prefix}{key}: {other} vs {value}"
    return None


def copy_variant(source: Path, target: Path, *, probes: bool = True) -> None:
    """Copies a finished variant's checkpoints and training records from ``source`` to ``target``.

    Checkpoint files are hard-linked where the file system allows (they are never written in
    place: a checkpoint is written under a temporary name and renamed, and retention only
    unlinks), copied otherwise; the records are copied. ``probes=False`` leaves the probe
    records out (for a run that does not probe). The copy is made under a temporary name and
    renamed, so an interruption never leaves a half-copied variant that looks finished.
    """
    partial = target.with_name(target.name + ".reuse-partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if (source / "checkpoints").is_dir():
        shutil.copytree(source / "checkpoints", partial / "checkpoints", copy_function=link_or_copy)
    for name in _TRAINING_OUTPUTS:
        if (source / name).exists() and (probes or name != PROBE_FILE):
            shutil.copy2(source / name, partial / name)
    partial.rename(target)


def plan_reuse(
    run_dir: Path,
    config: RunConfig,
    dataset: Dataset,
    sources: Sequence[str | os.PathLike],
    say: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Returns ``{variant: source}`` for each variant not yet begun in ``run_dir`` that the
    first matching source finished (``reuse_mismatch``). Reads only.

    Reuse is an optimisation: a source that does not exist or does not match is reported through
    ``say`` (one line per variant) and the variant is trained as usual.
    """
    reused = {}
    for variant in config.variants:
        if (run_dir / variant).exists():
            continue  # begun in this directory already (a resumed run): continue it here
        reasons = []
        for source in map(Path, sources):
            reason = (
                reuse_mismatch(source, variant, config, dataset)
                if source.exists()
                else f"{source} does not exist"
            )
            if reason is None:
                reused[variant] = source
                break
            reasons.append(reason)
        if say is not None:
            if variant in reused:
                say(f"{variant}: reused from {reused[variant]} (same settings and data, finished)")
            else:
                say(f"{variant}: trained here; not reused: {'; '.join(reasons)}")
    return reused


def check_model_fits_data(config: RunConfig, dataset: Dataset) -> None:
    """Raises RunError unless the model's task is the data's (DLN: regression; VGG and the
    MLP: classes).
    A user's network is checked on a batch instead (``runs.check_outputs``)."""
    if config.has_user_model:
        return
    wants_regression = is_dln(config.model.arch)
    if wants_regression != (dataset.task == "regression"):
        raise RunError(
            f"--arch {config.model.arch} does not fit the data {dataset.name!r}: the deep linear "
            "network trains on --data dln (or dln:SEED), a VGG or an MLP on image data"
        )


def _read_run_json(path: Path) -> dict[str, Any]:
    """Returns the JSON object in ``path``; RunError "this run's NAME is damaged" otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise RunError(f"this run's {path.name} is damaged: {path}: {err}") from None
    if not isinstance(data, dict):
        raise RunError(
            f"this run's {path.name} is damaged: {path} holds a {type(data).__name__}, "
            "not an object"
        )
    return data


def load_config(run_dir: str | os.PathLike) -> RunConfig:
    """Returns the ``RunConfig`` saved in ``run_dir``; RunError when it is missing or damaged."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise RunError(f"{run_dir} is not a landscape run (no config.json)")
    data = _read_run_json(path)
    try:
        return validate(RunConfig.from_dict(data))
    except ConfigError as err:
        raise RunError(f"this run's config.json is damaged: {path}: {err}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise RunError(f"this run's config.json is damaged: {path}: {err}") from None


def load_provenance(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Returns the run's ``provenance.json`` ({} when absent); RunError when it is damaged."""
    path = Path(run_dir) / "provenance.json"
    return _read_run_json(path) if path.exists() else {}


def check_same_data(run_dir: Path, dataset: Dataset) -> None:
    """Raises RunError unless ``dataset`` is the data the run in ``run_dir`` was trained on."""
    expected = load_provenance(run_dir).get("dataset_sha256")
    if expected is not None and expected != dataset.checksum:
        raise RunError(
            f"the data differs from the run's (sha256 {dataset.checksum[:12]}..., the run used "
            f"{expected[:12]}...); pass the --data the run was trained on"
        )


def check_network_record(variant_dir: Path, model_config: ModelConfig, params: Any) -> None:
    """Checks that the network built now has the parameter shapes ``<variant>/network.json``
    recorded (a run from before the record existed passes). Reads only; raises RunError naming
    the first difference. ``params`` may be abstract (``jax.eval_shape``)."""
    path = Path(variant_dir) / NETWORK_FILE
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())["parameter_shapes"]
    except (ValueError, KeyError, TypeError) as err:
        raise RunError(f"{path} is damaged ({err}); it records the network's shapes") from None
    shapes = parameter_shapes(params)
    if saved != shapes:
        name = model_config.factory or model_config.arch
        first = next(k for k in sorted(set(saved) | set(shapes)) if saved.get(k) != shapes.get(k))
        raise RunError(
            f"the network {name!r} builds other shapes than this run's ({first}: "
            f"{shapes.get(first)} now, {saved.get(first)} when trained)"
        )


def write_network_record(variant_dir: Path, model_config: ModelConfig, params: Any) -> None:
    """Writes ``<variant>/network.json``: how the network is rebuilt (the built-in ``arch``, or
    the user's factory and its arguments) and the fingerprint of its parameter shapes."""
    shapes = parameter_shapes(params)
    record = {
        "factory": model_config.factory,
        "model_args": [list(pair) for pair in model_config.model_args],
        "arch": None if model_config.factory else model_config.arch,
        "parameter_count": int(sum(np.prod(shape) for shape in shapes.values())),
        "parameter_shapes": shapes,
    }
    path = Path(variant_dir) / NETWORK_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
