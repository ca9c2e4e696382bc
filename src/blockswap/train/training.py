"""Training teachers and attention-transfer students on CIFAR-10 or an image folder (SPEC section 5).

The default recipe is the paper's CIFAR-10 one: SGD with momentum 0.9, weight
decay 5e-4, lr 0.1, batch 128, 200 epochs, random crop + flip + Cutout, and
either the published code's cosine annealing or the paper's lr / 5 at 30%, 60%
and 80% of training. `RECIPES["imagenet"]` (`TrainConfig.from_recipe`, the
CLI's `--recipe imagenet`) is the paper's ImageNet one: 100 epochs, batch 256,
weight decay 1e-4, lr / 10 every 30 epochs, beta 750, no Cutout. An image
folder's images take the random resized crop + flip (`blockswap.data.imagefolder`).
A student with a teacher minimises CE + attention transfer at the stage outputs
(`blockswap.train.distill`); without a teacher it minimises CE alone.

The CIFAR-10 data pipeline follows airbench: the training set sits on the
device as one uint8 tensor, a batch is a slice of a seeded permutation, and
augmentation runs on the whole batch there. An image folder's batches are the
same slices, decoded by DataLoader workers with each image's crop seeded by
(seed, epoch, index). Each epoch's permutation and augmentation come from
generators seeded by (seed, epoch[, rank]), so a run resumed from the checkpoint
written at the end of an epoch replays exactly the batches of an uninterrupted run.

Given a process group (as `blockswap.util.distributed.setup_distributed` joins under
torchrun), every process takes its slice of each global batch,
DistributedDataParallel averages the gradients (gloo on CPU, nccl on CUDA), BN
statistics stay per process as in plain DDP, test images are sharded and their
sums all-reduced, and only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..data import load_split, take_subset
from ..data.cifar import ImageSet
from ..data.imagefolder import DataError, FolderSplit, check_classes, default_loader_workers
from ..space.backbones import Backbone
from ..space.genotype import Genotype
from ..space.networks import BlockNetwork
from ..util.distributed import Distributed
from ..util.errors import BlockSwapError
from ..util.options import check_fields, from_record, option, positive_int, seed_int
from ..util.precision import PRECISIONS, autocast, resolve_precision
from ..util.recipe import PER_STEP_SCHEDULES, SCHEDULES, Recipe
from ..util.rundir import check_recorded, file_digest, read_json, record, write_json_atomic, write_text_atomic
from ..weights.checkpoint import read_checkpoint, save_atomic
from ..weights.teachers import load_network
from .distill import DistillConfig, LossParts, student_loss
from .pruning import PRUNE_IMPORTANCE, PRUNE_METHODS, Pruner, nonzero_params

__all__ = ["error_sums", "SCHEDULES", "ONE_PROCESS", "RECIPES", "RECIPE_BETA", "recipe_defaults", "TrainConfig",
           "TrainingError", "DivergedError", "TapsModule", "forward_loss", "train_step", "make_scheduler",
           "epoch_order", "train"]

ONE_PROCESS = "one-process"  # train(group=ONE_PROCESS): this process alone, whatever torchrun started
IMAGES_FILE = "images.json"  # an image-folder run's manifests of its images, checked on resume
STEP_FRACTIONS = (0.3, 0.6, 0.8)  # the paper's epochs 60, 120, 160 of 200
STEP_GAMMA = 0.2  # the paper divides the learning rate by 5
STEP30_EVERY, STEP30_GAMMA = 30, 0.1  # ImageNet (SPEC section 5): lr / 10 every 30 epochs
LOG_EVERY = 20  # steps between progress updates (and the NaN check, which needs a sync)
EVAL_BATCH = 500
_FLAT_DISTILL = ("beta", "kd_alpha", "kd_temperature")  # how earlier versions recorded the distillation settings


RECIPES: dict[str, Recipe] = {
    "cifar": Recipe(),  # Recipe's own defaults: the paper's CIFAR-10 recipe
    "imagenet": Recipe(epochs=100, batch_size=256, lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step-30",
                       cutout=0),  # SPEC section 5
}
RECIPE_BETA: dict[str, float] = {"cifar": DistillConfig().beta, "imagenet": 750.0}  # each recipe's AT weight


def recipe_defaults(recipe: str) -> dict[str, Any]:
    """The training options' defaults under `recipe` (a RECIPES name): its Recipe fields and its beta."""
    if recipe not in RECIPES:
        raise BlockSwapError(f"unknown recipe {recipe!r}; valid choices: {', '.join(RECIPES)}")
    return {**RECIPES[recipe].recipe_settings(), "beta": RECIPE_BETA[recipe]}


