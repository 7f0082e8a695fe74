"""Sweeps: the grid and its configurations, and bad grids as one-line errors (sweeps of whole runs
and the command: integration/test_sweep_cli.py)."""

from __future__ import annotations

import pytest

from landscape.sweep import SweepError, configurations, parse_grid


def test_parse_grid_and_configurations(tiny_config):
    grid = parse_grid(["seed=0,1", "lr=0.05,0.1", "variant=batchnorm"])
    assert grid == {"seed": [0, 1], "lr": [0.05, 0.1], "variant": ["batchnorm"]}
    points = configurations(tiny_config, grid)
    assert [name for name, _, _ in points] == [
        "seed=0_lr=0.05_variant=batchnorm",
        "seed=0_lr=0.1_variant=batchnorm",
        "seed=1_lr=0.05_variant=batchnorm",
        "seed=1_lr=0.1_variant=batchnorm",
    ]
    _, values, config = points[3]
    assert values == {"seed": 1, "lr": 0.1, "variant": "batchnorm"}
    assert (config.seed, config.optimizer.learning_rate, config.variants) == (
        1,
        0.1,
        ("batchnorm",),
    )
    assert config.batch_size == tiny_config.batch_size  # untouched fields stay the base's


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("colour=red", "unknown key 'colour'"),
        ("seed", "use KEY=V1,V2"),
        ("seed=a", "'a' is not an integer"),
        ("lr=0,0.1", "must be positive"),
        ("seed=-1", "must be >= 0"),
        ("seed=1,1", "listed twice"),
    ],
)
def test_bad_grid_is_an_error(spec, message):
    with pytest.raises(SweepError, match=message):
        parse_grid([spec])
