"""The progress bars of the long commands, built one way (rich, imported only when shown)."""

from __future__ import annotations

from typing import Any


def progress_bar(*middle: str, name: str = "{task.description:<12}", **options: Any):
    """Returns a rich ``Progress``: name, bar, done/total, the ``middle`` text columns (format
    strings such as ``"{task.fields[rate]}"``, shown literally), elapsed and remaining time.

    ``options`` go to ``rich.progress.Progress`` (``console=...``); refreshed 4 times a second.
    Use it as a context manager around the work.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # Names and fields are user text (variants, files): shown literally, never read as markup.
    return Progress(
        TextColumn(name, style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(text, markup=False) for text in middle),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        refresh_per_second=options.pop("refresh_per_second", 4),
        **options,
    )


class _NoBar:
    def __enter__(self):
        return lambda n=1: None

    def __exit__(self, *exc):
        return False


class _Bar:
    def __init__(self, total: int | None, description: str):
        from rich.progress import Progress, TextColumn

        # Rich's default columns, with the description (a file name) shown literally.
        columns = Progress.get_default_columns()[1:]
        text = TextColumn("{task.description}", style="progress.description", markup=False)
        self._progress = Progress(text, *columns, transient=True)
        self._task = self._progress.add_task(description, total=total)

    def __enter__(self):
        self._progress.start()
        return lambda n=1: self._progress.advance(self._task, n)

    def __exit__(self, *exc):
        self._progress.stop()
        return False


def transient_bar(enabled: bool, total: int | None, description: str):
    """Returns a context manager yielding ``advance(n=1)``: a rich bar that disappears when done
    (reading and decoding data), only when ``enabled``."""
    return _Bar(total, description) if enabled else _NoBar()
