"""Image-folder datasets: `root/train/<class>/*` and `root/val/<class>/*`, ImageNet's layout and most users'.

Classes are the sorted folder names of `train/` (labels 0..K-1, as torchvision's
ImageFolder numbers them); `val/` must hold the same class folders. Images are
decoded with Pillow in DataLoader worker processes. A JPEG is decoded at a
reduced scale when the crop it feeds is small enough (libjpeg's DCT scaling
through `Image.draft`), which `benchmarks/decode.py` measures. The
transforms are the standard ones, written here so the core needs no
torchvision: training takes a random resized crop (scale 0.08-1, aspect 3/4-4/3)
to the network's input size and a horizontal flip; evaluation resizes the
shorter side to input * 256/224 and takes the centre crop, in one resampling
step. Batches are normalised with ImageNet's mean and std on the device.

Each training image's crop and flip come from a generator seeded by
(seed, epoch, image index), so a batch is the same whichever worker decodes
it, and a resumed run replays an uninterrupted one. An image that cannot be
decoded stops the run with its path: skipping it would change what every later
epoch sees; so does a dangling link with an image suffix. Images in subfolders
of a class folder belong to that class, as torchvision's ImageFolder reads them;
files with other suffixes, and hidden names (starting with '.'), are not read.

Every Pillow mode becomes 8-bit RGB as it looks: 16-bit images are scaled by
1/257 (65535 -> 255), 32-bit integer images are read as 16-bit values, float
images as values in [0, 1] (others are refused by path), palette images through
their palette, transparency composited over black, and the EXIF orientation is
applied before cropping. A folder of fewer than two classes is refused: a
classifier of one class has nothing to learn and every Fisher score is 0.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..space.backbones import Backbone
from ..util.system import usable_cores
from .cifar import DataError, ImageSet, cutout_holes, probe_indices

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "FolderSplit",
    "is_image_folder",
    "open_image_folder",
    "random_resized_box",
    "decode_train",
    "decode_eval",
    "default_loader_workers",
    "check_classes",
    "ClassCountError",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"})
SPLITS = ("train", "val")
RESIZE_RATIO = 256 / 224  # evaluation: the shorter side resized to input * 256/224, then the centre crop
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
_ATTEMPTS = 10


def default_loader_workers() -> int:
    """Decoding processes when none are asked for: one per usable core, at most 8."""
    return min(8, usable_cores())


class ClassCountError(DataError):
    """A network's head does not fit the data's classes; the command that met it says what fixes it there."""

    def __init__(self, message: str, have: int, need: int) -> None:
        super().__init__(message)
        self.have, self.need = have, need


def check_classes(backbone: Backbone, data: ImageSet | FolderSplit, where: str | Path) -> None:
    """Refuse a network whose stem does not take the data's channels, or whose head cannot hold its classes (for an
    image folder: exactly its classes)."""
    channels = 3 if isinstance(data, FolderSplit) else int(data.images.shape[1])  # folders decode to RGB
    if backbone.in_channels != channels:
        raise DataError(f"{backbone.name} takes {backbone.in_channels}-channel images but {where} holds "
                        f"{channels}-channel ones; use a network whose stem takes {channels} channels")
    have, need = backbone.num_classes, data.num_classes
    folder = isinstance(data, FolderSplit)
    if have < need or (folder and have != need):
        what = f"{need} class folders" if folder else f"{need} classes"
        raise ClassCountError(f"{backbone.name} has {have} outputs but {where} holds {what}", have, need)


def is_image_folder(root: str | Path) -> bool:
    """Whether `root` is laid out as image folders (it has a `train/` folder) rather than CIFAR-10."""
    return (Path(root) / "train").is_dir()


def _image_entries(folder: Path) -> list[os.DirEntry[str]]:
    """Entries with an image suffix in a class folder and its subfolders, as torchvision's ImageFolder reads them
    (a linked folder is read once, so a link loop ends); hidden names (starting with '.') are not read."""
    entries: list[os.DirEntry[str]] = []
    pending, seen = [folder], set()
    while pending:
        current = pending.pop()
        real = os.path.realpath(current)
        if real in seen:
            continue
        seen.add(real)
        for e in os.scandir(current):
            if e.name.startswith("."):
                continue
            if e.is_dir():
                pending.append(Path(e.path))
            elif Path(e.name).suffix.lower() in IMAGE_SUFFIXES:
                entries.append(e)
    return entries


def _scan(root: Path, split: str) -> tuple[list[str], list[str], list[int]]:
    """Class names, image paths and labels of one split; DataError for a missing split or an empty class."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{root} has {SPLITS[0]}/ but no {split}/ folder; an image folder holds "
                        f"{'/ and '.join(SPLITS)}/, each with one folder of images per class")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} holds no class folders; put each class's images in {folder}/<class>/")
    if len(classes) < 2:
        raise DataError(f"{folder} holds one class folder ({classes[0]}); a classifier needs two or more classes")
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        entries = _image_entries(folder / name)
        dangling = sorted(e.path for e in entries if e.is_symlink() and not e.is_file() and not e.is_dir())
        if dangling:
            raise DataError(f"{dangling[0]} is a link to nothing ({len(dangling)} such in {folder / name}); fix or "
                            "remove it (blockswap stops rather than skipping an image)")
        files = sorted(e.path for e in entries if e.is_file())
        if not files:
            raise DataError(f"class folder {folder / name} holds no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}); remove it or add its images")
        paths += files
        labels += [label] * len(files)
    return classes, paths, labels


