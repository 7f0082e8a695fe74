"""What the package and the command do to a process, each checked in a fresh interpreter.

Importing the library changes nothing (no JAX, no environment variable, no signal handler);
the command tunes its own process (landscape/app/runtime.py): XLA's CPU flags, which JAX
accepts, and glibc's malloc settings, which stop XLA's scratch memory from page-faulting on
every call. The pure rules (opt-out, the user's own settings win) are unit tests
(unit/test_runtime.py).
"""

import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from helpers import REPO

from landscape.app.runtime import (
    CPU_FLAGS,
    MALLOC_OPT_OUT,
    USER_MALLOC_SETTINGS,
    XLA_OPT_OUT,
    _glibc,
)

glibc_only = pytest.mark.skipif(_glibc() is None, reason="needs Linux with glibc")


def _python(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Runs ``code`` in a fresh interpreter; returns its stdout (fails with its stderr)."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=os.environ if env is None else env,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _untuned_environ(*, keep_xla_flags: bool = False) -> dict[str, str]:
    """This process's environment without malloc settings, either opt-out and (unless kept) XLA
    flags: what a user's shell that never set them gives the command."""
    ours = (XLA_OPT_OUT, MALLOC_OPT_OUT, "GLIBC_TUNABLES", *USER_MALLOC_SETTINGS)
    if not keep_xla_flags:
        ours += ("XLA_FLAGS",)
    return {k: v for k, v in os.environ.items() if k not in ours}


# --- importing changes nothing ---------------------------------------------------------------


def test_importing_the_package_starts_no_jax_and_changes_no_environment():
    code = (
        "import os, sys, signal\n"
        "before = (dict(os.environ), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))\n"
        "import landscape, landscape.config\n"
        "after = (dict(os.environ), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))\n"
        "print('jax' in sys.modules, before == after, os.environ.get('XLA_FLAGS'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "True", "None"]


def test_importing_landscape_adds_no_xla_flags():
    code = "import landscape, os; print(os.environ.get('XLA_FLAGS'))"
    assert _python(code, _untuned_environ()).strip() == "None"


def test_plots_do_not_import_jax():
    code = "import sys, landscape.plots; sys.exit('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- the command -----------------------------------------------------------------------------

COMMANDS = ("train", "probe", "plot", "report", "summary", "bench", "experiment", "surface",
            "interpolate", "ics", "activations", "hessian", "sweep")  # fmt: skip


def _console_script() -> list[str]:
    script = Path(sys.executable).parent / "landscape"
    if not script.exists():
        pytest.skip(
            f"the console script is not installed beside {sys.executable} (pip install -e .)"
        )
    return [str(script)]


@pytest.mark.parametrize(
    "command",
    [_console_script, lambda: [sys.executable, "-m", "landscape"]],
    ids=["console-script", "python-m"],
)
def test_landscape_help_exits_0_and_lists_the_commands(command):
    done = subprocess.run(
        [*command(), "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**_untuned_environ(), "COLUMNS": "200"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Usage: landscape" in done.stdout
    for name in COMMANDS:
        assert f" {name} " in done.stdout, name


# --- XLA's CPU flags -------------------------------------------------------------------------


def test_tune_process_sets_the_flag_before_jax_starts_and_jax_accepts_it():
    """A fresh interpreter: runtime.tune_process() (what the command's main() calls first) adds
    the flag (on this jaxlib) and the malloc settings (on glibc); JAX starts with them and
    computes."""
    code = (
        "import os\n"
        "from landscape.app import runtime\n"
        "tuned = runtime.tune_process()\n"
        "import jax, jax.numpy as jnp\n"
        "print(os.environ.get('XLA_FLAGS', ''))\n"
        "print(' '.join(tuned['xla_flags']))\n"
        "print(tuned['malloc'], runtime.malloc_tuned())\n"
        "print(float(jnp.ones(3).sum()))\n"
    )
    out = _python(code, _untuned_environ()).splitlines()
    expected = " ".join(CPU_FLAGS) if metadata.version("jaxlib").startswith("0.10.") else ""
    malloc = str(_glibc() is not None)
    assert out == [expected, expected, f"{malloc} {malloc}", "3.0"]


# --- glibc malloc settings -------------------------------------------------------------------

# Page faults of one call of the quick preset's gradient (VGG-11 at width 1/4, batch 128), whose
# scratch memory (~40 MB) is more than glibc's adaptive mmap threshold reaches, after warm-up;
# with XLA's CPU flags as the command sets them.
FAULTS = textwrap.dedent(
    """
    import os, resource
    from landscape.app.runtime import malloc_tuned, tune_malloc, tune_xla_cpu
    tune_xla_cpu()
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


def _faults(**env) -> tuple[bool, float]:
    applied, faults = _python(FAULTS, {**_untuned_environ(keep_xla_flags=True), **env}).split()
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
def test_prepare_compute_applies_it():
    # Every command that trains, probes or times calls runtime.prepare_compute (landscape.app.cli)
    # before its work; it applies the malloc settings even where main() did not tune the process.
    script = (
        "from landscape.app.runtime import malloc_tuned, prepare_compute\n"
        "assert not malloc_tuned()\n"
        "prepare_compute()\n"
        "print(malloc_tuned())\n"
    )
    out = _python(script, {**_untuned_environ(), "LANDSCAPE_JAX_CACHE": "0"}, timeout=120)
    assert out.split() == ["True"]
