"""The ``landscape`` command: a thin shell over the library. Each module holds one group of
commands; each command parses its options, calls one library function and prints.

``main`` is the console entry point: it tunes the process (``landscape.app.runtime``) before
anything starts JAX, then hands over to Typer. ``app`` itself changes nothing in the process, so
tests and notebooks can invoke it in-process.
"""

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


def main() -> None:
    """Runs the ``landscape`` command in this process, tuned as ``runtime.tune_process`` says."""
    runtime.tune_process()
    warnings.showwarning = _warning_line
    app(prog_name="landscape")