class TrainingError(BlockSwapError):
    """A run that cannot go on: a diverged loss, or an output folder holding another run."""


class DivergedError(TrainingError):
    """The training loss became NaN or infinite: a property of the run (network, recipe), not of the setup."""


@dataclass
class TrainConfig(Recipe):
    """Everything that determines a training run; saved as config.json in its output folder.

    The recipe's settings (epochs, batch_size, lr, ...) are `Recipe`'s fields, keyword-only.
    """

    genotype: Genotype = field(metadata=option(
        "the network to train (its Genotype.to_dict() form is read too); the CLI resolves --model/--genotype/"
        "baselines", cli=False))
    data_dir: str = field(metadata=option(
        "folder holding cifar-10-batches-py (downloaded there, MD5-checked, if missing), or an image folder "
        "(train/<class>/*, val/<class>/*; val is the test set)"))
    teacher: str | None = field(default=None, metadata=option(
        "teacher weight file for distillation; None trains with cross-entropy alone", cli=False))
    teacher_genotype: Genotype | None = field(default=None, metadata=option(
        "the teacher's architecture (or its to_dict() form); None reads it from the teacher file", cli=False))
    teacher_sha256: str | None = field(default=None, metadata=option(
        "SHA-256 of the teacher file, filled in when training starts; a resume refuses a changed teacher", cli=False))
    distill: DistillConfig = field(default_factory=DistillConfig, metadata=option(
        "attention-transfer and KD weights", cli=True))
    prune: str | None = field(default=None, metadata=option(
        "l1 (the teacher's trained weights) or snip (at initialisation): prune before training", cli=False))
    prune_budget: int | None = field(default=None, metadata=option(
        "non-zero parameters left by pruning", cli=False, check=positive_int))
    train_subset: int | None = field(default=None, metadata=option(
        "train on N images only: CIFAR-10's first N, an image folder's N evenly spaced (every class keeps its share)",
        check=positive_int))
    test_subset: int | None = field(default=None, metadata=option(
        "test on N images only, chosen the same way", check=positive_int))
    seed: int = field(default=0, metadata=option(
        "fixes initial weights, batch order, augmentation and the SNIP batch", check=seed_int))
    precision: str = field(default="auto", metadata=option(
        "auto: bf16 autocast on CUDA and on CPUs with AVX512-BF16/AMX, else fp32", choices=PRECISIONS))
    channels_last: bool = field(default=True, metadata=option(
        "keep NCHW tensors (channels_last is faster for dense convs, slower for some grouped ones)"))

    def __post_init__(self) -> None:
        """Read the genotypes and distillation weights given in their JSON form."""
        if isinstance(self.distill, dict):
            self.distill = DistillConfig(**self.distill)
        if isinstance(self.genotype, dict):
            self.genotype = Genotype.from_dict(self.genotype)
        if isinstance(self.teacher_genotype, dict):
            self.teacher_genotype = Genotype.from_dict(self.teacher_genotype)

    def validate(self) -> TrainConfig:
        """Raise BlockSwapError naming the first bad setting."""
        check_fields(self)
        size = self.genotype.backbone.input_size
        if self.cutout > size:
            raise BlockSwapError(f"cutout must be at most {size} pixels (the input size), got {self.cutout}")
        if self.prune is not None:
            if self.prune not in PRUNE_METHODS:
                choices = ", ".join(PRUNE_METHODS)
                raise BlockSwapError(f"unknown pruning method {self.prune!r}; valid choices: {choices}")
            if self.prune_budget is None:
                raise BlockSwapError("pruning needs a budget of non-zero parameters")
            if self.prune == "l1" and self.teacher is None:
                raise BlockSwapError("L1 pruning prunes trained teacher weights: give the teacher checkpoint")
        return self

    @classmethod
    def from_recipe(cls, recipe: str, **settings: Any) -> TrainConfig:
        """A config with `recipe`'s settings (see RECIPES) where `settings` give none; `settings` win (a `distill`
        given whole replaces the recipe's beta too)."""
        chosen = recipe_defaults(recipe)
        beta = chosen.pop("beta")
        if "distill" not in settings:
            settings["distill"] = DistillConfig(beta=beta)
        return cls(**{**chosen, **settings})

    def pruning(self) -> dict[str, Any] | None:
        """How the network was pruned, as recorded in weight files and final.json."""
        return None if self.prune is None else {"method": self.prune, "budget": self.prune_budget}

    @classmethod
    def from_dict(cls, data: Any) -> TrainConfig:
        """The config saved in config.json (an earlier version's flat beta/kd_* settings included)."""
        if not isinstance(data, dict):
            raise BlockSwapError("a training config must be a JSON object")
        data = dict(data)
        flat = {k: data.pop(k) for k in _FLAT_DISTILL if k in data}
        if flat:
            data["distill"] = {**flat, **data.get("distill", {})}
        return from_record(cls, data, "training config")

    def record(self) -> dict[str, Any]:
        """The flat JSON form config.json holds, genotypes as to_dict() gives them (so earlier files compare equal)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["genotype"] = self.genotype.to_dict()
        data["teacher_genotype"] = None if self.teacher_genotype is None else self.teacher_genotype.to_dict()
        data["distill"] = asdict(self.distill)
        return json.loads(json.dumps(data))


class TapsModule(nn.Module):
    """A network whose forward returns (logits, stage outputs), so DDP sees the distillation pass."""

    def __init__(self, net: BlockNetwork) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        taps = self.net.forward_taps(x)
        return taps.logits, taps.stages


def forward_loss(
    model: nn.Module,
    teacher: BlockNetwork | None,
    x: Tensor,
    y: Tensor,
    distill: DistillConfig,
    precision: str = "fp32",
) -> tuple[LossParts, Tensor]:
    """The student loss on one batch (CE alone without a teacher) and the student's logits."""
    with autocast(x.device, precision):
        logits, stages = model(x)
        if teacher is None:
            return student_loss(logits, y, distill), logits
        with torch.no_grad():
            t = teacher.forward_taps(x)
    return student_loss(logits, y, distill, stages, t.stages, t.logits), logits


