"""The XLA flags landscape adds at import: only where safe, never over the user's own."""

import os
import subprocess
import sys

from landscape.xla_tuning import CPU_FLAGS, FLAG, OPT_OUT, tune_xla_cpu

from landscape import xla_tuning


def test_flag_added_to_existing_flags_on_a_tested_jaxlib():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert tune_xla_cpu(env, "0.10.2") == CPU_FLAGS
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8 " + " ".join(CPU_FLAGS)
    assert tune_xla_cpu(env, "0.10.2") == ()  # idempotent: the flag is there now
    empty = {}
    tune_xla_cpu(empty, "0.10.7")
    assert empty["XLA_FLAGS"] == " ".join(CPU_FLAGS)


def test_user_setting_untested_jaxlib_and_opt_out_leave_flags_alone(monkeypatch):
    mine = {"XLA_FLAGS": f"--{FLAG}=individual_convolution"}
    assert tune_xla_cpu(mine, "0.10.2") == ()
    assert mine == {"XLA_FLAGS": f"--{FLAG}=individual_convolution"}
    newer = {}
    assert tune_xla_cpu(newer, "0.11.0") == () and newer == {}
    monkeypatch.setattr(xla_tuning, "_jaxlib_version", lambda: None)  # jaxlib not found
    assert tune_xla_cpu({}) == ()
    for off in ("0", "false", "off"):
        env = {OPT_OUT: off}
        assert tune_xla_cpu(env, "0.10.2") == () and "XLA_FLAGS" not in env


def test_import_sets_the_flag_before_jax_starts_and_jax_accepts_it():
    """A fresh interpreter: importing landscape adds the flag (on this jaxlib) and JAX starts."""
    code = (
        "import os, landscape, jax, jax.numpy as jnp;"
        "print(os.environ.get('XLA_FLAGS', ''));"
        "print(float(jnp.ones(3).sum()))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", OPT_OUT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    from importlib import metadata

    expected = " ".join(CPU_FLAGS) if metadata.version("jaxlib").startswith("0.10.") else ""
    assert out == [expected, "3.0"]
