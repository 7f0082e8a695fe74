"""Experiments: placeholders, presets, resumable steps, failures, the combined report (the command: integration/test_experiments_cli.py)."""

import json

import pytest
from helpers import REPO

from landscape.experiments import (
    ExperimentError,
    continue_command,
    load_experiment,
    resolve,
    run_experiment,
    variables_for,
)

EXAMPLE = """
title = "A test experiment"
description = "two steps"
[vars]
variants = "standard,batchnorm"
[presets.smoke]
steps = "6"
[presets.quick]
steps = "1500"
[[steps]]
name = "train"
run = ["probe", "--preset", "{preset}", "--steps", "{steps}", "--variants", "{variants}", "--out", "{out}/vgg"]
[[steps]]
name = "summary"
run = ["summary", "{out}/vgg"]
"""


@pytest.fixture
def experiment_file(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(EXAMPLE)
    return path


def test_placeholders_follow_defaults_then_preset_then_overrides(experiment_file, tmp_path):
    exp = load_experiment(experiment_file)
    values = variables_for(exp, "smoke", tmp_path / "o", None, {"variants": "batchnorm"})
    steps = resolve(exp, values)
    assert steps[0].run == (
        "probe", "--preset", "smoke", "--steps", "6", "--variants", "batchnorm",
        "--out", f"{tmp_path}/o/vgg",
    )  # fmt: skip
    assert variables_for(exp, "quick", "o", "cifar.tgz")["steps"] == "1500"
    assert variables_for(exp, "quick", "o", "cifar.tgz")["data"] == "cifar.tgz"
    with pytest.raises(ExperimentError, match="no preset 'paper'"):
        variables_for(exp, "paper", "o", None)


def test_unknown_placeholder_and_bad_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[steps]]\nname = "a"\nrun = ["probe", "{nowhere}"]\n')
    exp = load_experiment(bad)
    with pytest.raises(ExperimentError, match=r"no value for \{nowhere\}"):
        resolve(exp, variables_for(exp, "quick", "o", None))
    bad.write_text("[[steps]\n")
    with pytest.raises(ExperimentError, match="not valid TOML"):
        load_experiment(bad)
    bad.write_text('title = "no steps"\n')
    with pytest.raises(ExperimentError, match="no \\[\\[steps\\]\\]"):
        load_experiment(bad)
    with pytest.raises(ExperimentError, match="no experiment file"):
        load_experiment(tmp_path / "missing.toml")


def test_steps_run_in_order_skip_when_done_and_stop_on_failure(experiment_file, tmp_path):
    exp = load_experiment(experiment_file)
    out = tmp_path / "o"
    values = variables_for(exp, "smoke", out, None)
    calls = []

    def fake(args):
        calls.append(args[0])
        return 3 if args[0] == "summary" else 0

    with pytest.raises(ExperimentError, match="step 'summary' failed \\(exit code 3\\)"):
        run_experiment(exp, values, runner=fake, say=lambda m: None)
    assert calls == ["probe", "summary"]
    rows = [json.loads(line) for line in (out / "experiment.jsonl").read_text().splitlines()]
    assert [(r["name"], r["status"]) for r in rows] == [
        ("train", "started"), ("train", "ok"), ("summary", "started"), ("summary", "failed"),
    ]  # fmt: skip
    # Run again: the finished step is skipped, the failed one is retried.
    calls.clear()
    with pytest.raises(ExperimentError):
        run_experiment(exp, values, runner=fake, say=lambda m: None)
    assert calls == ["summary"]
    plan = json.loads((out / "experiment.json").read_text())
    assert plan["values"]["steps"] == "6" and len(plan["steps"]) == 2


def test_an_output_file_does_not_make_a_step_done(experiment_file, tmp_path):
    """Killed while training, a step has written its records and figures already: the rerun
    must not take them for a finished step, and continues the run with --resume."""
    exp = load_experiment(experiment_file)
    out = tmp_path / "o"
    values = variables_for(exp, "smoke", out, None)
    calls = []

    def killed(args):
        (out / "vgg").mkdir(parents=True)
        (out / "vgg" / "config.json").write_text("{}")
        (out / "vgg" / "report.html").write_text("partial")
        raise KeyboardInterrupt  # the experiment process dies with its step

    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, values, runner=killed, say=lambda m: None)
    run_experiment(exp, values, runner=lambda a: calls.append(a) or 0, say=lambda m: None)
    assert calls[0][-2:] == ["--resume", f"{out}/vgg"] and calls[0][0] == "probe"
    assert calls[1] == ["summary", f"{out}/vgg"]
    calls.clear()
    run_experiment(exp, values, runner=lambda a: calls.append(a) or 0, say=lambda m: None)
    assert calls == []  # both finished: nothing runs again