def train_step(
    model: nn.Module,
    teacher: BlockNetwork | None,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    distill: DistillConfig,
    precision: str = "fp32",
) -> tuple[LossParts, Tensor]:
    """One optimiser step on one batch; returns the loss terms and the student's logits."""
    parts, logits = forward_loss(model, teacher, x, y, distill, precision)
    optimizer.zero_grad(set_to_none=True)
    parts.total.backward()
    optimizer.step()
    return parts, logits


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, epochs: int, steps_per_epoch: int = 1
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule: cosine annealing to 0 per epoch or per step (`PER_STEP_SCHEDULES` are stepped
    after every SGD step), lr/5 at 30/60/80% of the epochs, or lr/10 every 30."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if schedule == "cosine-steps":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    if schedule == "step-30":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=STEP30_EVERY, gamma=STEP30_GAMMA)
    milestones = [max(1, int(f * epochs)) for f in STEP_FRACTIONS]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=STEP_GAMMA)


def _generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from a key such as (seed, epoch, rank) through NumPy's SeedSequence."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The permutation of the n training images that epoch `epoch` of a run seeded `seed` walks through."""
    return torch.randperm(n, generator=_generator(seed, epoch))


_CHECKPOINT_KEYS = ("state_dict", "optimizer", "scheduler", "history", "torch_rng", "masks")


