"""Finding the user's code by name: ``package.module:function`` import paths and the entry points a
package registers (groups ``landscape.models`` and ``landscape.data``), so a run directory can
say how to rebuild its network, data and optimiser and every later command can do it (group
``landscape.optimizers`` for optimisers).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

MODEL_GROUP = "landscape.models"
DATA_GROUP = "landscape.data"
OPTIMIZER_GROUP = "landscape.optimizers"


class PluginError(ValueError):
    """A name that does not lead to the user's code, said in one line."""


def is_import_path(text: str) -> bool:
    """Returns True for ``package.module:attribute`` (dots allowed on both sides)."""
    module, sep, attr = text.partition(":")
    return bool(sep and module and attr) and all(
        part.isidentifier() for part in (*module.split("."), *attr.split("."))
    )


def registered(group: str) -> dict[str, metadata.EntryPoint]:
    """Returns the entry points installed packages registered in ``group``, by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=group)}


def load_object(spec: str, group: str | None = None) -> Any:
    """Returns the object ``spec`` names: ``package.module:attribute``, or the name of an entry
    point in ``group``. Modules are found on ``sys.path`` and in the working directory.

    Raises PluginError (one line) when the module does not import or has no such attribute.
    """
    if not is_import_path(spec):
        points = registered(group) if group else {}
        if spec in points:
            try:
                return points[spec].load()
            except Exception as err:  # the user's package failed to import: say how
                raise PluginError(f"{spec!r} (entry point {points[spec].value}): {err}") from None
        known = f"; registered: {', '.join(sorted(points))}" if points else ""
        raise PluginError(
            f"{spec!r} is neither package.module:function nor a registered name{known}"
        )
    module_name, _, attribute = spec.partition(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path:  # a user's own file next to where they run the command
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise PluginError(
            f"{spec!r}: module {module_name!r} does not import ({type(err).__name__}: {err})"
        ) from None
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise PluginError(f"{spec!r}: {module_name} has no {attribute!r}") from None
    return value


def accepts(factory: Callable, name: str) -> bool:
    """Returns True when ``factory`` takes a keyword ``name`` (by name or ``**kwargs``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def call_factory(factory: Callable, spec: str, arguments: dict[str, Any], **offered: Any) -> Any:
    """Returns ``factory(**arguments, **offered)``, where ``offered`` are passed only if the
    factory accepts them (by name or ``**kwargs``). A bad argument is a PluginError."""
    if not callable(factory):
        raise PluginError(f"{spec!r} is a {type(factory).__name__}, not a function to call")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    extra = {}
    if signature is not None:
        takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        extra = {k: v for k, v in offered.items() if takes_any or k in signature.parameters}
        for name in sorted(set(arguments) & set(extra)):
            raise PluginError(
                f"{spec!r}: {name} is passed by landscape itself ({name}={extra[name]!r}); "
                "leave it out of the factory's arguments"
            )
        try:
            signature.bind(**arguments, **extra)
        except TypeError as err:
            raise PluginError(f"{spec!r} cannot be called with {arguments}: {err}") from None
    try:
        return factory(**arguments, **extra)
    except Exception as err:  # the user's code failed: say where, in one line
        text = str(err).strip().splitlines()
        raise PluginError(
            f"{spec!r} raised {type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
        ) from None