def open_image_folder(root: str | Path, size: int) -> tuple[FolderSplit, FolderSplit]:
    """The train and val splits of an image folder, decoded to `size` x `size`; DataError naming what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    train_classes, train_paths, train_labels = _scan(root, "train")
    val_classes, val_paths, val_labels = _scan(root, "val")
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise DataError(f"{root}: train/ and val/ hold different classes (only in train: "
                        f"{', '.join(only_train) or '-'}; only in val: {', '.join(only_val) or '-'}); "
                        "both need the same class folders")
    classes = tuple(train_classes)
    return (FolderSplit(classes, tuple(train_paths), torch.tensor(train_labels), size),
            FolderSplit(classes, tuple(val_paths), torch.tensor(val_labels), size))


def random_resized_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random crop box (left, top, right, bottom): area fraction in CROP_SCALE, aspect in CROP_RATIO.

    Ten draws, as the standard RandomResizedCrop makes; when none fits, the
    largest centred box with the aspect ratio clamped into range.
    """
    area = width * height
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(_ATTEMPTS):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif aspect > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


Box = tuple[float, float, float, float]


_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _rgb(img: Image.Image, path: str) -> Image.Image:
    """`img` as 8-bit RGB as it looks: high bit depths and floats scaled, palettes and transparency resolved."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(img)
        if mode == "F":
            if not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
                raise DataError(f"{path} is a float image with values outside [0, 1] ({values.min():.4g} to "
                                f"{values.max():.4g}); convert it to 8-bit first")
            eight = np.rint(values * 255)
        else:
            if values.min() < 0 or values.max() > 65535:
                raise DataError(f"{path} is a {mode} image with values outside 0-65535; convert it to 8-bit first")
            eight = np.rint(values.astype(np.float64) / 257)
        return Image.fromarray(eight.astype(np.uint8), "L").convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _open(path: str, box_of: Callable[[int, int], Box], size: int) -> Image.Image:
    """The region `box_of(width, height)` of the image at `path` (upright by its EXIF orientation) resized to
    `size` x `size` RGB, read with one open (the header gives the size the box needs) and decoded no larger than
    the box needs."""
    try:
        with Image.open(path) as img:
            if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
                img = ImageOps.exif_transpose(img)  # decodes in full: the draft below applies to upright files only
            width, height = img.size
            box = box_of(width, height)
            crop_w, crop_h = box[2] - box[0], box[3] - box[1]
            scale = size / min(crop_w, crop_h)  # the crop must keep at least `size` pixels each way after DCT scaling
            if scale < 1 and img.format == "JPEG":
                img.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
            fx, fy = img.size[0] / width, img.size[1] / height
            scaled = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
            return _rgb(img, path).resize((size, size), Image.Resampling.BILINEAR, box=scaled)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode image {path} ({type(e).__name__}: {e}); remove or replace it (blockswap "
                        "stops rather than skipping an image, so every epoch sees the same images)") from None


def _as_tensor(img: Image.Image) -> Tensor:
    """RGB PIL image -> uint8 3 x H x W tensor."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def decode_train(path: str, size: int, rng: np.random.Generator) -> Tensor:
    """The training view of one image: a random resized crop to `size`, flipped with probability 1/2 (uint8 CHW)."""
    img = _open(path, lambda width, height: random_resized_box(width, height, rng), size)
    if rng.uniform() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _as_tensor(img)