def _check_out_dir(out: Path, config: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """Refuse a folder that holds another run (or this one without `resume`); the checkpoint to resume, if any.

    Writes nothing: config.json is recorded only once the run has started
    (`_record`), so a run that fails to start leaves the folder as it was.
    """
    config_path, ckpt_path = out / "config.json", out / "checkpoint.pt"
    wanted = config.record()

    def normalize(saved: Any) -> dict[str, Any]:
        try:
            saved = TrainConfig.from_dict(saved).record()
        except BlockSwapError:
            return saved if isinstance(saved, dict) else {}  # compared as it is: the changes name what differs
        if saved.get("teacher_sha256") is None:  # recorded by earlier versions without the hash
            saved["teacher_sha256"] = wanted["teacher_sha256"]
        return saved

    if not resume and (config_path.exists() or ckpt_path.exists()):
        raise TrainingError(f"{out} already holds a run: pass --resume to continue it, or use a fresh --out")
    check_recorded(out, "config.json", wanted, normalize, "run", "resume it with its own settings", TrainingError,
                   own=(IMAGES_FILE,))
    if not ckpt_path.exists():
        return None
    checkpoint = read_checkpoint(ckpt_path)
    missing = [k for k in _CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise TrainingError(f"{ckpt_path} is not a training checkpoint (no {', '.join(missing)}); "
                            "resume from the folder the run wrote, or use a fresh --out")
    return checkpoint


def _record(out: Path, config: TrainConfig, dist: Distributed, images: dict[str, str] | None) -> None:
    """Write config.json (rank 0) once the run has everything it needs; record the image folder's manifests in
    images.json, or on a resume check that they are the ones the run started with."""
    dist.barrier()
    if dist.is_main:
        resuming = (out / "config.json").exists() and (out / IMAGES_FILE).exists()
        if images is not None and resuming:
            if read_json(out / IMAGES_FILE, "image manifest") != images:
                raise TrainingError(f"the images in {config.data_dir} changed since {out} started (files added, "
                                    "removed, renamed or resized); resume needs the same images: restore them, or "
                                    "train into a fresh --out")
        elif images is not None:
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / IMAGES_FILE, images)
        record(out, "config.json", config.record())


_UNREADABLE_ADVICE = ("remove or replace it (blockswap stops rather than skipping an image, so every epoch sees the "
                      "same images)")


def _check_headers(train_set: FolderSplit, test_set: FolderSplit, dist: Distributed) -> None:
    """Open every image's header once over all processes (each its shard), and stop every process if any failed:
    the one that found the image names it, the others say where to look."""
    reason = train_set.shard(dist.rank, dist.world).unreadable() or test_set.shard(dist.rank, dist.world).unreadable()
    failed = dist.all_reduce_sum(torch.tensor([float(reason is not None)], device=dist.device))
    if reason is not None:
        raise DataError(f"{reason}; {_UNREADABLE_ADVICE}")
    if failed.item() > 0:
        raise DataError("another process found an image it cannot decode (its message names it); "
                        f"{_UNREADABLE_ADVICE}")


def _load_data(config: TrainConfig, backbone: Backbone, dist: Distributed,
               workers: int) -> tuple[ImageSet | FolderSplit, ImageSet | FolderSplit, dict[str, str] | None]:
    """This process's training set (all of it: batches are sliced per step), its shard of the test set, and for an
    image folder the manifests of both splits (`FolderSplit.manifest_sha256`) that a resume checks.

    CIFAR-10 sits in memory on the device (its files are MD5-checked); an image folder's splits decode
    their batches in `workers` processes at the network's input size.
    """
    size = backbone.input_size
    train_set, test_set = dist.rank0_first(lambda: (load_split(config.data_dir, True, size, workers),
                                                    load_split(config.data_dir, False, size, workers)))
    check_classes(backbone, train_set, config.data_dir)
    train_set = take_subset(train_set, config.train_subset, "--train-subset", config.data_dir)
    test_set = take_subset(test_set, config.test_subset, "--test-subset", config.data_dir)
    if len(train_set) < config.batch_size:
        raise BlockSwapError(f"{len(train_set)} training images cannot fill one batch of {config.batch_size}")
    images = None
    if isinstance(train_set, FolderSplit) and isinstance(test_set, FolderSplit):
        _check_headers(train_set, test_set, dist)  # before the folder is claimed, not at the epoch that reads it
        if dist.is_main:
            images = {"train_sha256": train_set.manifest_sha256(), "val_sha256": test_set.manifest_sha256()}
    return train_set.to(dist.device), test_set.shard(dist.rank, dist.world).to(dist.device), images


def _load_teacher(config: TrainConfig, student: Genotype, device: torch.device) -> tuple[BlockNetwork, Genotype] | None:
    """The frozen eval-mode teacher and its genotype, checked to offer the student's attention points."""
    if config.teacher is None:
        return None
    teacher, genotype, _ = load_network(config.teacher, config.teacher_genotype)
    s, t = student.backbone, genotype.backbone
    if len(s.stage_widths) != len(t.stage_widths) or s.input_size != t.input_size or s.num_classes != t.num_classes:
        raise BlockSwapError(
            f"teacher {t.name} ({len(t.stage_widths)} stages, {t.num_classes} classes) cannot teach student "
            f"{s.name} ({len(s.stage_widths)} stages, {s.num_classes} classes): attention transfer pairs stage outputs"
        )
    if s.in_channels != t.in_channels:
        raise BlockSwapError(f"teacher {config.teacher} takes {t.in_channels}-channel images, student {s.name} "
                             f"{s.in_channels}-channel ones: both see the same images")
    teacher = teacher.to(device, memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    return teacher.eval().requires_grad_(False), genotype


def _fresh_network(config: TrainConfig, genotype: Genotype) -> BlockNetwork:
    """The network with its seeded initial weights; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return genotype.build()


def _prune(
    config: TrainConfig,
    net: BlockNetwork,
    genotype: Genotype,
    teacher: tuple[BlockNetwork, Genotype] | None,
    train_set: ImageSet | FolderSplit,
) -> Pruner:
    """Prune `net` to the budget with the importance `config.prune` names: magnitude of the teacher's weights (L1),
    or SNIP on one seeded batch."""
    importance = PRUNE_IMPORTANCE[config.prune]()  # type: ignore[index]  # validate() requires a known method
    if importance.trained:
        if teacher is None or teacher[1] != genotype:
            raise BlockSwapError(f"{str(config.prune).upper()} pruning starts from the teacher's weights: the "
                                 "network must be the teacher's")
        net.load_state_dict(teacher[0].state_dict())
    batch = train_set.probe_batch(config.batch_size, config.seed) if importance.needs_data else None
    budget: int = config.prune_budget  # type: ignore[assignment]  # validate() requires it
    return Pruner.to_budget(net, importance, budget, batch)


@dataclass
class _Run:
    """Everything one training run carries from epoch to epoch."""

    config: TrainConfig
    out: Path
    dist: Distributed
    genotype: Genotype
    net: BlockNetwork
    model: nn.Module  # what the optimiser steps through: the taps wrapper, under DDP when there are several ranks
    teacher: BlockNetwork | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    pruner: Pruner | None
    train_set: ImageSet | FolderSplit
    test_shard: ImageSet | FolderSplit
    precision: str
    memory_format: torch.memory_format
    progress: bool
    history: list[dict[str, Any]] = field(default_factory=list)

    def write_metrics(self) -> None:
        """metrics.jsonl as the history holds it: one line per finished epoch."""
        write_text_atomic(self.out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in self.history))

    def weights(self, row: dict[str, Any]) -> dict[str, Any]:
        """What best.pt and last.pt hold: the genotype, the weights, and the epoch's error."""
        return {"genotype": self.genotype.to_dict(), "state_dict": self.net.state_dict(), "epoch": row["epoch"],
                "test_error_pct": row["test_error_pct"], "pruning": self.config.pruning()}


def _start(config: TrainConfig, out: Path, resume: bool, dist: Distributed, progress: bool, workers: int) -> _Run:
    """Set up the run: a fresh network (pruned if asked), or the state of the folder's checkpoint."""
    device = dist.device
    if config.batch_size % dist.world:
        raise BlockSwapError(f"batch size {config.batch_size} does not split evenly over {dist.world} processes")
    genotype = config.genotype
    precision = resolve_precision(config.precision, device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    checkpoint = _check_out_dir(out, config, resume)
    train_set, test_shard, images = _load_data(config, genotype.backbone, dist, workers)
    teacher = _load_teacher(config, genotype, device)
    net = _fresh_network(config, genotype).to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config.schedule, config.epochs, len(train_set) // config.batch_size)
    history: list[dict[str, Any]] = []
    pruner = None
    if checkpoint is None:
        if config.prune is not None:
            pruner = _prune(config, net, genotype, teacher, train_set)
    else:
        net.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        history = list(checkpoint["history"])
        torch.set_rng_state(checkpoint["torch_rng"])
        if checkpoint["masks"] is not None:
            pruner = Pruner({name: mask.to(device) for name, mask in checkpoint["masks"].items()})
    _record(out, config, dist, images)
    model: nn.Module = TapsModule(net)
    if dist.world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        process_group=dist.group)
    return _Run(config, out, dist, genotype, net, model, None if teacher is None else teacher[0], optimizer,
                scheduler, pruner, train_set, test_shard, precision, memory_format, progress, history)


def train(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    device: torch.device | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any], BlockNetwork], None] | None = None,
    group: torch_dist.ProcessGroup | str | None = None,
    loader_workers: int | None = None,
) -> dict[str, Any]:
    """Train `config.genotype` into `out_dir` and return what final.json holds.

    The data is CIFAR-10 or an image folder (`blockswap.data.imagefolder`), whichever
    `config.data_dir` holds; an image folder's images are decoded by
    `loader_workers` processes (default `default_loader_workers()`), which
    changes the speed, never the batches.

    With `resume`, an output folder holding this run continues from its last
    checkpoint. `on_epoch(row, network)` is called after each epoch's files are
    written. With a `torch.distributed` `group` (as `setup_distributed` joins
    under torchrun), the run is data-parallel over its processes on `device`;
    `group=ONE_PROCESS` trains in this process alone even under torchrun (each
    rank its own run, as the ranking study does).
    """
    config.validate()
    if isinstance(group, str):
        if group != ONE_PROCESS:
            raise BlockSwapError(f"group must be a process group, None or ONE_PROCESS, got {group!r}")
        group = None
    elif group is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BlockSwapError("WORLD_SIZE > 1 but no process group was given: under torchrun, pass "
                             "group=setup_distributed().group, or each process trains its own copy into one folder")
    if config.teacher is not None:
        if not Path(config.teacher).is_file():
            raise BlockSwapError(f"teacher file not found: {config.teacher}")
        actual = file_digest(config.teacher, "sha256")
        if config.teacher_sha256 not in (None, actual):
            raise BlockSwapError(f"{config.teacher} has SHA-256 {actual}, not the {config.teacher_sha256} asked for")
        config = replace(config, teacher_sha256=actual)
    dist = Distributed.of(group, device)
    workers = default_loader_workers() if loader_workers is None else loader_workers
    run = _start(config, Path(out_dir), resume, dist, progress, workers)
    if dist.is_main:  # exactly the checkpoint's epochs: drops a row written after the last checkpoint
        run.write_metrics()
    for epoch in range(len(run.history), config.epochs):
        row = _epoch(run, epoch)
        if on_epoch is not None:
            on_epoch(row, run.net)
    return _finish(run)


