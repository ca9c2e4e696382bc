"""Training and test images: CIFAR-10 (`cifar`) or an image folder (`imagefolder`), and the dispatch
between them (`load_split`, `probe_images`, `take_subset`, `check_subsets`) that the search, training and
evaluation call."""

from __future__ import annotations

from pathlib import Path

from .cifar import ImageSet, load_cifar10, load_embedded_sample
from .imagefolder import DataError, FolderSplit, is_image_folder, open_image_folder

__all__ = ["probe_images", "load_split", "take_subset", "check_subsets"]


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


def take_subset(split: ImageSet | FolderSplit, n: int | None, flag: str,
                data_dir: str | Path) -> ImageSet | FolderSplit:
    """The images `flag` (--train-subset, --test-subset) asks for: all for None, else the split's `subset(n)`.
    More than the split holds is refused: the run's record would claim images it never saw."""
    if n is None:
        return split
    if n > len(split):
        raise DataError(f"{flag} {n} asks for more than the {len(split)} images of that split in {data_dir}: give at "
                        f"most {len(split)}, or leave {flag} out to use them all")
    return split.subset(n)


def check_subsets(train_split: ImageSet | FolderSplit, data_dir: str | Path, size: int, train: int | None,
                  test: int | None) -> None:
    """Refuse, before a long job starts, --train-subset or --test-subset larger than the data (see `take_subset`);
    `train_split` is the training images the caller has already read (its probe images)."""
    take_subset(train_split, train, "--train-subset", data_dir)
    if test is not None:
        take_subset(load_split(data_dir, False, size), test, "--test-subset", data_dir)
