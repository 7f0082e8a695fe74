"""Run configuration, the one contract every layer reads: frozen dataclasses, the presets, the
names a setting may take, overrides by name, validation, and JSON round-trips.

A run directory holds its full configuration as ``config.json``; ``RunConfig.from_dict`` reads
it back, so a run can be resumed or re-probed with exactly the settings it was made with.

Every setting a user may change is a ``Setting`` in ``SETTINGS``: its dotted name
(``optimizer.learning_rate``), the short name users type (``lr``), its type and its rule.
``override`` applies changes by either name, ``validate`` checks a whole configuration, and the
command's options, the sweep's grid keys and the Python API all go through these two. Adding a
field: the dataclass field, its ``Setting``, and (if the command should offer it) an option.

This module imports no JAX: the command reads it to build its help.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from landscape.plugins import OPTIMIZER_GROUP, is_import_path, registered

# The names each choice may take. The modules that implement them key their tables by these names
# (models: architectures, normalisations, placements, convolution forms; probe: strategies;
# train: optimisers; checkpoints: formats); a unit test checks that the two agree.
VGG_ARCHS = ("vgg11", "vgg13", "vgg16", "vgg19")
NORMS: list[str] = [
    *("none", "batchnorm", "noisy_batchnorm", "noisy_none", "l1", "l2", "linf"),
    *("layernorm", "groupnorm", "rmsnorm", "weightnorm"),
]
PLACEMENTS = ("before", "after")  # normalisation before or after the activation
CONV_IMPLS = ("auto", "xla", "canonical", "shifted")
OPTIMIZERS = ("sgd", "momentum", "adam")
PROBE_STRATEGIES = ("auto", "unroll", "vmap", "map")
CHECKPOINT_FORMATS = ("npz", "orbax")
LOSSES = ("cross_entropy", "squared_error", "sum_squared_error")  # or package.module:function


# GroupNorm's group count rides in its name, as a deep linear network's depth does: "groupnorm" is
# Wu and He's 32 groups, "groupnorm<G>" at most G (docs/definitions.md#per-example-normalisers).
GROUPNORM = "groupnorm"
DEFAULT_GROUPS = 32


def group_norm_groups(name: str) -> int | None:
    """Returns the most groups the GroupNorm called ``name`` uses (``groupnorm``: 32,
    ``groupnorm<G>``: G >= 1), or None when ``name`` is not a GroupNorm."""
    if name == GROUPNORM:
        return DEFAULT_GROUPS
    digits = name[len(GROUPNORM) :]
    if name.startswith(GROUPNORM) and digits.isdigit() and digits[0] != "0":
        return int(digits)
    return None


def is_norm(name: str) -> bool:
    """Returns True for a normalisation's name: one of ``NORMS`` or ``groupnorm<G>``."""
    return name in NORMS or group_norm_groups(name) is not None


def register_norm_name(name: str) -> None:
    """Makes ``name`` a valid normalisation (``models.register_normalizer`` calls this)."""
    if name not in NORMS:
        NORMS.append(name)


# Variant names as the paper uses them, mapped to the normalisation layer they select. Every other
# variant is named after its layer in landscape.models.NORMALIZERS: noisy_batchnorm and noisy_none
# (Algorithm 1's noise with and without BN), l1, l2, linf (Sec. 3.3), layernorm, groupnorm (and
# groupnorm<G>), rmsnorm and weightnorm; see landscape/norms.py.
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


# Ioffe and Szegedy's Figure 1 network (784-100-100-100-10), named by its nonlinearity: "mlp" is
# their sigmoid one, "mlp_relu" and "mlp_tanh" the same network with another activation.
MLP_ACTIVATIONS = ("sigmoid", "relu", "tanh")
MLP_ARCHS = ("mlp", "mlp_relu", "mlp_tanh")


def is_mlp(arch: str) -> bool:
    """Returns True for the name of Ioffe and Szegedy's MLP (``mlp``, ``mlp_relu``, ``mlp_tanh``)."""
    return arch in MLP_ARCHS


