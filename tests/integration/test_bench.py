"""The benchmark harness returns complete, self-consistent figures (no timing assertions)."""

import json

from landscape.bench import result_rows, run_bench, write_results


def test_run_bench_reports_every_quantity(tmp_path, tiny_config, tiny_dataset):
    result = run_bench(tiny_config, tiny_dataset, variant="batchnorm", strategies=("map",),
                       repeats=1, checkpoint_steps=2, run_steps=4,
                       process={"malloc_tuning": True})  # fmt: skip
    r = result["results"]
    assert r["fastest_strategy"] == "map"
    probe = r["probe"]["map"]
    assert probe["run_s"] > 0 and probe["compile_s"] > 0
    assert probe["per_gradient_ratio"] == probe["run_s"] / (3 * r["gradient_s"])
    assert r["checkpoint"]["overhead_ratio"] > 0 and r["peak_rss_mib"] > 0
    assert r["fused"]["ratio"] == r["fused"]["run_s"] / r["fused"]["separate_s"] > 0
    assert result["settings"]["num_etas"] == 3 and result["machine"]["backend"] == "cpu"
    assert result["machine"]["malloc_tuning"] is True  # the caller's process settings
    run = r["run"]
    assert run["steps"] == 4 and run["steps_per_s"] > 0 and 0 < run["probe_share"] < 1
    assert run["rss_mib"]["max"] >= run["rss_mib"]["first"] > 0
    path = write_results(result, tmp_path)
    assert json.loads(path.read_text().splitlines()[-1])["results"]["fastest_strategy"] == "map"
    # On a CPU the state is copied leaf by leaf; the accelerator's way is timed beside it.
    assert set(r["checkpoint"]["formats"]) == {"npz", "npz, gathered on the device", "orbax"}
    assert any("checkpoint every step (npz)" in name for name, _ in result_rows(result))


def test_bench_times_a_users_network_from_the_command(tmp_path):
    import subprocess
    import sys

    from helpers import OWN_DATA, REPO

    args = [sys.executable, str(REPO / "cli.py"), "bench", "--model", "own_models:linen_mlp",
            "--variant", "norm=batchnorm", "--data", OWN_DATA, "--preset", "smoke",
            "--batch-size", "16", "--strategies", "map", "--repeats", "1", "--run-steps", "0",
            "--out", str(tmp_path)]  # fmt: skip
    env_path = f"{REPO / 'tests'}"
    result = subprocess.run(args, capture_output=True, text=True, cwd=env_path)
    assert result.returncode == 0, result.stderr
    row = json.loads((tmp_path / "bench.jsonl").read_text().splitlines()[-1])
    settings = row["settings"]
    assert settings["model"]["factory"] == "own_models:linen_mlp"
    assert (
        settings["variant"] == "batchnorm"
        and ["norm", "batchnorm"] in settings["model"]["model_args"]
    )
    assert row["results"]["gradient_s"] > 0
    bad = subprocess.run([*args[:4], "own_models:missing", *args[5:]], capture_output=True,
                         text=True, cwd=env_path)  # fmt: skip
    assert (
        bad.returncode == 2 and "has no 'missing'" in bad.stderr and "Traceback" not in bad.stderr
    )