def test_continue_command_resumes_training_and_reruns_the_rest(tmp_path):
    run_dir = tmp_path / "run"
    train = ["probe", "--preset", "smoke", "--out", str(run_dir)]
    assert continue_command(train) == train  # nothing there yet: start it again
    run_dir.mkdir()
    assert continue_command(train) == train and not run_dir.exists()  # created, never written
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    assert continue_command(train) == [*train, "--resume", str(run_dir)]
    assert continue_command([f"--out={run_dir}", "x"]) == [f"--out={run_dir}", "x"]
    for other in (["ics", str(run_dir)], ["probe", "--from", str(run_dir)], ["report", "x"]):
        assert continue_command(other) == other


def test_a_set_name_the_file_does_not_use_is_refused(experiment_file):
    exp = load_experiment(experiment_file)
    assert variables_for(exp, "smoke", "o", None, {"steps": "3"})["steps"] == "3"
    with pytest.raises(
        ExperimentError, match=r"no placeholder \{lr\}; it has data, preset, steps, variants"
    ):
        variables_for(exp, "smoke", "o", None, {"lr": "0.5"})


def test_a_done_key_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text('[[steps]]\nname = "a"\nrun = ["summary", "x"]\ndone = "x/report.html"\n')
    with pytest.raises(
        ExperimentError, match="remove it: a step is done when its command finished"
    ):
        load_experiment(path)
    path.write_text('[[steps]]\nname = "a"\nrun = ["summary", "x"]\nrn = 1\n')
    with pytest.raises(ExperimentError, match="unknown key 'rn'"):
        load_experiment(path)


def test_shipped_experiment_files_resolve(tmp_path):
    files = sorted((REPO / "experiments").glob("*.toml"))
    assert files
    for path in files:
        exp = load_experiment(path)
        for preset in exp.presets or {"quick": {}}:
            steps = resolve(exp, variables_for(exp, preset, tmp_path, None))
            assert steps and all(step.run for step in steps), path.name


def test_variables_may_name_the_fixed_placeholders(tmp_path):
    """A [vars] value such as reuse = "{root}/figure1_4_smoothness-{preset}/vgg" is filled in,
    so the shipped files find figure 1+4's run beside their own output folder."""
    exp = load_experiment(REPO / "experiments" / "figure2_8_noisy_bn.toml")
    values = variables_for(exp, "quick", tmp_path / "figure2_8_noisy_bn-quick", None)
    assert values["root"] == str(tmp_path)
    assert values["reuse"] == f"{tmp_path}/figure1_4_smoothness-quick/vgg"
    run = resolve(exp, values)[0].run
    assert run[run.index("--reuse") + 1] == values["reuse"]
    overridden = variables_for(exp, "quick", tmp_path / "x", None, {"reuse": "elsewhere"})
    assert overridden["reuse"] == "elsewhere"


def test_out_and_root_cannot_be_set(tmp_path):
    exp = load_experiment(REPO / "experiments" / "figure2_8_noisy_bn.toml")
    with pytest.raises(ExperimentError, match="the output folder is chosen with --out"):
        variables_for(exp, "quick", tmp_path / "x", None, {"root": "elsewhere"})


@pytest.mark.parametrize("arg", ["{}", "{0}", "{unclosed", "a}b"])
def test_empty_positional_and_broken_braces_are_one_line_errors(tmp_path, arg):
    path = tmp_path / "e.toml"
    path.write_text(f'[[steps]]\nname = "a"\nrun = ["summary", "{arg}"]\n')
    exp = load_experiment(path)
    with pytest.raises(ExperimentError, match="literal brace"):
        resolve(exp, variables_for(exp, "quick", "o", None))