def _epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """Train and test one epoch, then write its files (rank 0); returns its metrics row."""
    config, dist = run.config, run.dist
    start = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    run.model.train()
    sums = _train_epoch(run, epoch)
    train_seconds = time.perf_counter() - start
    dist.broadcast_buffers(run.net)
    test = dist.all_reduce_sum(error_sums(run.net, run.test_shard, EVAL_BATCH, run.precision, config.channels_last))
    if config.schedule not in PER_STEP_SCHEDULES:
        run.scheduler.step()
    n = float(sums[-1])
    row = {"epoch": epoch + 1, "lr": lr, "train_loss": float(sums[0]) / n,
           "train_ce": float(sums[1]) / n, "train_at": float(sums[2]) / n, "train_kd": float(sums[3]) / n,
           "train_error_pct": 100.0 * float(sums[4]) / n, "test_loss": float(test[0] / test[2]),
           "test_error_pct": 100.0 * float(test[1] / test[2]), "seconds": time.perf_counter() - start,
           "train_images_per_s": n / train_seconds}
    best = min(run.history, key=lambda r: r["test_error_pct"], default=None)
    run.history.append(row)
    if dist.is_main:
        # best.pt before checkpoint.pt: a kill between them redoes this epoch exactly on resume and rewrites
        # best.pt the same, so best.pt, final.json and metrics.jsonl always agree.
        weights = run.weights(row)
        if best is None or row["test_error_pct"] < best["test_error_pct"]:
            save_atomic(weights, run.out / "best.pt")
        save_atomic({**weights, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                     "history": run.history, "torch_rng": torch.get_rng_state(),
                     "masks": None if run.pruner is None else run.pruner.state_dict()}, run.out / "checkpoint.pt")
        run.write_metrics()
        if run.progress:
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}  lr {lr:.4g}  train loss {row['train_loss']:.4f}  "
                       f"train err {row['train_error_pct']:.2f}%  test err {row['test_error_pct']:.2f}%  "
                       f"{row['train_images_per_s']:.0f} img/s")
    return row


