"""The progress bars of the long commands, built one way (rich, imported only when shown)."""

from __future__ import annotations

from typing import Any


def progress_bar(*middle: str, name: str = "{task.description:<12}", **options: Any):
    """Returns a rich ``Progress``: name, bar, done/total, the ``middle`` text columns (rich
    format strings such as ``"{task.fields[rate]}"``), elapsed and remaining time.

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

    return Progress(
        TextColumn(f"[bold]{name}"),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(text) for text in middle),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        refresh_per_second=options.pop("refresh_per_second", 4),
        **options,
    )
