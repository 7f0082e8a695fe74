"""The ``landscape`` command: a thin shell over the library. Each module holds one group of
commands; each command parses its options, calls one library function and prints.

``main`` is the console entry point: it tunes the process (``landscape.app.runtime``) before
anything starts JAX, then hands over to Typer. ``app`` itself changes nothing in the process, so
tests and notebooks can invoke it in-process.
"""

import errno
import os
import signal
import warnings
from importlib import import_module

from landscape.app import runtime
from landscape.app.cli.common import app, err_console

# The modules register their commands with ``app`` when imported; this order is --help's.
COMMAND_MODULES = (
    "run",
    "adopt",
    "reports",
    "bench",
    "experiment",
    "pictures",
    "trajectory",
    "shift",
    "hessian",
    "sweep",
)
for _module in COMMAND_MODULES:
    import_module(f"{__name__}.{_module}")

__all__ = ["app", "main"]


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Shows a warning as one line, ``warning: ...``: the library's warnings are meant for the
    user (a damaged checkpoint skipped, a record line kept aside), not for a debugger."""
    err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


def _os_error_line(err: OSError) -> str:
    """Returns one line for an operating system error that reached the command."""
    where = f" {err.filename}" if err.filename else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"the disk is full: {err.strerror}, writing{where}. What was written before is "
            "intact; free some space and run the same command again (--resume for a run)"
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write{where}: {err.strerror}; choose a directory you may write to"
    return f"{err.strerror or err}{':' + where if where else ''}"


def _interrupt_handler(signum, frame) -> None:
    """The first Ctrl-C interrupts the command, which stops cleanly; a second one, while it is
    stopping, ends the process at once instead of printing a traceback from its clean-up."""
    if getattr(_interrupt_handler, "pressed", False):
        err_console.print(
            "interrupted again: stopping now; a run continues with --resume",
            markup=False,
            soft_wrap=True,
        )
        os._exit(130)
    _interrupt_handler.pressed = True
    raise KeyboardInterrupt


def main() -> None:
    """Runs the ``landscape`` command in this process, tuned as ``runtime.tune_process`` says.

    Warnings print as one line, a second Ctrl-C stops at once, and an operating system error
    (a full disk, a read-only directory) is one line and exit code 1, never a traceback.
    """
    runtime.tune_process()
    warnings.showwarning = _warning_line
    signal.signal(signal.SIGINT, _interrupt_handler)
    try:
        app(prog_name="landscape")
    except OSError as err:
        err_console.print(
            f"error: {_os_error_line(err)}", markup=False, highlight=False, soft_wrap=True
        )
        raise SystemExit(1) from None
