"""Training and test images: CIFAR-10 (`cifar`) or an image folder (`imagefolder`), and the dispatch
between them (`load_split`, `probe_images`) that the search, training and evaluation call."""

from __future__ import annotations

from pathlib import Path

from .cifar import ImageSet, load_cifar10, load_embedded_sample
from .imagefolder import FolderSplit, is_image_folder, open_image_folder

__all__ = ["probe_images", "load_split"]


def load_split(data_dir: str | Path, train: bool, size: int, workers: int = 0) -> ImageSet | FolderSplit:
    """The training or test images in `data_dir`: an image folder (`train/`, `val/`) decoded to `size` by
    `workers` processes, else CIFAR-10 (downloaded there if missing) held in memory."""
    if is_image_folder(data_dir):
        return open_image_folder(data_dir, size)[0 if train else 1].with_workers(workers)
    return load_cifar10(data_dir, train=train)


def probe_images(data_dir: str | Path | None, size: int = 32) -> ImageSet | FolderSplit:
    """The images a search draws its minibatch from: the training images in `data_dir` (CIFAR-10 or an image
    folder, decoded at the network's input `size`), or the embedded CIFAR-10 sample."""
    return load_embedded_sample() if data_dir is None else load_split(data_dir, True, size)