# He et al. 2016's CIFAR ResNets (Sec. 4.2): 6n + 2 layers. "_noshort" removes every shortcut,
# Li et al. 2018's networks without skip connections (their Sec. 5).
RESNET_DEPTHS = (8, 20, 32, 44, 56, 110)
RESNET_ARCHS = tuple(f"resnet{d}{s}" for d in RESNET_DEPTHS for s in ("", "_noshort"))


def is_resnet(arch: str) -> bool:
    """Returns True for a CIFAR ResNet's name: ``resnet8``, ``resnet20`` ... ``resnet110``, each
    also with ``_noshort`` (no skip connections)."""
    return arch in RESNET_ARCHS


def resnet_blocks(arch: str) -> tuple[int, bool]:
    """Returns ``(n, shortcuts)`` of the ResNet named ``arch``: n residual blocks per stage
    (depth 6n + 2) and whether the blocks keep their identity shortcuts."""
    if not is_resnet(arch):
        raise ValueError(f"{arch!r} is not a ResNet; choose one of {', '.join(RESNET_ARCHS)}")
    depth, _, suffix = arch.removeprefix("resnet").partition("_")
    return (int(depth) - 2) // 6, suffix != "noshort"


# A small Vision Transformer for 32x32 images (Dosovitskiy et al. 2021 at CIFAR size): "vit" has
# 4 blocks; "vit<depth>" another number. Its normalisation is per token: layernorm or rmsnorm
# before each sub-layer (--placement before: pre-LN) or after its residual sum (after: post-LN).
VIT_NORMS = ("none", "layernorm", "rmsnorm")
VIT_DEPTH = 4


def is_vit(arch: str) -> bool:
    """Returns True for a Vision Transformer's name: ``vit`` or ``vit<depth>``."""
    return arch == "vit" or (arch.startswith("vit") and arch[3:].isdigit() and int(arch[3:]) > 0)


def vit_depth(arch: str) -> int:
    """Returns the number of Transformer blocks of the ViT named ``arch``."""
    if not is_vit(arch):
        raise ValueError(f"{arch!r} is not a Vision Transformer (vit or vit<depth>)")
    return VIT_DEPTH if arch == "vit" else int(arch[3:])


def mlp_activation(arch: str) -> str:
    """Returns the nonlinearity of the MLP named ``arch`` (``mlp``: sigmoid, ``mlp_<name>``)."""
    if not is_mlp(arch):
        raise ValueError(f"{arch!r} is not an MLP; choose one of {', '.join(MLP_ARCHS)}")
    return arch.partition("_")[2] or "sigmoid"


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "vgg11"
    width: float = 1.0
    norm: str = "none"
    placement: str = "before"
    conv_impl: str = "auto"  # one of CONV_IMPLS (models.auto_conv_impl)
    # Algorithm 1's noise constants (docs/definitions.md#noisy-batchnorm-algorithm-1), the
    # paper's values by default; only the variants noisy_batchnorm and noisy_none use them.
    noise_mu: float = 0.5  # n_mu: per-unit shift mu_j ~ U(-n_mu, n_mu)
    noise_sigma: float = 1.25  # n_sigma: per-unit scale sigma_j ~ U(1, n_sigma)
    noise_r_mu: float = 0.1  # r_mu: per-sample shift m_ij ~ U(mu_j - r_mu, mu_j + r_mu)
    noise_r_sigma: float = 0.1  # r_sigma: per-sample scale s_ij ~ N(sigma_j, r_sigma), a std
    # A user's network (docs/own-models.md): ``factory`` is ``package.module:function`` or a
    # registered name, called with ``model_args`` (and ``num_outputs`` if it takes it); it returns
    # a Flax Linen module or a ``landscape.network.Network``. None: the built-in ``arch``.
    factory: str | None = None
    model_args: tuple[tuple[str, Any], ...] = ()
    variant_arg: str | None = None  # the factory keyword each variant's name is passed as
    # The training loss: cross_entropy, squared_error, sum_squared_error or package.module:function
    # (per-example loss of (outputs, targets)). None: the model's own (VGG and user networks
    # cross-entropy, the deep linear network its summed squared error).
    loss: str | None = None

    @property
    def is_builtin(self) -> bool:
        return self.factory is None


