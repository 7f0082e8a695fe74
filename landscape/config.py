"""Run configuration: frozen dataclasses, the presets, and JSON round-trips.

A run directory holds its full configuration as ``config.json``; ``RunConfig.from_dict`` reads
it back, so a run can be resumed or re-probed with exactly the settings it was made with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Variant names as the paper uses them, mapped to the normalisation layer they select. Every other
# variant is named after its layer in landscape.models.NORMALIZERS: noisy_batchnorm and noisy_none
# (Algorithm 1's noise with and without BN), l1, l2, linf (Sec. 3.3); see landscape/norms.py.
VARIANT_NORMS: dict[str, str] = {"standard": "none", "batchnorm": "batchnorm"}


def norm_for_variant(variant: str) -> str:
    """Returns the normalisation name for a variant ('standard' -> 'none'; others as named)."""
    return VARIANT_NORMS.get(variant, variant)


# The deep linear network of App. A.1 is named like the VGG family, by its depth: "dln" is the
# paper's 25 layers, "dln<N>" has N. Here (not in models.py) so that code without JAX can ask.
DLN_DEPTH = 25


def is_dln(arch: str) -> bool:
    """Returns True for a deep linear network's name: ``dln`` (25 layers) or ``dln<depth>``."""
    return arch == "dln" or (arch.startswith("dln") and arch[3:].isdigit() and int(arch[3:]) > 0)


def dln_depth(arch: str) -> int:
    """Returns the number of linear layers of the deep linear network named ``arch``."""
    if not is_dln(arch):
        raise ValueError(f"{arch!r} is not a deep linear network (dln or dln<depth>)")
    return DLN_DEPTH if arch == "dln" else int(arch[3:])


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "vgg11"
    width: float = 1.0
    norm: str = "none"
    placement: str = "before"
    conv_impl: str = "auto"  # "auto", "xla", "canonical" or "shifted" (models.auto_conv_impl)
    # Algorithm 1's noise constants (Sec. 2.1), the paper's values by default; only the variants
    # noisy_batchnorm and noisy_none use them (landscape.norms.NoiseConfig holds the same).
    noise_mu: float = 0.5  # n_mu: per-unit shift mu_j ~ U(-n_mu, n_mu)
    noise_sigma: float = 1.25  # n_sigma: per-unit scale sigma_j ~ U(1, n_sigma)
    noise_r_mu: float = 0.1  # r_mu: per-sample shift m_ij ~ U(mu_j - r_mu, mu_j + r_mu)
    noise_r_sigma: float = 0.1  # r_sigma: per-sample scale s_ij ~ N(sigma_j, r_sigma), a std


# The smallest value of each noise constant Algorithm 1 can draw with: three are half-widths or a
# standard deviation (>= 0), and sigma_j ~ U(1, n_sigma) needs n_sigma >= 1 (norms.check_noise).
NOISE_MINIMUM: dict[str, float] = {
    "noise_mu": 0.0,
    "noise_sigma": 1.0,
    "noise_r_mu": 0.0,
    "noise_r_sigma": 0.0,
}


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "sgd"  # "sgd", "momentum", "adam"
    learning_rate: float = 0.1
    momentum: float = 0.9  # used by "momentum" only
    weight_decay: float = 0.0


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 1  # save every k-th step (the paper's analysis needs every step)
    max_to_keep: int | None = 5  # the newest few are kept ...
    keep_period: int | None = 100  # ... and every k-th step forever
    keep_all: bool = False
    # "npz": one file per step from a background thread (the default: a few per cent of a step);
    # "orbax": orbax's CheckpointManager, for interoperability (see checkpoints.py).
    format: str = "npz"

    @property
    def enabled(self) -> bool:
        return self.every > 0


