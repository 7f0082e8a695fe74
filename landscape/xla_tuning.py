"""XLA settings for the CPU backend, added to ``$XLA_FLAGS`` when ``landscape`` is imported.

jaxlib 0.10's CPU backend hands convolutions to YNNPACK. For the convolutions of the paper's VGG
networks its Eigen convolutions are faster: on a 2-core CPU, the forward and both backward
convolutions of a 64 -> 64 channel layer at 8x8 took 4.8 ms against 9.0 ms, and a probe over 8
step sizes of the quick preset's network 276 ms against 377 ms (separate processes; the README's
Performance section has the side-by-side figures against PyTorch). Matrix products keep
YNNPACK, which is the faster of the two there.

XLA reads ``$XLA_FLAGS`` once, when JAX starts its first backend, and rejects a flag it does not
know, which would stop the process. So the flag is added only

- for the jaxlib versions it was measured on (``TESTED_JAXLIB``);
- when ``$XLA_FLAGS`` does not already set ``xla_cpu_experimental_ynn_fusion_type`` (yours wins);
- unless ``LANDSCAPE_XLA_TUNING=0``.

It takes effect only if no JAX computation ran in the process before ``landscape`` was imported
(the ``landscape`` command always qualifies). One evaluation agrees with the untuned backend to
float32 rounding (max-pool ties aside), though a long training run can drift from that rounding;
``landscape bench`` records the flags it ran with.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from importlib import metadata

FLAG = "xla_cpu_experimental_ynn_fusion_type"
CPU_FLAGS = (f"--{FLAG}=-individual_convolution",)
TESTED_JAXLIB = ("0.10.",)  # version prefixes on which the flag exists and was measured
OPT_OUT = "LANDSCAPE_XLA_TUNING"


def opted_out(environ: Mapping[str, str], name: str) -> bool:
    """Returns whether ``environ[name]`` turns a tuning off (0, false, no or off; unset: on)."""
    return environ.get(name, "1").strip().lower() in ("0", "false", "no", "off")


def _jaxlib_version() -> str | None:
    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return None


def tune_xla_cpu(
    environ: MutableMapping[str, str] | None = None, jaxlib_version: str | None = None
) -> tuple[str, ...]:
    """Adds ``CPU_FLAGS`` to ``environ["XLA_FLAGS"]`` where safe; returns the flags added.

    ``environ`` defaults to ``os.environ`` and ``jaxlib_version`` to the installed jaxlib's.
    Returns ``()`` (and changes nothing) when opted out, on an untested jaxlib, or when the
    user's ``XLA_FLAGS`` already sets the flag.
    """
    environ = os.environ if environ is None else environ
    if opted_out(environ, OPT_OUT):
        return ()
    version = jaxlib_version if jaxlib_version is not None else _jaxlib_version()
    if version is None or not version.startswith(TESTED_JAXLIB):
        return ()
    current = environ.get("XLA_FLAGS", "")
    if FLAG in current:
        return ()
    environ["XLA_FLAGS"] = " ".join(part for part in (current.strip(), *CPU_FLAGS) if part)
    return CPU_FLAGS