def _centre_box(width: int, height: int, size: int) -> Box:
    """The box of the original image that becomes the centre size x size after resizing the shorter side."""
    short = round(size * RESIZE_RATIO)
    rw, rh = (short, round(short * height / width)) if width <= height else (round(short * width / height), short)
    left, top = (rw - size) / 2, (rh - size) / 2
    sx, sy = width / rw, height / rh
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def decode_eval(path: str, size: int) -> Tensor:
    """The evaluation view: the shorter side resized to size * 256/224, then the centre size x size (uint8 CHW)."""
    return _as_tensor(_open(path, lambda width, height: _centre_box(width, height, size), size))


class _Decoded(Dataset):
    """Items for a DataLoader: (uint8 image, label) by index, training views keyed by (seed, epoch, index)."""

    def __init__(self, split: FolderSplit, key: tuple[int, ...] | None) -> None:
        self.split, self.key = split, key

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.split.paths[index], int(self.split.labels[index])
        if self.key is None:
            return decode_eval(path, self.split.size), label
        return decode_train(path, self.split.size, np.random.default_rng([*self.key, index])), label


def _one_thread(_: int) -> None:
    """DataLoader workers decode with Pillow; torch's own threads would only compete with the other workers."""
    torch.set_num_threads(1)


@dataclass(frozen=True)
class FolderSplit:
    """One split of an image folder: paths and labels, decoded to `size` on demand by `workers` processes.

    It offers what the training, search and evaluation code asks of
    `blockswap.data.cifar.ImageSet`: its length, subsets and shards, a seeded probe
    batch, augmented training batches and evaluation batches, on `device`.
    """

    classes: tuple[str, ...]
    paths: tuple[str, ...]
    labels: Tensor
    size: int
    workers: int = 0
    device: torch.device = torch.device("cpu")

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> FolderSplit:
        """The same split, with batches delivered on `device`."""
        return replace(self, device=torch.device(device))

    def with_workers(self, workers: int) -> FolderSplit:
        """The same split decoded by `workers` DataLoader processes (0: in this process)."""
        return replace(self, workers=workers)

    def subset(self, n: int) -> FolderSplit:
        """n images evenly spaced through the folder order (all of them if there are fewer), so every class
        keeps its share: the first n would be the first classes only."""
        if n >= len(self):
            return self
        idx = torch.linspace(0, len(self) - 1, n).round().long().tolist()
        return replace(self, paths=tuple(self.paths[i] for i in idx), labels=self.labels[idx])

    def shard(self, rank: int, world: int) -> FolderSplit:
        """Every world-th image from `rank` on (a process's share of the evaluation)."""
        return replace(self, paths=self.paths[rank::world], labels=self.labels[rank::world])

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 images -> float32 normalised with ImageNet's mean and std."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std

    def probe_batch(self, batch_size: int, seed: int, augmented: bool = True) -> tuple[Tensor, Tensor]:
        """A seeded random minibatch with the training views (or the evaluation views), the same for every call."""
        idx = probe_indices(len(self), batch_size, torch.Generator().manual_seed(seed))
        dataset = _Decoded(self, (seed,) if augmented else None)
        images, labels = next(iter(self._loader(dataset, [idx.tolist()])))
        return self.normalize(images.to(self.device)), labels.to(self.device)

    def unreadable(self) -> str | None:
        """What is wrong with the first image whose header cannot be opened (no pixels decoded; in threads), or
        None when every one opens."""
        def fails(path: str) -> str | None:
            try:
                with Image.open(path):
                    return None
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                return f"cannot decode image {path} ({type(e).__name__}: {e})"

        with ThreadPoolExecutor(max_workers=min(16, 4 * usable_cores())) as pool:
            return next((reason for reason in pool.map(fails, self.paths, chunksize=256) if reason is not None),
                        None)

    def manifest_sha256(self) -> str:
        """SHA-256 of every image's class, name, label and size: what a run trained on, cheap enough to check on
        every resume (no image is read), and unchanged by where the folder lies."""
        digest = hashlib.sha256()
        for path, label in zip(self.paths, self.labels.tolist()):
            p = Path(path)
            try:
                size = p.stat().st_size
            except OSError as e:
                raise DataError(f"cannot read image {p} ({e.strerror})") from None
            digest.update(f"{p.parent.name}/{p.name}:{label}:{size}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()

    def probe_fingerprint(self, batch_size: int, seed: int) -> str:
        """SHA-256 of the files `probe_batch` draws (class, name, label and bytes of each, and the image count):
        what a search scored on, unchanged by where the folder lies or which decoder reads it."""
        idx = probe_indices(len(self), batch_size, torch.Generator().manual_seed(seed))
        digest = hashlib.sha256(str(len(self)).encode())
        for i in idx.tolist():
            path = Path(self.paths[i])
            digest.update(f"{path.parent.name}/{path.name}:{int(self.labels[i])}:".encode("utf-8", "surrogateescape"))
            try:
                digest.update(path.read_bytes())
            except OSError as e:
                raise DataError(f"cannot read image {path} ({e})") from None
        return digest.hexdigest()

    def train_batches(self, batches: Sequence[Tensor], generator: torch.Generator, cutout: int,
                      key: tuple[int, ...]) -> Iterator[tuple[Tensor, Tensor]]:
        """Training batches of the given image indices: views seeded by (*key, index), then Cutout from `generator`."""
        dataset = _Decoded(self, key)
        for images, labels in self._loader(dataset, [b.tolist() for b in batches]):
            x = self.normalize(images.to(self.device, non_blocking=True))
            yield (cutout_holes(x, generator, cutout) if cutout else x), labels.to(self.device, non_blocking=True)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The whole split in order, in evaluation views, normalised on the device."""
        order = list(range(len(self)))
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for images, labels in self._loader(_Decoded(self, None), chunks):
            yield self.normalize(images.to(self.device, non_blocking=True)), labels.to(self.device, non_blocking=True)

    def _loader(self, dataset: _Decoded, batches: Iterable[list[int]]) -> Iterator[tuple[Tensor, Tensor]]:
        """Decode `batches` of indices with the split's workers; a worker's DataError comes back as one line."""
        loader = DataLoader(dataset, batch_sampler=list(batches), num_workers=self.workers,
                            pin_memory=self.device.type == "cuda", worker_init_fn=_one_thread if self.workers else None)
        try:
            yield from loader
        except DataError as e:
            if "\n" not in str(e):
                raise
            last = str(e).strip().splitlines()[-1]
            raise DataError(last.split("DataError: ", 1)[-1]) from None