# The smallest value of each noise constant Algorithm 1 can draw with: three are half-widths or a
# standard deviation (>= 0), and sigma_j ~ U(1, n_sigma) needs n_sigma >= 1.
NOISE_MINIMUM: dict[str, float] = {
    "noise_mu": 0.0,
    "noise_sigma": 1.0,
    "noise_r_mu": 0.0,
    "noise_r_sigma": 0.0,
}


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "sgd"  # one of OPTIMIZERS
    learning_rate: float = 0.1
    momentum: float = 0.9  # used by "momentum" only
    weight_decay: float = 0.0


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 1  # save every k-th step (the paper's analysis needs every step)
    max_to_keep: int | None = 5  # the newest few are kept ...
    keep_period: int | None = 100  # ... and every k-th step forever
    keep_all: bool = False
    # "npz": one file per step from a background thread (the default, the cheaper one);
    # "orbax": orbax's CheckpointManager, for interoperability (see checkpoints.py).
    format: str = "npz"

    @property
    def enabled(self) -> bool:
        return self.every > 0


@dataclass(frozen=True)
class ProbeConfig:
    enabled: bool = True
    # Step sizes as multiples of the learning rate: the paper's VGG grid spans [1/2, 4] x lr
    # (docs/definitions.md#the-landscape-probe). ``etas`` (absolute) overrides the relative grid.
    eta_min_factor: float = 0.5
    eta_max_factor: float = 4.0
    num_etas: int = 8
    etas: tuple[float, ...] | None = None
    every: int = 1  # probe every k-th checkpointed step
    strategy: str = "auto"  # one of PROBE_STRATEGIES
    map_batch_size: int = 1
    # Train step and probe as one compiled program on probed steps (runs.make_train_probe_step).
    # Off by default: a second program to compile for no gain on CPU (docs/performance.md), and
    # a recorded loss can differ in its last digit from the separate calls'.
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
    # Several named factories, one per variant (``--model plain=pkg.nets:plain``): (name, factory).
    models: tuple[tuple[str, str], ...] = ()
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
                if key == "model" and "model_args" in values:
                    values["model_args"] = tuple(tuple(pair) for pair in values["model_args"])
                raw[key] = sub(**values)
        if "variants" in raw:
            raw["variants"] = tuple(raw["variants"])
        if "models" in raw:
            raw["models"] = tuple(tuple(pair) for pair in raw["models"])
        return cls(**raw)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def model_for(self, variant: str) -> ModelConfig:
        """Returns the model configuration of one variant of this run.

        Built-in networks: the variant names the normalisation. A user's network: the variant's
        own factory (``models``), or the shared factory with the variant's name passed as its
        ``variant_arg`` keyword, or the shared factory as it is.
        """
        if self.models:
            return dataclasses.replace(self.model, factory=dict(self.models)[variant])
        if self.model.factory is not None:
            if self.model.variant_arg is None:
                return self.model
            args = (*self.model.model_args, (self.model.variant_arg, _variant_value(variant)))
            return dataclasses.replace(self.model, model_args=args)
        return dataclasses.replace(self.model, norm=norm_for_variant(variant))

    @property
    def has_user_model(self) -> bool:
        """Returns True when the run trains a user's network (``model.factory`` or ``models``)."""
        return bool(self.models) or self.model.factory is not None


def _variant_value(name: str) -> Any:
    """Returns a variant's name (or a ``--model-arg`` value) as the factory keyword's value:
    true/false as booleans, a number as a number, any other text as it is
    (``--variants skip=true,false``, ``--variants norm=none,batchnorm``)."""
    lowered = name.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if re.fullmatch(r"[+-]?\d+", name):
        return int(name)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?", name):
        return float(name)
    return name


