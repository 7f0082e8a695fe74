"""Process tuning: everything the ``landscape`` command changes about its own process.

The library never touches the process it is imported into. The command (``landscape.app.cli``)
and the parallel sweep's workers (``landscape.app.worker``) call these functions explicitly when
they start; a notebook gets the same speed with one call, before its first JAX computation::

    from landscape.app import runtime
    runtime.tune_process()

What is tuned, and why (docs/performance.md#process-tunings has the measurements):

- **XLA's CPU flags** (``tune_xla_cpu``). jaxlib 0.10's CPU backend hands convolutions to
  YNNPACK; for the VGG networks' convolutions XLA's Eigen convolutions are faster. XLA reads
  ``$XLA_FLAGS`` once, when JAX starts its first backend, and rejects a flag it does not know,
  so the flag is added only for the jaxlib versions it was measured on, only when the user's
  ``$XLA_FLAGS`` does not set it already, and not with ``LANDSCAPE_XLA_TUNING=0``. Processes
  started from a tuned one (sweep workers) inherit it through the environment.
- **glibc malloc settings** (``tune_malloc``). Every call of a compiled XLA program on the CPU
  allocates its scratch memory afresh, as one block larger than glibc's adaptive ``mmap``
  threshold, so every call page-faulted that memory in again and the kernel zeroed it.
  ``M_MMAP_MAX = 0`` serves every allocation from the heaps and ``M_TRIM_THRESHOLD`` at its
  maximum keeps freed memory, so the next call reuses mapped pages. The cost: resident memory
  stays at its peak. Numbers do not change. Nothing is done off glibc, with another allocator
  preloaded, when the user set malloc variables of their own, or with
  ``LANDSCAPE_MALLOC_TUNING=0``.
- **The persistent compilation cache** (``enable_compilation_cache``, also
  ``landscape.enable_compilation_cache``): compiled programs kept on disk, so a second run of the
  same model skips compilation. It changes only JAX's configuration, not the process, and a
  notebook calls it the same way.
- **Worker processes**: pinned to their share of the cores (``pin_cpus``: XLA sizes its CPU
  thread pool from the affinity), stopped when their parent dies (``stop_with_parent``), and
  allowed to cache even small programs (``cache_small_programs``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping, MutableMapping
from importlib import metadata

from landscape.data import resolve_cache_dir

XLA_OPT_OUT = "LANDSCAPE_XLA_TUNING"
MALLOC_OPT_OUT = "LANDSCAPE_MALLOC_TUNING"
CACHE_ENV = "LANDSCAPE_JAX_CACHE"  # the compilation cache's folder; 0 turns it off

FLAG = "xla_cpu_experimental_ynn_fusion_type"
CPU_FLAGS = (f"--{FLAG}=-individual_convolution",)
TESTED_JAXLIB = ("0.10.",)  # version prefixes on which the flag exists and was measured

USER_MALLOC_SETTINGS = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)
# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# The largest trim threshold mallopt takes (an int): freed memory below the top is never trimmed.
NEVER_TRIM = 2**31 - 1
PR_SET_PDEATHSIG = 1

_malloc_applied = False


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
    user's ``XLA_FLAGS`` already sets the flag. It takes effect only if JAX has not started a
    backend yet in this process.
    """
    environ = os.environ if environ is None else environ
    if opted_out(environ, XLA_OPT_OUT):
        return ()
    version = jaxlib_version if jaxlib_version is not None else _jaxlib_version()
    if version is None or not version.startswith(TESTED_JAXLIB):
        return ()
    current = environ.get("XLA_FLAGS", "")
    if FLAG in current:
        return ()
    environ["XLA_FLAGS"] = " ".join(part for part in (current.strip(), *CPU_FLAGS) if part)
    return CPU_FLAGS


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (not musl)
        libc.mallopt  # noqa: B018
        # The process's malloc must be glibc's own, not a preloaded allocator's, whose mallopt
        # (if any) would report success and change nothing.
        glibc = ctypes.CDLL("libc.so.6")
        ours = ctypes.cast(libc.malloc, ctypes.c_void_p).value
        if ours != ctypes.cast(glibc.malloc, ctypes.c_void_p).value:
            return None
    except (OSError, AttributeError):
        return None
    return libc


