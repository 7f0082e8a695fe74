"""landscape: loss-landscape probes of neural-network training (Santurkar et al. 2018) in JAX.

The public API is re-exported lazily, so ``import landscape`` (and ``landscape --help``) does not
start JAX until something that needs it is used.
"""

from importlib import import_module
from typing import Any

from landscape.xla_tuning import tune_xla_cpu

__version__ = "0.1.0"

# Before JAX starts a backend: XLA's faster CPU convolutions for these networks (xla_tuning.py).
tune_xla_cpu()

_EXPORTS = {
    "ProbeResult": "landscape.probe",
    "effective_beta": "landscape.probe",
    "band": "landscape.probe",
    "RunConfig": "landscape.config",
    "preset": "landscape.config",
    "load_dataset": "landscape.data",
    "create_model": "landscape.models",
    "run": "landscape.runs",
    "reprobe": "landscape.runs",
    "load": "landscape.results",
    "load_metrics": "landscape.results",
    "internal_covariate_shift": "landscape.ics",
    "sharpness_over_training": "landscape.curvature",
    "surface": "landscape.surfaces",
    "interpolate": "landscape.surfaces",
    "run_sweep": "landscape.sweep",
    "tune_malloc": "landscape.malloc_tuning",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'landscape' has no attribute {name!r}")
