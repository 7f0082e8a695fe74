"""glibc malloc settings (landscape/malloc_tuning.py): when they apply, and that they work.

The settings change the whole process, so everything that applies them runs in a fresh
interpreter; conftest.py opts the test process itself out (commands run in-process there).
"""

import os
import subprocess
import sys
import textwrap

import pytest
from landscape.malloc_tuning import OPT_OUT, USER_SETTINGS, _glibc, tune_malloc

glibc_only = pytest.mark.skipif(_glibc() is None, reason="needs Linux with glibc")


@pytest.mark.parametrize(
    "environ",
    [
        {"LANDSCAPE_MALLOC_TUNING": "0"},
        {"LANDSCAPE_MALLOC_TUNING": "off"},
        {"MALLOC_MMAP_MAX_": "65536"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"MALLOC_TOP_PAD_": "0"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
    ],
)
def test_opt_out_and_the_users_own_settings_win(environ):
    assert tune_malloc(environ) is False


# Page faults of one call of the quick preset's gradient (VGG-11 at width 1/4, batch 128), whose
# scratch memory (~40 MB) is more than glibc's adaptive mmap threshold reaches, after warm-up.
FAULTS = textwrap.dedent(
    """
    import os, resource
    from landscape.malloc_tuning import malloc_tuned, tune_malloc
    applied = tune_malloc(os.environ)
    assert applied == malloc_tuned()
    import jax, jax.numpy as jnp
    from landscape.models import create_model, init_variables
    model = create_model("vgg11", width=0.25, conv_impl="auto")
    params = init_variables(model, jax.random.key(0))["params"]
    images = jnp.ones((128, 32, 32, 3))
    grad = jax.jit(jax.grad(lambda p: jnp.mean(model.apply({"params": p}, images) ** 2)))
    for _ in range(3):
        jax.block_until_ready(grad(params))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        jax.block_until_ready(grad(params))
    print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
    """
)


def _clean_environ() -> dict[str, str]:
    ours = (*USER_SETTINGS, "GLIBC_TUNABLES", OPT_OUT)
    return {k: v for k, v in os.environ.items() if k not in ours}


def _faults(**env) -> tuple[bool, float]:
    ours = (
        "MALLOC_MMAP_MAX_",
        "MALLOC_TRIM_THRESHOLD_",
        "GLIBC_TUNABLES",
        "LANDSCAPE_MALLOC_TUNING",
    )
    environ = {k: v for k, v in os.environ.items() if k not in ours}
    environ.update(env)
    done = subprocess.run(
        [sys.executable, "-c", FAULTS], capture_output=True, text=True, env=environ, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    applied, faults = done.stdout.split()
    return applied == "True", float(faults)


@glibc_only
def test_tuning_stops_xla_scratch_memory_page_faulting_on_every_call():
    tuned, faults_tuned = _faults()
    untuned, faults_default = _faults(LANDSCAPE_MALLOC_TUNING="0")
    assert tuned and not untuned
    # Every call maps its scratch memory afresh by default: more than 20 MB in 4 kB pages
    # (~10,300 faults). Tuned: 15-230, or ~3,000 in about one process in four, where a worker
    # thread's own arena takes part of it (glibc unmaps an arena's extra heap once it is empty).
    assert faults_default > 20e6 / 4096
    assert faults_tuned < faults_default / 2


@glibc_only
def test_prepare_process_applies_it():
    # Every command that trains, probes or times calls prepare_process (cli.py) before its work.
    script = (
        "from landscape.cli import prepare_process\n"
        "from landscape.malloc_tuning import malloc_tuned\n"
        "assert not malloc_tuned()\n"
        "prepare_process()\n"
        "print(malloc_tuned())\n"
    )
    environ = {**_clean_environ(), "LANDSCAPE_JAX_CACHE": "0"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environ, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True"]