def _user_has_malloc_settings(environ: Mapping[str, str]) -> bool:
    if any(name in environ for name in USER_MALLOC_SETTINGS):
        return True
    return "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def tune_malloc(environ: Mapping[str, str] | None = None) -> bool:
    """Applies the glibc malloc settings to this process; returns True when they are in effect.

    Returns False, changing nothing, off glibc (or with another allocator preloaded), when
    opted out with ``LANDSCAPE_MALLOC_TUNING=0`` or when ``environ`` (default ``os.environ``)
    already holds malloc settings of the user's. Calling it again is harmless.
    """
    global _malloc_applied
    environ = os.environ if environ is None else environ
    if opted_out(environ, MALLOC_OPT_OUT) or _user_has_malloc_settings(environ):
        return False
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success.
    for param, value in ((M_TRIM_THRESHOLD, NEVER_TRIM), (M_MMAP_MAX, 0)):
        if mallopt(param, value) != 1:
            return False
    _malloc_applied = True
    return True


def malloc_tuned() -> bool:
    """Returns whether ``tune_malloc`` has put its settings in effect in this process."""
    return _malloc_applied


def enable_compilation_cache(folder: str | os.PathLike | None = None) -> str | None:
    """Keeps compiled programs on disk, so a later process that builds the same program (the
    same network, shapes and settings) loads it instead of compiling it again.

    The ``landscape`` command calls it when it starts. From Python, call
    ``landscape.enable_compilation_cache()`` once; before or after other JAX work, both work.
    ``folder`` defaults to ``$LANDSCAPE_JAX_CACHE``, else ``jax/`` in the data cache
    (``$LANDSCAPE_CACHE`` or ~/.cache/landscape), the folder the command uses, so programs the
    command compiled serve a notebook and the other way round; ``$LANDSCAPE_JAX_CACHE=0`` turns
    it off when no ``folder`` is given. It sets JAX's own option ``jax_compilation_cache_dir``,
    so JAX's rules apply: programs that compile in under a second are not kept
    (``jax_persistent_cache_min_compile_time_secs``). Returns the folder, or None when off.
    """
    import jax  # here, not at the top: the command's --help must not start JAX
    from jax.experimental.compilation_cache import compilation_cache

    if folder is None:
        folder = os.environ.get(CACHE_ENV)
        if folder == "0":
            return None
        folder = folder or str(resolve_cache_dir() / "jax")
    folder = os.fspath(folder)
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", folder)
    if previous and previous != folder:
        # JAX opens its cache once, at the first compilation after a folder is set; another
        # folder takes effect only after the cache is reset.
        compilation_cache.reset_cache()
    return folder


def cache_small_programs() -> None:
    """Lets the persistent compilation cache keep programs that compile in under a second.

    A sequential sweep compiles the many small programs of eager model initialisation once and
    keeps them in memory; every worker is a new process and would compile them all again. With
    the cache on, the first worker writes them and the others read them back.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pin_cpus(cpus: str) -> set[int] | None:
    """Pins this process to the cores ``cpus`` names (comma-separated ids), before JAX sizes its
    thread pools; returns the cores, or None when ``cpus`` is empty or pinning unsupported."""
    cpus = cpus.strip()
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return None
    chosen = {int(c) for c in cpus.split(",")}
    os.sched_setaffinity(0, chosen)
    return chosen


def stop_with_parent() -> bool:
    """Asks Linux to send SIGTERM when the parent dies (killed, not just interrupted); returns
    whether it was arranged."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) == 0
    except (OSError, AttributeError):
        return False


def tune_process() -> dict[str, object]:
    """Applies the tunings that need no JAX: XLA's CPU flags and the malloc settings.

    Call it first, before any JAX computation (the flags are read when JAX starts a backend).
    Returns what is in effect: ``{"xla_flags": flags added, "malloc": bool}``.
    """
    return {"xla_flags": tune_xla_cpu(), "malloc": tune_malloc()}


def prepare_compute() -> None:
    """Readies the process for training and probing: the malloc settings (if ``tune_process``
    has not applied them already) and the compilation cache."""
    tune_malloc()
    enable_compilation_cache()


def describe() -> dict[str, object]:
    """Returns the process settings that change speed, for benchmark records: ``xla_flags`` (the
    environment's, including what ``tune_xla_cpu`` added) and ``malloc_tuning`` (bool)."""
    return {"xla_flags": os.environ.get("XLA_FLAGS", ""), "malloc_tuning": malloc_tuned()}
