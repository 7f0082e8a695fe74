"""landscape: loss-landscape probes of neural-network training (Santurkar et al. 2018) in JAX.

The public API is re-exported lazily, so ``import landscape`` (and ``landscape --help``) does not
start JAX until something that needs it is used. Importing it changes nothing in the process: no
environment variable, allocator setting or signal handler. The ``landscape`` command tunes its
own process; ``landscape.tune_process()`` (``landscape.app.runtime``) does the same in a notebook,
and ``landscape.enable_compilation_cache()`` keeps compiled programs on disk for the next session.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ProbeResult": "landscape.probe",
    "probe": "landscape.probe",
    "effective_beta": "landscape.probe",
    "band": "landscape.probe",
    "RunConfig": "landscape.config",
    "ConfigError": "landscape.config",
    "preset": "landscape.config",
    "override": "landscape.config",
    "validate": "landscape.config",
    "load_dataset": "landscape.data",
    "create_model": "landscape.models",
    "run": "landscape.runs",
    "reprobe": "landscape.runs",
    "load": "landscape.results",
    "load_metrics": "landscape.results",
    "internal_covariate_shift": "landscape.ics",
    "sharpness_over_training": "landscape.analyses.hessian",
    "surface": "landscape.analyses.pictures",
    "interpolate": "landscape.analyses.pictures",
    "trajectory": "landscape.analyses.trajectory",
    "run_sweep": "landscape.sweep",
    "tune_process": "landscape.app.runtime",
    "tune_malloc": "landscape.app.runtime",
    "enable_compilation_cache": "landscape.app.runtime",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'landscape' has no attribute {name!r}")