def _finish(run: _Run) -> dict[str, Any]:
    """Write last.pt and final.json (rank 0) and return final.json's content."""
    history, config = run.history, run.config
    last = history[-1]
    best = min(history, key=lambda r: r["test_error_pct"])
    final = {"test_error_pct": last["test_error_pct"], "test_loss": last["test_loss"],
             "best_test_error_pct": best["test_error_pct"], "best_epoch": best["epoch"],
             "params": nonzero_params(run.net), "macs": run.genotype.macs(), "epochs": config.epochs,
             "seconds": sum(r["seconds"] for r in history), "model": run.genotype.backbone.name,
             "blocks": list(run.genotype.blocks), "teacher": config.teacher,
             "pruning": config.pruning(),
             "processes": run.dist.world, "threads": torch.get_num_threads(), "device": run.dist.device.type,
             "precision": run.precision}
    if run.dist.is_main:
        save_atomic(run.weights(last), run.out / "last.pt")
        write_json_atomic(run.out / "final.json", final)
    run.dist.barrier()
    return final


def _train_epoch(run: _Run, epoch: int) -> Tensor:
    """One pass over the training set; returns [loss, ce, at, kd, errors, images] summed over processes."""
    config, dist = run.config, run.dist
    device = dist.device
    global_batch, local_batch = config.batch_size, config.batch_size // dist.world
    steps = len(run.train_set) // global_batch  # the last partial batch is dropped (a new one each epoch)
    order = epoch_order(len(run.train_set), config.seed, epoch)
    aug = _generator(config.seed, epoch, dist.rank)
    firsts = [step * global_batch + dist.rank * local_batch for step in range(steps)]
    batches = run.train_set.train_batches([order[f : f + local_batch] for f in firsts], aug, config.cutout,
                                          (config.seed, epoch))
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    bar = tqdm(total=steps * global_batch, desc=f"epoch {epoch + 1}/{config.epochs}", unit="img", unit_scale=True,
               disable=not (run.progress and dist.is_main), dynamic_ncols=True, leave=False)
    with bar:
        for step, (images, y) in enumerate(batches):
            x = images.contiguous(memory_format=run.memory_format)
            parts, logits = train_step(run.model, run.teacher, run.optimizer, x, y, config.distill, run.precision)
            if config.schedule in PER_STEP_SCHEDULES:
                run.scheduler.step()
            if run.pruner is not None:
                run.pruner.apply(run.net)
            with torch.no_grad():
                errors = (logits.argmax(1) != y).sum()
                sums += torch.stack([parts.total.detach() * len(y), parts.ce * len(y), parts.attention * len(y),
                                     parts.kd * len(y), errors, torch.tensor(len(y), device=device)]).double()
            bar.update(global_batch)
            if (step + 1) % LOG_EVERY == 0 or step + 1 == steps:
                seen = dist.all_reduce_sum(sums.clone())
                loss = float(seen[0] / seen[-1])
                if not math.isfinite(loss):
                    kept = (f"{run.out / 'checkpoint.pt'} keeps epoch {len(run.history)}" if run.history
                            else "no checkpoint was written")
                    hint = "a lower --lr or --precision fp32" if run.precision == "bf16" else "a lower --lr"
                    raise DivergedError(f"training loss became {loss} in epoch {epoch + 1} (by step {step + 1}); "
                                        f"stopped, {kept}; try {hint}")
                bar.set_postfix(loss=f"{loss:.3f}", err=f"{100 * float(seen[4] / seen[-1]):.1f}%")
    return seen  # the last step always reduces, so this covers the whole epoch


@torch.no_grad()
def error_sums(
    model: nn.Module,
    data: ImageSet | FolderSplit,
    batch_size: int = 500,
    precision: str = "fp32",
    channels_last: bool = False,
) -> Tensor:
    """[summed cross-entropy, misclassified images, images] over `data` in eval mode, on data's device.

    Sums rather than means, so processes holding shards can all-reduce them.
    """
    was_training = model.training
    model.eval()
    device = data.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    try:
        for x, y in data.eval_batches(batch_size):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                logits = model(x)
            logits = logits.float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum")
            sums[1] += (logits.argmax(1) != y).sum()
            sums[2] += len(y)
    finally:
        model.train(was_training)
    return sums
