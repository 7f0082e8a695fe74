"""The run configuration as a contract: settings written as text, overrides by name, validation
in one line before anything is written (``landscape.config``)."""

import pytest

from landscape.config import ConfigError, override, parse_etas, preset, validate


def test_parse_etas():
    assert parse_etas("0.05:0.4:8") == pytest.approx([0.05 + 0.05 * i for i in range(8)])
    assert parse_etas("0.1,0.2") == (0.1, 0.2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": float("nan")}, "--lr must be a finite number, got nan"),
        ({"lr": "inf"}, "--lr must be a finite number, got inf"),
        ({"width": float("inf")}, "--width must be a finite number, got inf"),
        ({"seed": -1}, "--seed must be >= 0, got -1"),
        ({"steps": 0}, "--steps must be positive, got 0"),
        ({"noise_sigma": 0.5}, "--noise-sigma must be a finite number >= 1 (Algorithm 1)"),
        ({"optimizer": "rmsprop"}, "unknown --optimizer 'rmsprop'"),
        ({"variants": "standard,standard"}, "--variants lists a variant twice"),
        ({"etas": "0.1:x"}, "--etas '0.1:x': use LO:HI:N"),
    ],
)
def test_validation_refuses_bad_values_in_one_line(changes, message):
    with pytest.raises(ConfigError) as caught:
        validate(override(preset("smoke"), changes))
    assert message in caught.value.as_option() and "\n" not in str(caught.value)


def test_override_takes_short_names_and_dotted_paths():
    config = override(preset("quick"), {"lr": "0.5", "model.width": 0.5, "etas": "0.1:0.2:3"})
    assert config.optimizer.learning_rate == 0.5 and config.model.width == 0.5
    assert config.probe.etas == pytest.approx((0.1, 0.15, 0.2))
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        override(config, {"colour": 1})


def test_run_validates_before_anything_is_written(tmp_path, tiny_dataset):
    from landscape.rundir import RunError
    from landscape.runs import run

    with pytest.raises(ConfigError, match="lr must be a finite number"):
        run(override(preset("smoke"), {"lr": float("nan")}), tmp_path / "a", progress=False)
    with pytest.raises(RunError, match="larger than the 512 training examples"):
        run(override(preset("smoke"), {"batch_size": 600}), tmp_path / "b", progress=False,
            dataset=tiny_dataset)  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
