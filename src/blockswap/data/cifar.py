"""CIFAR-10: reading the standard python layout, downloading it, and batch augmentation (crop, flip, Cutout).

Layout and pickles as in SPEC section 7 (`cifar-10-batches-py/`, pickle with
latin1), read by an unpickler that admits only NumPy's array rebuilding, so a
crafted batch file cannot run code. Images stay uint8 tensors (N x 3 x 32 x 32) until a batch is taken;
augmentation (random crop with 4-pixel zero padding, horizontal flip, Cutout
16x16 after normalisation, as in the published training code) is done on whole
batches with tensor ops, following airbench, so it runs on any device.

A sample of 1,000 real CIFAR-10 training images (100 per class) ships inside the
package as the default probe data, so a search needs no download.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..util.errors import BlockSwapError
from ..util.rundir import file_digest

__all__ = ["DataError", "ImageSet", "CIFAR10_URL", "URL_ENV", "CIFAR10_MD5", "CIFAR10_MEAN", "CIFAR10_STD",
           "load_cifar10", "ensure_cifar10", "download_cifar10", "load_embedded_sample", "normalize", "augment",
           "cutout_holes"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
URL_ENV = "BLOCKSWAP_CIFAR10_URL"  # a mirror of the official archive (same MD5), e.g. a file:// URL
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
_FOLDER = "cifar-10-batches-py"
_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
_TEST_FILES = ["test_batch"]


class DataError(BlockSwapError):
    """Data that is missing, corrupt or cannot be fetched."""


@dataclass
class ImageSet:
    """uint8 images (N x 3 x H x W) and int64 labels (N), on one device: CIFAR-10 held in memory."""

    images: Tensor
    labels: Tensor
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be uint8 N x C x H x W, got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device), self.num_classes)

    def subset(self, n: int) -> ImageSet:
        """The first n images (or all of them if there are fewer)."""
        return ImageSet(self.images[:n], self.labels[:n], self.num_classes)

    def shard(self, rank: int, world: int) -> ImageSet:
        """Every world-th image from `rank` on (a process's share of the evaluation)."""
        return ImageSet(self.images[rank::world], self.labels[rank::world], self.num_classes)

    def with_workers(self, workers: int) -> ImageSet:
        """Itself: images in memory need no decoding processes (the image-folder split's counterpart)."""
        return self

    def train_batches(self, batches: Sequence[Tensor], generator: torch.Generator, cutout: int,
                      key: tuple[int, ...]) -> Iterator[tuple[Tensor, Tensor]]:
        """Training batches of the given image indices, augmented on the device with `generator` (`key` unused:
        the generator alone seeds in-memory augmentation)."""
        for idx in batches:
            idx = idx.to(self.device)
            yield augment(self.images[idx], generator, cutout=cutout), self.labels[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The whole set in order, normalised, in batches of `batch_size`."""
        for start in range(0, len(self), batch_size):
            yield normalize(self.images[start : start + batch_size]), self.labels[start : start + batch_size]

    def probe_batch(self, batch_size: int, seed: int, augmented: bool = True) -> tuple[Tensor, Tensor]:
        """A seeded random minibatch (with the training augmentation), the same for every call."""
        g = torch.Generator().manual_seed(seed)
        idx = probe_indices(len(self), batch_size, g).to(self.images.device)
        images, labels = self.images[idx], self.labels[idx]
        return (augment(images, g) if augmented else normalize(images)), labels


    def probe_fingerprint(self, batch_size: int, seed: int) -> str:
        """SHA-256 of the images and labels `probe_batch` draws (before augmentation): what a search scored on."""
        idx = probe_indices(len(self), batch_size, torch.Generator().manual_seed(seed)).to(self.images.device)
        digest = hashlib.sha256(str(len(self)).encode())
        digest.update(self.images[idx].cpu().numpy().tobytes())
        digest.update(self.labels[idx].cpu().numpy().astype("<i8").tobytes())
        return digest.hexdigest()


def probe_indices(size: int, batch_size: int, generator: torch.Generator) -> Tensor:
    """The `batch_size` indices of a probe batch: the first of a seeded permutation of `size` images."""
    if batch_size > size:
        raise DataError(f"batch size {batch_size} exceeds the {size} images available")
    return torch.randperm(size, generator=generator)[:batch_size]


def _folder(root: str | Path) -> Path:
    root = Path(root)
    return root if root.name == _FOLDER else root / _FOLDER


class _BatchUnpickler(pickle.Unpickler):
    """Reads a CIFAR-10 batch pickle and nothing else: only NumPy's array rebuilding may be looked up.

    A plain `pickle.load` would run whatever callable a crafted file names;
    this refuses every global outside what the official and rebuilt files hold.
    """

    _ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                          ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch never holds; "
                                         "not loaded")
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The images (N x 3 x 32 x 32 uint8) and labels of one batch file, read without running code from it."""
    try:
        with path.open("rb") as f:
            d = _BatchUnpickler(f, encoding="latin1").load()
        if not isinstance(d, dict) or not isinstance(d.get("data"), np.ndarray) or "labels" not in d:
            raise ValueError("not a dict with 'data' (an array) and 'labels'")
        raw, labels = d["data"], np.asarray(d["labels"])
        if raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] != 3 * 32 * 32:
            raise ValueError(f"'data' is {raw.dtype} {raw.shape}, expected uint8 N x 3072")
        if labels.shape != (len(raw),) or labels.dtype.kind not in "iu" or not ((labels >= 0) & (labels < 10)).all():
            raise ValueError(f"'labels' must be {len(raw)} class numbers in 0..9")
    except (OSError, pickle.UnpicklingError, ValueError, EOFError, TypeError, AttributeError, IndexError,
            KeyError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {e}") from None
    return raw.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(root: str | Path, train: bool = True, download: bool = True) -> ImageSet:
    """The CIFAR-10 train or test split from `root` (or `root/cifar-10-batches-py`).

    When the folder is missing and `download` is set, fetches the official
    archive (or the mirror named by $BLOCKSWAP_CIFAR10_URL) and checks its MD5 first.
    """
    folder = ensure_cifar10(root, download)
    names = _TRAIN_FILES if train else _TEST_FILES
    parts = [_read_batch(folder / n) for n in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return ImageSet(images, labels)


def ensure_cifar10(root: str | Path, download: bool = True) -> Path:
    """The batches folder under `root`, first fetched (official archive or $BLOCKSWAP_CIFAR10_URL) if incomplete."""
    folder = _folder(root)
    for place in (Path(root), folder):
        if place.exists() and not place.is_dir():
            raise DataError(f"{place} is a file; CIFAR-10's root is a folder holding (or to receive) {_FOLDER}/")
    if not all((folder / n).is_file() for n in _TRAIN_FILES + _TEST_FILES):
        if not download:
            raise DataError(_missing_message(folder))
        download_cifar10(folder.parent, url=os.environ.get(URL_ENV) or CIFAR10_URL, md5=CIFAR10_MD5)
    return folder


def _missing_message(folder: Path) -> str:
    return (
        f"CIFAR-10 not found at {folder}: put the extracted official archive there "
        f"({CIFAR10_URL} holds {_FOLDER}/), or run where that URL (or ${URL_ENV}) can be reached"
    )


def download_cifar10(root: str | Path, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> Path:
    """Fetch the archive, verify its MD5 and extract it into `root`; returns the batches folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as f:
                shutil.copyfileobj(response, f)
        except (urllib.error.URLError, OSError) as e:
            reason = f"could not download CIFAR-10 from {url} ({e})"
            raise DataError(f"{reason}; {_missing_message(_folder(root))}") from None
        actual = file_digest(archive, "md5")
        if actual != md5:
            raise DataError(f"downloaded CIFAR-10 archive has MD5 {actual}, expected {md5}; not extracting it")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        extracted = Path(tmp) / _FOLDER
        if not extracted.is_dir():
            raise DataError(f"archive from {url} does not contain {_FOLDER}/")
        target = _folder(root)
        if target.exists():
            shutil.rmtree(target)
        extracted.rename(target)
    return target


def load_embedded_sample() -> ImageSet:
    """The 1,000 real CIFAR-10 training images (100 per class) shipped with the package."""
    with resources.files("blockswap").joinpath("assets/cifar10_sample.npz").open("rb") as f:
        npz = np.load(f)
        return ImageSet(torch.from_numpy(npz["images"]), torch.from_numpy(npz["labels"].astype(np.int64)))


def normalize(images: Tensor) -> Tensor:
    """uint8 images -> float32 normalised with the CIFAR-10 mean and std."""
    mean = torch.tensor(CIFAR10_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _rand(n: int, high: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.randint(0, high, (n,), generator=generator).to(device)


def augment(images: Tensor, generator: torch.Generator | None = None, pad: int = 4, cutout: int = 16) -> Tensor:
    """Random crop (zero padding), horizontal flip, normalisation, then Cutout, on a uint8 batch.

    Random numbers come from `generator` on the CPU so results do not depend on the device.
    """
    n, _, h, w = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy, dx = _rand(n, 2 * pad + 1, generator, device), _rand(n, 2 * pad + 1, generator, device)
    rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=device)[None, :, None, None]
    cropped = padded[batch, channel, rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(device)
    out = normalize(torch.where(flip[:, None, None, None], cropped.flip(3), cropped))
    return cutout_holes(out, generator, cutout) if cutout else out


def cutout_holes(images: Tensor, generator: torch.Generator | None, size: int) -> Tensor:
    """Cutout: one `size` x `size` hole of zeros per normalised image, centred uniformly (clipped at the edges)."""
    n, _, h, w = images.shape
    device = images.device
    cy, cx = _rand(n, h, generator, device), _rand(n, w, generator, device)
    ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
    hole_y = (ys[None, :] >= (cy[:, None] - size // 2)) & (ys[None, :] < (cy[:, None] + size // 2))
    hole_x = (xs[None, :] >= (cx[:, None] - size // 2)) & (xs[None, :] < (cx[:, None] + size // 2))
    hole = hole_y[:, None, :, None] & hole_x[:, None, None, :]
    return images.masked_fill(hole, 0.0)
