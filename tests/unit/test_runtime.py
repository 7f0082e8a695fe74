"""Process tuning (landscape/app/runtime.py) as pure functions of an environment: when the XLA
flag is added and when the malloc settings are left alone. Nothing here changes this process (the
cache test sets JAX's cache folder and puts it back); the tests that apply the settings start fresh
interpreters (integration/test_process.py)."""

import pytest

from landscape.app import runtime
from landscape.app.runtime import (
    CACHE_ENV,
    CPU_FLAGS,
    FLAG,
    XLA_OPT_OUT,
    enable_compilation_cache,
    opted_out,
    tune_malloc,
    tune_xla_cpu,
)


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
    monkeypatch.setattr(runtime, "_jaxlib_version", lambda: None)  # jaxlib not found
    assert tune_xla_cpu({}) == ()
    for off in ("0", "false", "off"):
        env = {XLA_OPT_OUT: off}
        assert tune_xla_cpu(env, "0.10.2") == () and "XLA_FLAGS" not in env


def test_opted_out_reads_the_usual_words_and_defaults_to_on():
    for off in ("0", "false", "No", " off "):
        assert opted_out({"X": off}, "X")
    for on in ("1", "true", "yes", "on", ""):
        assert not opted_out({"X": on}, "X")
    assert not opted_out({}, "X")


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


def test_compilation_cache_folder_argument_environment_and_opt_out(tmp_path, monkeypatch):
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    previous = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv(CACHE_ENV, "0")
        assert enable_compilation_cache() is None
        assert jax.config.jax_compilation_cache_dir == previous
        # An explicit folder wins over the variable; the variable names the default folder.
        assert enable_compilation_cache(tmp_path / "a") == str(tmp_path / "a")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "a")
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "b"))
        assert enable_compilation_cache() == str(tmp_path / "b")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "b")
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
        compilation_cache.reset_cache()
