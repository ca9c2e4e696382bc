"""Shared fixtures: real CIFAR-10 built once from ../shared into a cache folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO.parent / "shared" / "data" / "cifar10" / "build.py"
REQUIRE_VISION = "BLOCKSWAP_REQUIRE_VISION"  # set by .ci/vision: a `vision` test that skips there has failed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under .ci/vision, a skipped `vision` test is a failure: the environment was built to run it."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(REQUIRE_VISION) and item.get_closest_marker("vision") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped where ${REQUIRE_VISION} is set (the vision environment): {reason}"


@pytest.fixture(autouse=True)
def no_network_download(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never reach the internet: a missing data set 'downloads' from a file that does not exist."""
    missing = tmp_path_factory.getbasetemp() / "no-such-mirror" / "cifar-10-python.tar.gz"
    monkeypatch.setenv("BLOCKSWAP_CIFAR10_URL", missing.as_uri())


@pytest.fixture(autouse=True)
def private_latency_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Latency tables measured by tests go to a folder of this test run, never the user's cache."""
    monkeypatch.setenv("BLOCKSWAP_CACHE", str(tmp_path_factory.getbasetemp() / "blockswap-cache"))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread, as each search worker and torchrun rank has: rows are then bit-identical,
    and a loaded 2-core machine punishes two threads."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CIFAR_ENV = "BLOCKSWAP_TEST_CIFAR10"  # a folder holding cifar-10-batches-py (or the batches folder itself)


def _complete(folder: Path) -> Path | None:
    """The folder above cifar-10-batches-py when `folder` is either of the two and holds every batch."""
    for root in (folder, folder.parent):
        batches = root / "cifar-10-batches-py"
        if all((batches / f).is_file() for f in ("test_batch", *(f"data_batch_{i}" for i in range(1, 6)))):
            return root
    return None


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """A folder holding cifar-10-batches-py (full CIFAR-10): $BLOCKSWAP_TEST_CIFAR10, else the tests' cache, filled
    from an official archive put there or built once from ../shared."""
    from blockswap.data.cifar import download_cifar10

    given = os.environ.get(CIFAR_ENV)
    if given:
        found = _complete(Path(given).expanduser())
        if found is None:
            pytest.fail(f"${CIFAR_ENV}={given} holds no complete cifar-10-batches-py")
        return found
    cache = Path(os.environ.get("BLOCKSWAP_CIFAR_CACHE", Path.home() / ".cache" / "blockswap-tests" / "cifar10"))
    archive = cache / "cifar-10-python.tar.gz"
    if _complete(cache) is None:
        if archive.is_file():  # the official download, checked against its MD5 as a real download is
            download_cifar10(cache, url=archive.resolve().as_uri())
        elif BUILD_SCRIPT.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, str(BUILD_SCRIPT), str(cache)], check=True, capture_output=True)
        else:
            pytest.skip(f"real CIFAR-10 not found: set ${CIFAR_ENV} to a folder holding cifar-10-batches-py, put "
                        f"the official cifar-10-python.tar.gz in {cache}, or check out ../shared beside the repository")
    return cache


@pytest.fixture(scope="session")
def tiny_teacher(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a WRN-10-1 teacher trained for one epoch on 256 real CIFAR-10 images."""
    from blockswap import Backbone, Genotype
    from blockswap.train.training import TrainConfig, train

    out = tmp_path_factory.mktemp("teacher")
    config = TrainConfig(genotype=Genotype.uniform(Backbone.from_name("wrn-10-1")).to_dict(), data_dir=str(cifar_root),
                         epochs=1, batch_size=32, train_subset=256, test_subset=200, precision="fp32")
    train(config, out, progress=False)
    return out


FOLDER_CLASSES = ("airplane", "cat", "ship")  # CIFAR-10 labels 0, 3 and 8
FOLDER_IMAGES = {"train": 48, "val": 16}  # per class


@pytest.fixture(scope="session")
def image_folder(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small image folder (train/<class>/*.jpg, val/<class>/*.jpg): 3 CIFAR-10 classes resized to 64x64 JPEGs."""
    from PIL import Image

    from blockswap.data.cifar import load_cifar10

    root = tmp_path_factory.mktemp("folder")
    for split, per_class in FOLDER_IMAGES.items():
        images = load_cifar10(cifar_root, train=split == "train", download=False)
        for label, name in zip((0, 3, 8), FOLDER_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            picked = (images.labels == label).nonzero().flatten()[:per_class]
            for i, index in enumerate(picked.tolist()):
                pixels = images.images[index].permute(1, 2, 0).numpy()
                Image.fromarray(pixels).resize((64, 64), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.jpg",
                                                                                         quality=90)
    return root
