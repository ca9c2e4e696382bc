"""Training throughput of `blockswap train` against a plain fp32 per-image DataLoader reference.

Both sides run the same optimiser step (`blockswap.train.training.train_step`) on the
same networks, so the ratio measures the data pipeline, precision and memory
layout. The fast side is what `blockswap train` does (airbench-style): the images
sit on the device as one uint8 tensor, a batch is a slice of a permutation,
augmentation runs on the whole batch there, bf16 autocast where the device has
native bf16, channels_last. The reference is the usual recipe: a Dataset that
augments one image at a time (crop with padding, flip, normalise, Cutout), a
DataLoader that collates batches, fp32 NCHW tensors.

Timed: data preparation plus the step, after warm-up steps, with the device
synchronised at both ends. Prints one JSON object.

    python benchmarks/train_speed.py [--data-dir DIR] [--teacher-model wrn-16-2] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

import blockswap as bs
from blockswap.data.cifar import CIFAR10_MEAN, CIFAR10_STD, augment
from blockswap.train.training import TapsModule, train_step
from blockswap.util.precision import resolve_precision


class PerImageCifar(Dataset):
    """uint8 CIFAR images augmented one at a time, as a torchvision transform chain would."""

    def __init__(self, data: bs.ImageSet, pad: int = 4, cutout: int = 16) -> None:
        self.images, self.labels = data.images, data.labels
        self.pad, self.cutout = pad, cutout
        self.mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR10_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img = F.pad(self.images[i], (self.pad,) * 4)
        size = self.images.shape[-1]
        top, left = random.randint(0, 2 * self.pad), random.randint(0, 2 * self.pad)
        img = img[:, top : top + size, left : left + size]
        if random.random() < 0.5:
            img = img.flip(2)
        img = (img.float() / 255.0 - self.mean) / self.std
        cy, cx, half = random.randrange(size), random.randrange(size), self.cutout // 2
        img[:, max(0, cy - half) : cy + half, max(0, cx - half) : cx + half] = 0.0
        return img, self.labels[i]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(step: Callable[[], None], batch_size: int, warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def _fast_step(model: torch.nn.Module, teacher: bs.BlockNetwork | None, data: bs.ImageSet, batch_size: int,
               precision: str, distill: bs.DistillConfig) -> Callable[[], None]:
    """`blockswap train`'s step: on-device slice of a permutation, batch augmentation, channels_last."""
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=g).to(data.images.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    position = [0]

    def step() -> None:
        start = position[0] % (len(data) - batch_size + 1)
        idx = order[start : start + batch_size]
        position[0] += batch_size
        x = augment(data.images[idx], g).contiguous(memory_format=torch.channels_last)
        train_step(model, teacher, optimizer, x, data.labels[idx], distill, precision)

    return step


def _reference_step(model: torch.nn.Module, teacher: bs.BlockNetwork | None, data: bs.ImageSet, batch_size: int,
                    device: torch.device, distill: bs.DistillConfig, workers: int) -> Callable[[], None]:
    """The plain recipe: per-image Dataset, DataLoader, fp32 NCHW."""
    loader = DataLoader(PerImageCifar(data), batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, pin_memory=device.type == "cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    batches: list[Iterator] = [iter(loader)]

    def step() -> None:
        try:
            x, y = next(batches[0])
        except StopIteration:
            batches[0] = iter(loader)
            x, y = next(batches[0])
        train_step(model, teacher, optimizer, x.to(device), y.to(device), distill, "fp32")

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: the embedded 1,000-image sample)")
    parser.add_argument("--teacher-model", default="wrn-16-2", help="teacher network (default wrn-16-2)")
    parser.add_argument("--student-budget", default="200k", help="random student of the teacher's backbone")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="reference DataLoader workers (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = resolve_precision("auto", device)
    data = bs.load_embedded_sample() if args.data_dir is None else bs.load_cifar10(args.data_dir, download=False)
    on_device = data.to(device)
    backbone = bs.Backbone.from_name(args.teacher_model)
    teacher_genotype = bs.Genotype.uniform(backbone)
    student_genotype = bs.sample_genotypes(backbone, bs.parse_budget(args.student_budget), 1, seed=0)[0]
    distill = bs.DistillConfig()

    def fresh(genotype: bs.Genotype, channels_last: bool) -> bs.BlockNetwork:
        torch.manual_seed(0)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return genotype.build().to(device, memory_format=memory_format)

    result = {"device": str(device), "threads": torch.get_num_threads(), "precision": precision,
              "batch_size": args.batch_size, "steps": args.steps, "reference_workers": args.workers}
    for role, genotype in (("teacher", teacher_genotype), ("student", student_genotype)):
        rates = {}
        for side, channels_last in (("fast", True), ("reference", False)):
            model = TapsModule(fresh(genotype, channels_last)).train()
            teacher = None if role == "teacher" else fresh(teacher_genotype, channels_last).eval().requires_grad_(False)
            step = (_fast_step(model, teacher, on_device, args.batch_size, precision, distill) if side == "fast"
                    else _reference_step(model, teacher, data, args.batch_size, device, distill, args.workers))
            rates[side] = images_per_s(step, args.batch_size, args.warmup, args.steps, device)
        result[role] = {"model": backbone.name, "blocks": " ".join(genotype.blocks), "params": genotype.params(),
                        "fast_images_per_s": round(rates["fast"], 1),
                        "reference_images_per_s": round(rates["reference"], 1),
                        "speedup": round(rates["fast"] / rates["reference"], 2)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
