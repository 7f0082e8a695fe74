"""Checkpoints of the training state with orbax: save, restore, list steps, retention.

Orbax writes each checkpoint into a temporary directory and renames it into place only when it
is complete, so a run killed mid-write leaves no half-written checkpoint that is read as good.
Writes are asynchronous: the next training step runs while the previous state is written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from landscape.config import CheckpointConfig

# Orbax logs every save at INFO level; a run saving each step would drown its own progress bar.
logging.getLogger("absl").setLevel(logging.WARNING)


class Checkpointer:
    """Saves and restores a pytree (the ``TrainState``) under ``directory/<step>/``."""

    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig | None = None):
        config = config or CheckpointConfig()
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if config.keep_all else config.max_to_keep,
            keep_period=None if config.keep_all else config.keep_period,
            enable_async_checkpointing=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, *, force: bool = False) -> None:
        """Starts writing ``state`` as checkpoint ``step`` (returns before the write ends)."""
        self._manager.save(int(step), args=ocp.args.StandardSave(state), force=force)

    def restore(self, step: int | None, target: Any) -> Any:
        """Returns checkpoint ``step`` (newest if None) with the structure of ``target``."""
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        return self._manager.restore(int(step), args=ocp.args.StandardRestore(abstract))

    def steps(self) -> list[int]:
        """Returns the steps of all complete checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """Returns the newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def wait(self) -> None:
        """Blocks until every started write has finished."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