PRESETS: dict[str, RunConfig] = {
    # Synthetic data, a narrow VGG-11, few steps: a check that everything runs, on any CPU.
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
    # The paper's full protocol (docs/definitions.md#the-papers-protocol: VGG-11, batch 128,
    # lr 0.1, 15,000 steps, every step probed): for a GPU.
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
# 1,000 Gaussian inputs with full-batch gradient descent, probed on [1/100, 30] x lr
# (docs/definitions.md#the-deep-linear-network).
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
# The same protocol, short enough for a CPU: the first 1,000 steps, every 5th
# checkpointed and probed (a checkpoint costs far more than a DLN training step).
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


# --- settings by name: overrides and validation ---------------------------------------------


class ConfigError(ValueError):
    """A setting a run cannot use, as one line naming the setting.

    ``message`` holds ``{key}`` where the setting's name goes: ``str(err)`` names it as Python
    users write it (``lr``), ``err.as_option()`` as the command's option (``--lr``).
    """

    def __init__(self, message: str, key: str = "") -> None:
        self.message, self.key = message, key
        super().__init__(message.format(key=key))

    def as_option(self) -> str:
        return self.message.format(key="--" + self.key.replace("_", "-"))


@dataclass(frozen=True)
class Setting:
    """One field a user may set: where it lives, how text parses, which values it may take."""

    path: str  # dotted: "optimizer.learning_rate", or a top-level field: "seed"
    kind: type  # int, float, str, bool or tuple
    least: float | None = None  # numbers: the smallest allowed value
    strict: bool = False  # numbers: must exceed ``least`` (not equal it)
    optional: bool = False  # None is allowed
    choices: Callable[[], Any] | None = None  # str: the allowed names (a function: NORMS grows)


def _nonneg(path: str, kind: type = int) -> Setting:
    return Setting(path, kind, least=0)


def _positive(path: str, kind: type = int, optional: bool = False) -> Setting:
    return Setting(path, kind, least=0, strict=True, optional=optional)


# Keyed by the short name users type; ``override`` also takes the dotted path.
SETTINGS: dict[str, Setting] = {
    "data": Setting("data", str),
    "seed": _nonneg("seed"),
    "steps": _positive("steps"),
    "batch_size": _positive("batch_size"),
    "eval_every": _nonneg("eval_every"),
    "eval_batches": _positive("eval_batches", optional=True),
    "log_every": _positive("log_every"),
    "variants": Setting("variants", tuple),
    "arch": Setting("model.arch", str),
    "width": _positive("model.width", float),
    "placement": Setting("model.placement", str, choices=lambda: PLACEMENTS),
    "conv_impl": Setting("model.conv_impl", str, choices=lambda: CONV_IMPLS),
    **{name: Setting(f"model.{name}", float, least=least) for name, least in NOISE_MINIMUM.items()},
    "model": Setting("model.factory", str, optional=True),
    "variant_arg": Setting("model.variant_arg", str, optional=True),
    "loss": Setting("model.loss", str, optional=True),
    "optimizer": Setting("optimizer.name", str),
    "lr": _positive("optimizer.learning_rate", float),
    "momentum": _nonneg("optimizer.momentum", float),
    "weight_decay": _nonneg("optimizer.weight_decay", float),
    "checkpoint_every": _nonneg("checkpoint.every"),
    "max_to_keep": _positive("checkpoint.max_to_keep", optional=True),
    "keep_period": _positive("checkpoint.keep_period", optional=True),
    "keep_all": Setting("checkpoint.keep_all", bool),
    "checkpoint_format": Setting("checkpoint.format", str, choices=lambda: CHECKPOINT_FORMATS),
    "probe": Setting("probe.enabled", bool),
    "eta_min_factor": _positive("probe.eta_min_factor", float),
    "eta_max_factor": _positive("probe.eta_max_factor", float),
    "num_etas": _positive("probe.num_etas"),
    "etas": Setting("probe.etas", tuple, optional=True),
    "probe_every": _positive("probe.every"),
    "probe_strategy": Setting("probe.strategy", str, choices=lambda: PROBE_STRATEGIES),
    "map_batch_size": _positive("probe.map_batch_size"),
    "fuse": Setting("probe.fuse", bool),
}
_BY_PATH = {setting.path: name for name, setting in SETTINGS.items()}


def setting_name(key: str) -> str:
    """Returns the short name of a setting given by short name or dotted path (``-`` as ``_``);
    raises ConfigError for an unknown one."""
    key = key.strip().replace("-", "_")
    if key in SETTINGS:
        return key
    if key in _BY_PATH:
        return _BY_PATH[key]
    raise ConfigError(f"unknown setting {key!r}; choose from {', '.join(SETTINGS)}")


def parse_etas(text: str) -> tuple[float, ...]:
    """Parses ``LO:HI:N`` (N evenly spaced step sizes) or a comma-separated list of them."""
    try:
        if ":" in text:
            lo, hi, n = text.split(":")
            count = int(n)
            if count < 1:
                raise ValueError
            lo_f, hi_f = float(lo), float(hi)
            if count == 1:
                return (lo_f,)
            return tuple(lo_f + (hi_f - lo_f) * i / (count - 1) for i in range(count))
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(
            f"{{key}} {text!r}: use LO:HI:N (e.g. 0.05:0.4:8) or a list (0.05,0.1,0.2)", "etas"
        ) from None


def parse_value(key: str, text: str) -> Any:
    """Returns the value of setting ``key`` written as text (``"0.1"``, ``"a,b"``, ``"true"``)."""
    name = setting_name(key)
    setting = SETTINGS[name]
    text = text.strip()
    if setting.optional and text.lower() == "none":
        return None
    if name == "etas":
        return parse_etas(text)
    if setting.kind is tuple:
        return tuple(v.strip() for v in text.split(",") if v.strip())
    if setting.kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{{key}} {text!r} is not true or false", name)
    if setting.kind is str:
        return text
    try:
        return setting.kind(text)
    except ValueError:
        what = "an integer" if setting.kind is int else "a number"
        raise ConfigError(f"{{key}} {text!r} is not {what}", name) from None


def _set_path(config: RunConfig, path: str, value: Any) -> RunConfig:
    group, _, attr = path.rpartition(".")
    if not group:
        return config.replace(**{attr: value})
    inner = dataclasses.replace(getattr(config, group), **{attr: value})
    return config.replace(**{group: inner})


def override(config: RunConfig, changes: Mapping[str, Any]) -> RunConfig:
    """Returns ``config`` with ``changes`` applied: keys are short names (``lr``) or dotted
    paths (``optimizer.learning_rate``), values are typed or text (parsed as ``parse_value``).

    Raises ConfigError for an unknown key or unparsable text. It does not validate: call
    ``validate`` on the result.
    """
    for key, value in changes.items():
        name = setting_name(key)
        if isinstance(value, str) and SETTINGS[name].kind is not str:
            value = parse_value(name, value)
        if SETTINGS[name].kind is tuple and value is not None:
            value = tuple(value)
        config = _set_path(config, SETTINGS[name].path, value)
    return config


def get_setting(config: RunConfig, key: str) -> Any:
    """Returns the value of setting ``key`` (short name or dotted path) in ``config``."""
    value: Any = config
    for part in SETTINGS[setting_name(key)].path.split("."):
        value = getattr(value, part)
    return value


def check_setting(key: str, value: Any) -> None:
    """Raises ConfigError if ``value`` breaks setting ``key``'s own rule (type, sign, choice)."""
    name = setting_name(key)
    setting = SETTINGS[name]
    if value is None:
        if not setting.optional:
            raise ConfigError("{key} must be given", name)
        return
    if setting.kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{{key}} must be a number, got {value!r}", name)
        if setting.kind is int and value != int(value):
            raise ConfigError(f"{{key}} must be an integer, got {value!r}", name)
        if name in NOISE_MINIMUM and not (math.isfinite(value) and value >= setting.least):
            raise ConfigError(
                f"{{key}} must be a finite number >= {setting.least:g} (Algorithm 1), got {value:g}",
                name,
            )
        if not math.isfinite(value):
            raise ConfigError(f"{{key}} must be a finite number, got {value}", name)
        if setting.least is not None:
            if setting.strict and not value > setting.least:
                raise ConfigError(f"{{key}} must be positive, got {value:g}", name)
            if not value >= setting.least:
                raise ConfigError(f"{{key}} must be >= {setting.least:g}, got {value:g}", name)
    elif setting.choices is not None and value not in setting.choices():
        raise ConfigError(f"unknown {{key}} {value!r}; choose {', '.join(setting.choices())}", name)


def validate(config: RunConfig) -> RunConfig:
    """Returns ``config`` if a run can use it; raises ConfigError (one line) otherwise.

    Checks every setting's own rule, then how they fit together: the architecture against the
    data, the variants' normalisations, a variant listed twice, the probe's step sizes.
    """
    for name in SETTINGS:
        check_setting(name, get_setting(config, name))
    if not config.variants:
        raise ConfigError("{key} needs at least one name", "variants")
    if config.has_user_model:
        _validate_user_model(config)
    else:
        _validate_builtin_model(config)
    name = config.optimizer.name
    if (
        name not in OPTIMIZERS
        and not is_import_path(name)
        and name not in registered(OPTIMIZER_GROUP)
    ):
        raise ConfigError(
            f"unknown {{key}} {name!r}; choose {', '.join(OPTIMIZERS)}, package.module:function "
            "or a name registered under landscape.optimizers",
            "optimizer",
        )
    loss = config.model.loss
    if loss is not None and loss not in LOSSES and not is_import_path(loss):
        raise ConfigError(
            f"unknown {{key}} {loss!r}; choose {', '.join(LOSSES)} or package.module:function",
            "loss",
        )
    if len(set(config.variants)) != len(config.variants):
        raise ConfigError("{key} lists a variant twice", "variants")
    etas = config.probe.etas
    if etas is not None and (not etas or not all(math.isfinite(e) and e > 0 for e in etas)):
        raise ConfigError(f"{{key}} {etas}: step sizes must be positive finite numbers", "etas")
    return config


def _validate_builtin_model(config: RunConfig) -> None:
    arch = config.model.arch
    known = (is_dln(arch), is_mlp(arch), is_resnet(arch), is_vit(arch), arch in VGG_ARCHS)
    if not any(known):
        choices = ", ".join((*VGG_ARCHS, *MLP_ARCHS, "resnet20 ... resnet110[_noshort]", "vit"))
        raise ConfigError(f"unknown {{key}} {arch!r}; choose one of {choices}, dln or dlnN", "arch")
    if is_vit(arch):
        for variant in config.variants:
            if norm_for_variant(variant) not in VIT_NORMS:
                raise ConfigError(
                    f"variant {variant!r}: a Vision Transformer normalises each token, with "
                    "standard (none), layernorm or rmsnorm",
                    "variants",
                )
    dln_data = config.data == "dln" or config.data.startswith("dln:")
    if is_dln(arch) != dln_data:
        raise ConfigError(
            f"{{key}} {arch} with data {config.data}: the deep linear network trains on data "
            "dln (or dln:SEED), a VGG or MLP on image data; try the dln-quick preset",
            "arch",
        )
    for variant in config.variants:
        if not is_norm(norm_for_variant(variant)):
            choices = ", ".join(["standard", *(n for n in NORMS if n != "none"), "groupnorm<G>"])
            raise ConfigError(f"unknown variant {variant!r}; choose from {choices}", "variants")
    if config.model.variant_arg is not None:
        raise ConfigError("{key} KEY=V1,V2 needs a --model factory", "variants")
    if config.model.model_args:
        raise ConfigError("{key} needs a --model factory", "model_arg")


def _validate_user_model(config: RunConfig) -> None:
    if config.models:
        if config.model.factory is not None:
            raise ConfigError("give either one {key} factory or named ones (NAME=FACTORY)", "model")
        names = [name for name, _ in config.models]
        if len(set(names)) != len(names):
            raise ConfigError("{key} names a variant twice", "model")
        if tuple(names) != tuple(config.variants):
            raise ConfigError(
                f"{{key}}: the variants are the named models ({', '.join(names)}), "
                f"not {', '.join(config.variants)}",
                "variants",
            )
    factories = [factory for _, factory in config.models] or [config.model.factory]
    for factory in factories:
        if not factory or (":" in factory and not is_import_path(factory)):
            raise ConfigError(
                f"{{key}} {factory!r}: use package.module:function or a registered name", "model"
            )
    for key, value in config.model.model_args:
        if not str(key).isidentifier():
            raise ConfigError(f"{{key}}: argument name {key!r} is not a Python name", "model_arg")
        if not (value is None or isinstance(value, bool | int | float | str)):
            raise ConfigError(
                f"{{key}} {key}: a number, true/false or text, not {value!r}", "model_arg"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{{key}} {key}: a finite number, not {value}", "model_arg")
    if not config.models and config.model.variant_arg is None and len(config.variants) > 1:
        raise ConfigError(
            "{key}: one --model trains one network; pass KEY=V1,V2 to vary one of its keywords, "
            "or name one factory per variant (--model NAME=FACTORY)",
            "variants",
        )
    for variant in config.variants:
        if not re.fullmatch(r"[A-Za-z0-9._=+-]+", variant) or variant in (".", ".."):
            raise ConfigError(
                f"{{key}}: {variant!r} cannot name a folder (letters, digits, . _ = + - only)",
                "variants",
            )


def apply_model_options(
    config: RunConfig,
    models: Sequence[str] = (),
    model_args: Sequence[str] = (),
    variants: str | None = None,
) -> RunConfig:
    """Returns ``config`` training the user's network the command line names.

    ``models``: one ``package.module:function`` (or registered name), or several
    ``NAME=FACTORY``, one variant each. ``model_args``: ``KEY=VALUE`` arguments of the factory
    (numbers and true/false are typed). ``variants``: names, or ``KEY=V1,V2`` to pass
    each variant's value as the factory's keyword KEY. Without ``variants`` a single factory
    trains one variant named after its function. Raises ConfigError in one line.
    """
    model = config.model
    named: list[tuple[str, str]] = []
    for item in models:
        name, sep, factory = item.partition("=")
        if sep:
            named.append((name.strip(), factory.strip()))
        elif len(models) > 1:
            raise ConfigError("{key}: name each of several models, NAME=FACTORY", "model")
        else:
            model = dataclasses.replace(model, factory=item.strip())
    arguments = []
    for item in model_args:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{{key}} {item!r}: use KEY=VALUE", "model_arg")
        arguments.append((key.strip(), _variant_value(text.strip())))
    if arguments:
        model = dataclasses.replace(model, model_args=tuple(arguments))
    changes: dict[str, Any] = {"model": model}
    if named:
        changes["models"] = tuple(named)
        changes["variants"] = tuple(name for name, _ in named)
    if variants is not None:
        key, sep, values = variants.partition("=")
        if sep:
            changes["model"] = dataclasses.replace(changes["model"], variant_arg=key.strip())
            variants = values
        names = tuple(v.strip() for v in variants.split(",") if v.strip())
        changes["variants"] = names
    elif model.factory is not None and not named:
        changes["variants"] = (model.factory.rpartition(":")[2].rpartition(".")[2],)
    return config.replace(**changes)
