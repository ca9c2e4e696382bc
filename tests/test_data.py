"""CIFAR-10: the standard layout, the embedded sample, batch augmentation, checked download."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from blockswap.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DataError,
    augment,
    download_cifar10,
    load_cifar10,
    load_embedded_sample,
    normalize,
)


def test_full_cifar10_layout(cifar_root: Path) -> None:
    train = load_cifar10(cifar_root, train=True)
    test = load_cifar10(cifar_root / "cifar-10-batches-py", train=False)
    assert train.images.shape == (50_000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (10_000, 3, 32, 32)
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 5000))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))


def test_embedded_sample_is_real_cifar10_training_images(cifar_root: Path) -> None:
    sample = load_embedded_sample()
    assert len(sample) >= 512
    assert torch.equal(torch.bincount(sample.labels), torch.full((10,), 100))
    train = load_cifar10(cifar_root, train=True)
    from importlib import resources

    with resources.files("blockswap").joinpath("assets/cifar10_sample.npz").open("rb") as f:
        index = torch.from_numpy(np.load(f)["index"])
    assert torch.equal(train.images[index], sample.images)
    assert torch.equal(train.labels[index], sample.labels)


def _batch(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def test_normalize_uses_cifar_statistics() -> None:
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(x)
    expected = (1 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)
    torch.testing.assert_close(out[0, :, 0, 0], expected)


def test_augment_is_crop_flip_cutout() -> None:
    images = _batch()
    out = augment(images, torch.Generator().manual_seed(1), cutout=0)
    base = normalize(images)
    zero = normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8)).view(3)
    padded = torch.nn.functional.pad(base, (4, 4, 4, 4))
    padded = torch.where(padded == 0, zero.view(1, 3, 1, 1), padded)  # zero pixels before normalisation
    for i in range(len(images)):
        # Each output is some 32x32 window of the padded image, possibly mirrored.
        found = any(
            torch.allclose(out[i], cand)
            for dy in range(9)
            for dx in range(9)
            for cand in (padded[i, :, dy:dy + 32, dx:dx + 32], padded[i, :, dy:dy + 32, dx:dx + 32].flip(2))
        )
        assert found, f"image {i} is not a crop/flip of its input"


def test_augment_flips_about_half_and_varies_the_crop() -> None:
    n = 1000
    images = torch.randint(1, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = augment(images, torch.Generator().manual_seed(3), cutout=0)
    padded = torch.nn.functional.pad(normalize(images), (4, 4, 4, 4))
    padded = torch.where(padded == 0, normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8)), padded)
    window = torch.full((n,), -1)
    flipped = torch.zeros(n, dtype=torch.bool)
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, :, dy:dy + 32, dx:dx + 32]
            plain = (out == crop).flatten(1).all(1)
            mirror = (out == crop.flip(3)).flatten(1).all(1)
            window[plain | mirror] = dy * 9 + dx
            flipped |= mirror
    assert (window >= 0).all(), "every output is a crop of its padded input, mirrored or not"
    assert 0.45 < flipped.float().mean() < 0.55  # p = 0.5: 1000 draws land here unless flips are broken
    counts = torch.bincount(window, minlength=81)
    assert (counts > 0).all() and counts.max() < 3 * n / 81  # all 81 offsets, none dominant


def test_cutout_zeroes_one_square_hole_at_most_16() -> None:
    images = _batch(64)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    with_hole = augment(images, g1)
    without = augment(images, g2, cutout=0)  # same crops and flips: cutout draws come last
    diff = (with_hole != without).any(dim=1)
    holes = (with_hole == 0).all(dim=1) & diff
    assert torch.equal(diff, holes)
    sizes = holes.flatten(1).sum(1)
    assert sizes.max() <= 256 and sizes.min() >= 64  # a 16x16 hole clipped at most to its quarter
    assert (sizes == 256).any()


def test_augment_is_seeded() -> None:
    images = _batch()
    a = augment(images, torch.Generator().manual_seed(3))
    b = augment(images, torch.Generator().manual_seed(3))
    c = augment(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_probe_batch_is_seeded_and_sized() -> None:
    sample = load_embedded_sample()
    x1, y1 = sample.probe_batch(128, seed=0)
    x2, y2 = sample.probe_batch(128, seed=0)
    x3, _ = sample.probe_batch(128, seed=1)
    assert x1.shape == (128, 3, 32, 32) and x1.dtype == torch.float32
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    with pytest.raises(DataError, match="exceeds"):
        sample.probe_batch(5000, seed=0)


def _fake_archive(path: Path) -> str:
    """A tar.gz in the official layout holding two tiny batches; returns its MD5."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {"data": np.full((2, 3072), 7, np.uint8), "labels": [1, 2]}
            blob = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    path.write_bytes(buf.getvalue())
    return hashlib.md5(buf.getvalue()).hexdigest()


def test_download_checks_md5_and_extracts(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = _fake_archive(archive)
    target = tmp_path / "data"
    download_cifar10(target, url=archive.as_uri(), md5=md5)
    train = load_cifar10(target, train=True, download=False)
    assert train.images.shape == (10, 3, 32, 32) and int(train.images[0, 0, 0, 0]) == 7
    with pytest.raises(DataError, match="MD5"):
        download_cifar10(tmp_path / "other", url=archive.as_uri(), md5="0" * 32)
    assert not (tmp_path / "other" / "cifar-10-batches-py").exists()


def test_missing_data_without_network_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="could not download CIFAR-10 .* put the extracted official archive"):
        download_cifar10(tmp_path, url=(tmp_path / "nowhere.tar.gz").as_uri())
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        load_cifar10(tmp_path / "empty", download=False)


def test_corrupt_batch_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot read CIFAR-10 batch"):
        load_cifar10(tmp_path, train=False, download=False)


class _Payload:
    """Unpickling this runs os.system: what a crafted batch file would do under a plain pickle.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("content", ["payload", "wrong-type", "wrong-shape"])
def test_batch_files_never_run_code_and_wrong_content_is_refused(tmp_path: Path, content: str) -> None:
    import pickle

    import numpy as np

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    batch = {
        "payload": {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "evil": _Payload(marker)},
        "wrong-type": [1, 2, 3],
        "wrong-shape": {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]},
    }[content]
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="cannot read CIFAR-10 batch .*test_batch"):
        load_cifar10(tmp_path, train=False, download=False)
    assert not marker.exists()


def test_missing_folder_downloads_from_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_cifar10 fetches a missing set (here from a local mirror with the expected MD5) before reading it."""
    archive = tmp_path / "mirror.tar.gz"
    md5 = _fake_archive(archive)
    monkeypatch.setenv("BLOCKSWAP_CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr("blockswap.data.cifar.CIFAR10_MD5", md5)
    test = load_cifar10(tmp_path / "fresh", train=False)
    assert len(test) == 2 and (tmp_path / "fresh" / "cifar-10-batches-py" / "data_batch_5").is_file()
