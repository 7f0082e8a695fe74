"""Option declarations shared by several commands, defined once (Typer's reusable
``Annotated`` options). A configuration option is named after its setting in
``landscape.config.SETTINGS``, so ``run.build_config`` can pass it on by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PresetOpt = Annotated[
    str,
    typer.Option(
        "--preset",
        help="Starting configuration: smoke (synthetic data, a tiny VGG, 60 steps: checks the install), quick (real CIFAR-10, VGG-11 width 1/4, 1,500 steps), paper (the full protocol, for a GPU), dln-paper (the paper's deep linear network, App. A.1: 25 linear 10x10 layers, full-batch GD at lr 1e-6, 10,000 steps, probe grid [1/100, 30] x lr) or dln-quick (its first 1,000 steps, every 5th probed: for a CPU). Options below override it.",
    ),
]


DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Data: 'synthetic', a path to cifar-10-binary.tar.gz or cifar-100-binary.tar.gz (100 fine classes; 'cifar100' looks in the cache folder) or their folders, mnist:DIR or fashion-mnist:DIR (the official IDX files), an image folder/tar with train/<class>/ and test/<class>/; your own arrays: a file.npz with x_train, y_train, x_test, y_test (float targets: a regression task), or package.module:function returning them (docs/own-models.md); 'dln' or 'dln:SEED' is the deep linear network's regression task (y = A x, 1,000 Gaussian inputs). Default: the preset's; for real CIFAR-10 $LANDSCAPE_DATA, then the cache (~/.cache/landscape), then download.",
    ),
]


OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Run directory to create. Default: runs/<preset>-<date>-<time>."),
]


StepsOpt = Annotated[
    int | None,
    typer.Option(
        "--steps",
        help="Training steps per variant. Default: the preset's (smoke 60, quick 1500, paper 15000, dln-quick 1000, dln-paper 10000).",
    ),
]


BatchOpt = Annotated[
    int | None,
    typer.Option("--batch-size", help="Minibatch size. Default: the preset's (128; smoke 32)."),
]


LrOpt = Annotated[
    float | None,
    typer.Option("--lr", help="Learning rate. Default: the paper's (0.1; DLN presets 1e-6)."),
]


OptimOpt = Annotated[
    str | None,
    typer.Option(
        "--optimizer",
        help="sgd (default, the paper's), momentum (0.9), adam, or your own: package.module:function (or a name registered under landscape.optimizers) called with learning_rate (and momentum, weight_decay if it takes them), returning an optax GradientTransformation.",
    ),
]


SeedOpt = Annotated[
    int | None,
    typer.Option(
        "--seed",
        help="Seed of the initialisation and of the data order (shared by all variants). Default 0.",
    ),
]


ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="Model: vgg11 (default), vgg13, vgg16, vgg19; resnet20, resnet32, resnet44, resnet56, resnet110: He et al.'s CIFAR ResNets (resnet8: the smallest, one block a stage) (resnet56_noshort and so on: without skip connections, as in Li et al. 2018); vit: a small Vision Transformer (4 blocks, vitN for N; variants standard, layernorm, rmsnorm; --placement before/after: pre- or post-LN); mlp: Ioffe & Szegedy's 784-100-100-100-10 sigmoid network (mlp_relu, mlp_tanh: other nonlinearities); or dln: the paper's deep linear network (25 bias-free 10x10 linear layers, squared-error loss, needs --data dln; dlnN for N layers). Default: the preset's.",
    ),
]


WidthOpt = Annotated[
    float | None,
    typer.Option(
        "--width",
        help="Width multiplier of every layer. Default: the preset's (smoke 0.125, quick 0.25, paper 1).",
    ),
]


VariantsOpt = Annotated[
    str | None,
    typer.Option(
        "--variants",
        help="Comma-separated variants trained side by side with the same seed and data order: standard, batchnorm, noisy_batchnorm (BN + Algorithm 1's noise), noisy_none (the noise without BN), l1, l2, linf (l_p normalisation, Sec. 3.3), layernorm, groupnorm (32 groups; groupnorm8: at most 8), rmsnorm, weightnorm. Default: standard,batchnorm. With --model: any names, or KEY=V1,V2 to pass each variant's value as the factory's keyword KEY (--variants norm=none,batchnorm).",
    ),
]
ModelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        help="Your own network instead of the built-in VGG: package.module:function (a file in the working directory works: mynets:resnet20), or a name a package registered (entry point group landscape.models). It returns a flax.linen.Module or a landscape.network.Network; it gets the --model-arg values, and num_outputs if it takes it. Repeat as NAME=FACTORY for one variant per factory. See docs/own-models.md.",
    ),
]
ModelArgOpt = Annotated[
    list[str] | None,
    typer.Option("--model-arg", help="KEY=VALUE argument of the --model factory (repeatable)."),
]
LossOpt = Annotated[
    str | None,
    typer.Option(
        "--loss",
        help="Training loss: cross_entropy, squared_error (mean over examples), sum_squared_error, or package.module:function returning the per-example loss of (outputs, targets). Default: the network's own (cross-entropy; the deep linear network's summed squared error).",
    ),
]


PlacementOpt = Annotated[
    str | None,
    typer.Option(
        "--placement",
        help="Where each normalisation layer sits: before (default, the paper's: conv, norm, ReLU) or after the ReLU (conv, ReLU, norm).",
    ),
]


ConvOpt = Annotated[
    str | None,
    typer.Option(
        "--conv-impl",
        help="Convolution implementation: auto (default: on CPU canonical for maps of 4x4 and more and shifted-matmul below, XLA's elsewhere), xla (JAX's gradient), canonical (XLA's convolution with a gradient that stays fast inside loops) or shifted. Same numbers to float32 rounding, different speed.",
    ),
]


# Algorithm 1's constants (Sec. 2.1). Text, parsed by build_config: a non-number is one line.
NoiseMuOpt = Annotated[
    str | None,
    typer.Option(
        "--noise-mu",
        metavar="FLOAT",
        help="Algorithm 1's n_mu (Sec. 2.1): every step each unit's mean shift is drawn as mu_j ~ U(-n_mu, n_mu); >= 0. Used by noisy_batchnorm and noisy_none only. Default 0.5, the paper's.",
    ),
]


NoiseSigmaOpt = Annotated[
    str | None,
    typer.Option(
        "--noise-sigma",
        metavar="FLOAT",
        help="Algorithm 1's n_sigma: each unit's mean scale sigma_j ~ U(1, n_sigma); >= 1 (1: every sigma_j is 1). Noisy variants only. Default 1.25, the paper's.",
    ),
]


NoiseRMuOpt = Annotated[
    str | None,
    typer.Option(
        "--noise-r-mu",
        metavar="FLOAT",
        help="Algorithm 1's r_mu: each sample's shift m_ij ~ U(mu_j - r_mu, mu_j + r_mu); >= 0. Noisy variants only. Default 0.1, the paper's.",
    ),
]


NoiseRSigmaOpt = Annotated[
    str | None,
    typer.Option(
        "--noise-r-sigma",
        metavar="FLOAT",
        help="Algorithm 1's r_sigma: each sample's scale s_ij ~ N(sigma_j, r_sigma), a standard deviation; >= 0. Noisy variants only. Default 0.1, the paper's.",
    ),
]


CkptOpt = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-every",
        help="Save a checkpoint every k steps (0 = never). Default 1: every step, as the analysis needs.",
    ),
]


KeepOpt = Annotated[
    int | None, typer.Option("--max-to-keep", help="Keep the newest k checkpoints. Default: 5.")
]


PeriodOpt = Annotated[
    int | None,
    typer.Option(
        "--keep-period",
        help="Also keep every k-th step's checkpoint forever. Default: the preset's (smoke 10, quick 50, paper 500).",
    ),
]


CkptFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--checkpoint-format",
        help="npz (default: one file per step, written by a background thread, so a step barely waits for it) or orbax (orbax's CheckpointManager, slower per save: its bookkeeping runs on the training thread). Either is read back.",
    ),
]


KeepAllOpt = Annotated[
    bool,
    typer.Option(
        "--keep-all", help="Keep every checkpoint (needs disk: about 4 bytes x parameters each)."
    ),
]


EvalOpt = Annotated[
    int | None,
    typer.Option(
        "--eval-every",
        help="Test accuracy every k steps (0 = only at the end). Default: the preset's.",
    ),
]


ResumeOpt = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        help="Continue the run in this directory from its newest checkpoint with its saved settings (bit-identical to an uninterrupted run); only --steps (to extend it) and --data (the same data, moved) may change.",
    ),
]


ReuseOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--reuse",
        help="A finished run to take variants from instead of training them again (repeatable): a variant is copied when that run trained it with the same settings (all but --variants, the data's path and the preset's name; the probe's too for train) on the same data (sha256), JAX version and kind of device, to the last step. Runs are deterministic, so the copy equals a rerun. Other variants train as usual; each is reported.",
    ),
]


OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing run directory.")
]


ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]


DevicesOpt = Annotated[
    str,
    typer.Option(
        "--devices",
        help="Devices each step is spread over: all (default: every visible device, or the most that divide the batch size) or a number. The batch is split across them (data parallel, BatchNorm statistics over the whole batch) and the probe's step sizes too; the numbers do not depend on the count. 1 = the single-device code.",
    ),
]


DistributedOpt = Annotated[
    bool,
    typer.Option(
        "--distributed",
        help="Join a multi-host run (jax.distributed.initialize) using $JAX_COORDINATOR_ADDRESS (host:port of process 0), $JAX_NUM_PROCESSES and $JAX_PROCESS_ID, or SLURM/Open MPI/TPU auto-detection. Run the same command on every host; only process 0 writes.",
    ),
]


RunDirArg = Annotated[
    Path, typer.Argument(help="A run directory made by landscape probe/train (with checkpoints).")
]


LogOpt = Annotated[
    str | None,
    typer.Option(
        "--log",
        help='Also write the records as TensorBoard event files while they are produced: tensorboard (into RUN_DIR/tensorboard) or tensorboard:DIR. View them with: tensorboard --logdir RUN_DIR/tensorboard. Needs the tensorboard extra: pip install -e ".[tensorboard]" in your landscape checkout.',
    ),
]


# The loss-landscape pictures' options, shared by surface, interpolate and trajectory.
PictureVariantsOpt = Annotated[
    str | None,
    typer.Option(
        "--variants", help="Comma-separated variants to picture. Default: all of the run's."
    ),
]


PictureBatchesOpt = Annotated[
    int,
    typer.Option(
        "--batches",
        help="Training batches the loss is averaged over: those of steps N, N+1, ... (1, the default: the checkpoint step's own batch).",
    ),
]


PictureModeOpt = Annotated[
    str,
    typer.Option(
        "--mode",
        help="train (default): BatchNorm normalises with each batch's statistics, as the optimiser sees the loss; eval: with the checkpoint's running averages.",
    ),
]


PictureChunkOpt = Annotated[
    int | None,
    typer.Option(
        "--chunk",
        help="Grid points per compiled call, each appended to the record when done. Default: 4 per device on CPU, 32 per device on accelerators.",
    ),
]


PictureStrategyOpt = Annotated[
    str | None,
    typer.Option(
        "--strategy",
        help="How a chunk's points are mapped: map (lax.map, the CPU default) or vmap (the accelerator default). Same numbers.",
    ),
]


PictureAccuracyOpt = Annotated[
    bool, typer.Option("--accuracy/--no-accuracy", help="Also record the accuracy on the batches.")
]


PictureDataOpt = Annotated[
    str | None,
    typer.Option(
        "--data", help="The run's data, if it moved. Default: the data in its config.json."
    ),
]


PictureOverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace a record made with other settings. Without it a rerun with the same settings evaluates only the missing points.",
    ),
]


PictureFiguresOpt = Annotated[
    bool,
    typer.Option(
        "--figures/--no-figures", help="Draw the picture into RUN_DIR/figures/ at the end."
    ),
]