@dataclass(frozen=True)
class ProbeConfig:
    enabled: bool = True
    # Step sizes as multiples of the learning rate: the paper's VGG grid spans [1/2, 4] x lr
    # (SPEC, "The landscape probe"). ``etas`` (absolute) overrides the relative grid.
    eta_min_factor: float = 0.5
    eta_max_factor: float = 4.0
    num_etas: int = 8
    etas: tuple[float, ...] | None = None
    every: int = 1  # probe every k-th checkpointed step
    strategy: str = "auto"  # "unroll", "vmap", "map", "auto"
    map_batch_size: int = 1
    # Train step and probe as one compiled program on probed steps (runs.make_train_probe_step).
    # Off by default: a second program to compile, and a recorded loss can differ in its last
    # digit from the separate calls'; on CPU 0.96-1.01x a probed step under the command's malloc
    # settings (0.87-0.94x without them); untested on GPU yet.
    fuse: bool = False

    def grid(self, learning_rate: float) -> tuple[float, ...]:
        """Returns the absolute step sizes eta of the probe grid."""
        if self.etas is not None:
            return tuple(float(e) for e in self.etas)
        lo, hi = self.eta_min_factor * learning_rate, self.eta_max_factor * learning_rate
        if self.num_etas == 1:
            return (lo,)
        return tuple(lo + (hi - lo) * i / (self.num_etas - 1) for i in range(self.num_etas))


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run; saved as ``config.json`` in the run directory."""

    preset: str = "custom"
    data: str = "cifar10"
    seed: int = 0
    steps: int = 15_000
    batch_size: int = 128
    eval_every: int = 500  # test accuracy interval in steps (0 = only at the end)
    eval_batches: int | None = None  # limit the test set to this many batches of 1,000
    log_every: int = 50  # how often metrics are flushed from the device to disk
    variants: tuple[str, ...] = ("standard", "batchnorm")
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        raw = dict(raw)
        nested = {
            "model": ModelConfig,
            "optimizer": OptimizerConfig,
            "checkpoint": CheckpointConfig,
            "probe": ProbeConfig,
        }
        for key, sub in nested.items():
            if key in raw:
                values = dict(raw[key])
                if key == "probe" and values.get("etas") is not None:
                    values["etas"] = tuple(values["etas"])
                raw[key] = sub(**values)
        if "variants" in raw:
            raw["variants"] = tuple(raw["variants"])
        return cls(**raw)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def model_for(self, variant: str) -> ModelConfig:
        """Returns the model configuration of one variant of this run."""
        return dataclasses.replace(self.model, norm=norm_for_variant(variant))


PRESETS: dict[str, RunConfig] = {
    # Synthetic data, a narrow VGG-11: the whole probe run well under a minute on 2 CPU cores.
    "smoke": RunConfig(
        preset="smoke",
        data="synthetic",
        steps=60,
        batch_size=32,
        eval_every=30,
        eval_batches=1,
        log_every=10,
        model=ModelConfig(width=0.125),
        checkpoint=CheckpointConfig(every=1, max_to_keep=5, keep_period=10),
        probe=ProbeConfig(every=2),
    ),
    # Real CIFAR-10, VGG-11 at width 1/4: long enough for the standard network to leave its
    # initial plateau (~150 steps) and show the regime the paper reports.
    "quick": RunConfig(
        preset="quick",
        data="cifar10",
        steps=1_500,
        batch_size=128,
        eval_every=250,
        eval_batches=2,
        log_every=50,
        model=ModelConfig(width=0.25),
        checkpoint=CheckpointConfig(every=1, max_to_keep=5, keep_period=50),
        probe=ProbeConfig(every=5),
    ),
    # SPEC's full protocol (VGG-11, batch 128, lr 0.1, 15,000 steps, every step probed): for a GPU.
    "paper": RunConfig(
        preset="paper",
        data="cifar10",
        steps=15_000,
        batch_size=128,
        eval_every=500,
        log_every=100,
        model=ModelConfig(width=1.0),
        checkpoint=CheckpointConfig(every=1, max_to_keep=5, keep_period=500),
        probe=ProbeConfig(every=1),
    ),
}

# The deep linear network of App. A.1: 25 bias-free 10x10 linear layers regressing y = A x on
# 1,000 Gaussian inputs with full-batch gradient descent, probed on [1/100, 30] x lr (SPEC).
_DLN_PROBE = ProbeConfig(eta_min_factor=0.01, eta_max_factor=30.0, num_etas=8, every=1)
PRESETS["dln-paper"] = RunConfig(
    preset="dln-paper",
    data="dln",
    steps=10_000,
    batch_size=1_000,  # the whole training set: full-batch gradient descent
    eval_every=500,
    log_every=100,
    model=ModelConfig(arch="dln"),
    optimizer=OptimizerConfig(learning_rate=1e-6),  # the paper's; --lr 1e-7 for its second
    checkpoint=CheckpointConfig(every=1, max_to_keep=5, keep_period=500),
    probe=_DLN_PROBE,
)
# The same protocol for a few minutes on 2 CPU cores: the first 1,000 steps, every 5th
# checkpointed and probed (a checkpoint costs ~100x a DLN training step on CPU).
PRESETS["dln-quick"] = PRESETS["dln-paper"].replace(
    preset="dln-quick",
    steps=1_000,
    eval_every=100,
    log_every=50,
    checkpoint=CheckpointConfig(every=5, max_to_keep=5, keep_period=100),
)


def preset(name: str) -> RunConfig:
    """Returns the preset called ``name`` (smoke, quick, paper, dln-quick or dln-paper)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
