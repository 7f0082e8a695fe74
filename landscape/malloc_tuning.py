"""glibc malloc settings that keep XLA's per-call buffers in memory between calls.

Every call of a compiled XLA program on the CPU allocates its scratch memory afresh, as one
block: about 40 MB for the quick preset's gradient, more at full width. glibc serves a block
over 32 MB (the most its adaptive threshold reaches) with a fresh ``mmap`` and unmaps it when
freed, so every call page-faulted its whole scratch memory in again (about 10,000 faults a
gradient) and the kernel zeroed it. On the 2-core development machine (quick network without
BatchNorm, alternating processes) a train step took 37-39 ms that way and 27-29 ms with the
settings below, a probed step 0.93x; eager PyTorch's tensors at that width stay under the
threshold and are reused. The README's Performance section has the figures.

``tune_malloc`` asks glibc, through ``mallopt``, to

- serve every allocation from its heaps instead of separate mappings (``M_MMAP_MAX = 0``), and
- keep freed memory instead of returning it to the system (``M_TRIM_THRESHOLD``; a worker
  thread's own arena may still unmap an extra heap once it is empty),

so the next call reuses the same, already mapped pages. The cost: the process's resident memory
stays at its peak instead of shrinking between calls. Numbers do not change.

The ``landscape`` command applies it to its own process before any work, as do its sweep
workers and ``landscape bench``; the library never does it on import, since it changes how the
whole process manages memory. Call ``landscape.tune_malloc()`` in a notebook to get the same
speed there. Nothing is done

- off Linux/glibc,
- when another allocator is preloaded (``LD_PRELOAD`` of tcmalloc, jemalloc...),
- when ``$MALLOC_MMAP_MAX_``, ``$MALLOC_TRIM_THRESHOLD_``, ``$MALLOC_MMAP_THRESHOLD_``,
  ``$MALLOC_TOP_PAD_`` or a ``glibc.malloc`` entry of ``$GLIBC_TUNABLES`` is set (yours win), or
- with ``LANDSCAPE_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

from landscape.xla_tuning import opted_out

OPT_OUT = "LANDSCAPE_MALLOC_TUNING"
USER_SETTINGS = (
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

_applied = False


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


def _user_has_settings(environ: Mapping[str, str]) -> bool:
    if any(name in environ for name in USER_SETTINGS):
        return True
    return "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def tune_malloc(environ: Mapping[str, str] | None = None) -> bool:
    """Applies the settings above to this process; returns True when they are in effect.

    Returns False, changing nothing, off glibc (or with another allocator preloaded), when opted out with ``LANDSCAPE_MALLOC_TUNING=0``
    or when ``environ`` (default ``os.environ``) already holds malloc settings of the user's.
    Calling it again is harmless.
    """
    global _applied
    environ = os.environ if environ is None else environ
    if opted_out(environ, OPT_OUT):
        return False
    if _user_has_settings(environ):
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
    _applied = True
    return True


def malloc_tuned() -> bool:
    """Returns whether ``tune_malloc`` has put its settings in effect in this process."""
    return _applied
