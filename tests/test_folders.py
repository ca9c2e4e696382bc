"""Image folders: scanning and its errors, the standard transforms, seeded batches, and the CLI end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FOLDER_CLASSES, FOLDER_IMAGES
from PIL import Image

from blockswap import Backbone
from blockswap.cli import main
from blockswap.data import load_split, probe_images
from blockswap.data.cifar import DataError
from blockswap.data.imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassCountError,
    check_classes,
    decode_eval,
    decode_train,
    is_image_folder,
    open_image_folder,
    random_resized_box,
)


def _copy(src: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(src, root)
    return root


def test_splits_hold_sorted_classes_with_their_labels(image_folder: Path) -> None:
    assert is_image_folder(image_folder)
    train, val = open_image_folder(image_folder, 32)
    assert train.classes == val.classes == tuple(sorted(FOLDER_CLASSES))
    assert len(train) == 3 * FOLDER_IMAGES["train"] and len(val) == 3 * FOLDER_IMAGES["val"]
    for split in (train, val):
        for path, label in zip(split.paths, split.labels.tolist()):
            assert Path(path).parent.name == split.classes[label]


def test_cifar_folder_is_not_an_image_folder(cifar_root: Path) -> None:
    assert not is_image_folder(cifar_root)
    assert load_split(cifar_root, False, 32).num_classes == 10


def test_empty_class_folder_is_refused_by_name(image_folder: Path, tmp_path: Path) -> None:
    root = _copy(image_folder, tmp_path)
    (root / "val" / "cat").rename(root / "val" / "dog")
    for f in (root / "val" / "dog").iterdir():
        f.unlink()
    (root / "val" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"class folder .*val/dog holds no images"):
        open_image_folder(root, 32)


def test_different_class_sets_are_named(image_folder: Path, tmp_path: Path) -> None:
    root = _copy(image_folder, tmp_path)
    (root / "val" / "cat").rename(root / "val" / "dog")
    with pytest.raises(DataError, match=r"only in train: cat; only in val: dog"):
        open_image_folder(root, 32)


def test_missing_val_split_is_refused(image_folder: Path, tmp_path: Path) -> None:
    root = _copy(image_folder, tmp_path)
    shutil.rmtree(root / "val")
    with pytest.raises(DataError, match=r"no val/ folder"):
        open_image_folder(root, 32)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_stops_with_its_path_in_one_line(image_folder: Path, tmp_path: Path,
                                                              workers: int) -> None:
    root = _copy(image_folder, tmp_path)
    bad = root / "val" / "ship" / "0003.jpg"
    bad.write_bytes(b"this is not a jpeg")
    _, val = open_image_folder(root, 32)
    with pytest.raises(DataError) as e:
        list(val.with_workers(workers).eval_batches(16))
    assert str(bad) in str(e.value) and "\n" not in str(e.value) and "stops rather than skipping" in str(e.value)


def test_a_dangling_image_link_stops_with_its_path(image_folder: Path, tmp_path: Path) -> None:
    root = _copy(image_folder, tmp_path)
    link = root / "train" / "cat" / "zz-moved.jpg"
    link.symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(DataError, match=r"zz-moved.jpg is a link to nothing"):
        open_image_folder(root, 32)


def test_a_folder_of_one_class_is_refused(image_folder: Path, tmp_path: Path) -> None:
    root = _copy(image_folder, tmp_path)
    for split in ("train", "val"):
        for extra in sorted((root / split).iterdir())[1:]:
            shutil.rmtree(extra)
    with pytest.raises(DataError, match="holds one class folder .*needs two or more classes"):
        open_image_folder(root, 32)


def _flat(path: Path, image: Image.Image) -> float:
    image.save(path)
    return float(decode_eval(str(path), 16).float().mean())


def test_every_pillow_mode_decodes_to_the_rgb_it_shows(tmp_path: Path) -> None:
    grey16 = Image.fromarray(np.full((20, 24), 128 * 257, np.uint16))
    assert grey16.mode.startswith("I;16") and _flat(tmp_path / "g16.png", grey16) == 128  # not all white
    assert _flat(tmp_path / "f.tif", Image.fromarray(np.full((20, 24), 0.5, np.float32), "F")) == 128  # not black
    assert _flat(tmp_path / "i32.tif", Image.fromarray(np.full((20, 24), 64 * 257, np.int32), "I")) == 64
    assert _flat(tmp_path / "clear.png", Image.new("RGBA", (24, 20), (255, 255, 255, 0))) == 0  # over black
    assert _flat(tmp_path / "half.png", Image.new("LA", (24, 20), (200, 255))) == 200
    palette = Image.new("P", (24, 20), 3)
    palette.putpalette([0, 0, 0] * 3 + [10, 20, 30] + [0, 0, 0] * 252)
    path = tmp_path / "p.png"
    palette.save(path)
    assert decode_eval(str(path), 16)[:, 0, 0].tolist() == [10, 20, 30]
    bright = Image.fromarray(np.full((20, 24), 2.0, np.float32), "F")
    with pytest.raises(DataError, match=r"f2.tif is a float image with values outside \[0, 1\]"):
        _flat(tmp_path / "f2.tif", bright)


def test_the_exif_orientation_is_applied_before_cropping(tmp_path: Path) -> None:
    image = Image.new("RGB", (60, 40), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 30, 40))  # red left half, stored sideways
    exif = image.getexif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the red half on top
    image.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    red = decode_eval(str(tmp_path / "turned.jpg"), 32)[0].float()
    assert red[:8].mean() > 240 and red[-8:].mean() < 15


def test_random_resized_box_stays_inside_with_area_and_aspect_in_range() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        width, height = int(rng.integers(20, 400)), int(rng.integers(20, 400))
        left, top, right, bottom = random_resized_box(width, height, rng)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        w, h = right - left, bottom - top
        if (w, h) != (width, height):  # not the fallback for images too elongated to draw from
            assert 0.08 * width * height * 0.8 <= w * h <= width * height
            assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15


def test_random_resized_box_falls_back_to_the_clamped_centre_for_a_strip() -> None:
    # No box of area >= 8% fits a 1000 x 10 strip with aspect <= 4/3: the centred 13 x 10 box (aspect clamped).
    assert random_resized_box(1000, 10, np.random.default_rng(1)) == (493, 0, 506, 10)


def _gradient_image(path: Path, width: int, height: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs * 255 // (width - 1), ys * 255 // (height - 1), (xs + ys) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_eval_view_is_resize_then_centre_crop(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    _gradient_image(path, 300, 200)
    view = decode_eval(str(path), 56)
    # Two steps, as the standard transform does them: shorter side to 64 (56 * 256/224), then the centre 56.
    resized = Image.open(path).resize((96, 64), Image.Resampling.BILINEAR)
    expected = np.asarray(resized.crop((20, 4, 76, 60)))
    assert view.shape == (3, 56, 56) and view.dtype == torch.uint8
    assert np.abs(view.permute(1, 2, 0).numpy().astype(int) - expected.astype(int))[..., :2].mean() < 2.0


def test_train_view_is_the_seeded_box_resized_then_maybe_flipped(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    _gradient_image(path, 300, 200)
    views = [decode_train(str(path), 40, np.random.default_rng([7, epoch, 3])) for epoch in range(6)]
    assert torch.equal(views[0], decode_train(str(path), 40, np.random.default_rng([7, 0, 3])))
    flips = 0
    for epoch, view in enumerate(views):
        rng = np.random.default_rng([7, epoch, 3])
        box = random_resized_box(300, 200, rng)
        expected = Image.open(path).resize((40, 40), Image.Resampling.BILINEAR, box=box)
        if rng.uniform() < 0.5:
            expected, flips = expected.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flips + 1
        assert np.array_equal(view.permute(1, 2, 0).numpy(), np.asarray(expected))
    assert 0 < flips < 6 and not torch.equal(views[0], views[1])


def test_jpeg_decoded_at_reduced_scale_matches_the_full_decode(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    ys, xs = np.mgrid[0:800, 0:1200]
    pixels = np.stack([xs * 255 // 1199, ys * 255 // 799, np.full_like(xs, 128)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    view = decode_eval(str(path), 64)  # decoded at 1/8 scale (150 x 100 >= 73 each way)
    full = Image.open(path).convert("RGB")
    short = round(64 * 256 / 224)
    width = round(short * 1200 / 800)
    crop = full.resize((width, short), Image.Resampling.BILINEAR).crop(((width - 64) // 2, (short - 64) // 2,
                                                                        (width - 64) // 2 + 64, (short - 64) // 2 + 64))
    assert np.abs(view.permute(1, 2, 0).numpy().astype(int) - np.asarray(crop).astype(int)).mean() < 3.0


def test_training_batches_do_not_depend_on_the_decoding_processes(image_folder: Path) -> None:
    train, _ = open_image_folder(image_folder, 32)
    order = [torch.tensor([5, 70, 3, 140]), torch.tensor([1, 2, 100, 9])]

    def batches(workers: int, key: tuple[int, ...]) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        return [x for x, _ in train.with_workers(workers).train_batches(order, gen, 8, key)]

    inline, pooled, other_epoch = batches(0, (0, 1)), batches(2, (0, 1)), batches(0, (0, 2))
    assert all(torch.equal(a, b) for a, b in zip(inline, pooled))
    assert not torch.equal(inline[0], other_epoch[0])
    assert inline[0].shape == (4, 3, 32, 32)
    holes = (inline[0] == 0).all(dim=1)  # Cutout zeroes an 8 x 8 patch (clipped at edges) in every image
    assert all(8 <= int(h.sum()) <= 64 for h in holes)


def test_probe_batch_is_seeded_and_imagenet_normalised(image_folder: Path) -> None:
    images = probe_images(str(image_folder), 48)
    x, y = images.probe_batch(24, seed=3)
    x2, y2 = images.probe_batch(24, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2) and x.shape == (24, 3, 48, 48)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert torch.allclose(x.amin(dim=(0, 2, 3)), -mean / std, atol=0.2)  # black pixels exist in CIFAR photos
    assert set(y.tolist()) <= {0, 1, 2}


def test_a_head_that_does_not_match_the_class_folders_is_refused(image_folder: Path) -> None:
    train, _ = open_image_folder(image_folder, 32)
    check_classes(Backbone.from_name("wrn-10-1", 3), train, image_folder)
    with pytest.raises(ClassCountError, match=r"wrn-10-1 has 10 outputs but .* holds 3 class folders$") as e:
        check_classes(Backbone.from_name("wrn-10-1"), train, image_folder)
    assert (e.value.have, e.value.need) == (10, 3)  # the library states the fact; each command says the fix


def test_search_train_distill_and_eval_on_an_image_folder(image_folder: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = str(image_folder)
    common = ["--num-classes", "3", "--data-dir", data]
    assert main(["search", "--model", "wrn-10-1", *common, "--budget", "40k", "--samples", "3", "--batch-size", "16",
                 "--workers", "1", "--quiet", "--out", str(tmp_path / "search")]) == 0
    best = json.loads((tmp_path / "search" / "best.json").read_text())
    assert best["num_classes"] == 3
    run = ["--epochs", "1", "--batch-size", "16", "--precision", "fp32", "--loader-workers", "2", "--quiet"]
    assert main(["train", "teacher", "--model", "wrn-10-1", *common, *run, "--out", str(tmp_path / "teacher")]) == 0
    assert main(["train", "student", "--genotype", str(tmp_path / "search" / "best.json"),
                 "--teacher", str(tmp_path / "teacher" / "last.pt"), "--data-dir", data, *run,
                 "--out", str(tmp_path / "student")]) == 0
    final = json.loads((tmp_path / "student" / "final.json").read_text())
    assert final["blocks"] == best["blocks"] and math.isfinite(final["test_error_pct"])
    metrics = json.loads((tmp_path / "student" / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["train_at"] > 0  # distilled from the teacher, not CE alone
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "student" / "last.pt"), "--data-dir", data,
                 "--min-time", "0.01", "--loader-workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["test_images"] == 3 * FOLDER_IMAGES["val"]
    assert report["test_error_pct"] == pytest.approx(final["test_error_pct"])


def test_training_a_ten_class_network_on_three_class_folders_names_the_fix(image_folder: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "teacher", "--model", "wrn-10-1", "--data-dir", str(image_folder), "--epochs", "1",
                 "--out", str(tmp_path / "t")])
    assert code == 2
    assert "--num-classes 3" in capsys.readouterr().err
    assert not (tmp_path / "t" / "config.json").exists()


def test_each_command_advises_a_fix_that_exists_there(image_folder: Path, cifar_root: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = str(image_folder)
    search = ["search", "--budget", "40k", "--samples", "2", "--batch-size", "16", "--workers", "1", "--quiet",
              "--data-dir", data]
    assert main([*search, "--model", "wrn-10-1", "--out", str(tmp_path / "s1")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith("; pass --num-classes 3")
    assert main([*search, "--model", "wrn-10-1", "--num-classes", "3", "--out", str(tmp_path / "s1")]) == 0  # works
    capsys.readouterr()
    teacher = tmp_path / "teacher"  # a 10-class weight file: --num-classes cannot change its head
    assert main(["train", "teacher", "--model", "wrn-10-1", "--data-dir", str(cifar_root), "--epochs", "1",
                 "--train-subset", "32", "--test-subset", "32", "--batch-size", "16", "--quiet",
                 "--out", str(teacher)]) == 0
    capsys.readouterr()
    assert main([*search, "--model", str(teacher / "last.pt"), "--out", str(tmp_path / "s2")]) == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith("use data with 10 classes (the file's head), or search --model wrn-10-1 "
                                 "--num-classes 3 (its layout with a new head)")
    assert main(["eval", "--checkpoint", str(teacher / "last.pt"), "--data-dir", data, "--min-time", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "use data with 10 classes: a trained network's head is fixed" in err and "--num-classes" not in err
    assert main(["study", "mixing", "--model", "wrn-10-1", "--budget", "9.5k", "--tolerance", "0.05", "--candidates",
                 "2", "--epochs", "1", "--data-dir", data, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "the studies train wrn-10-1 with its 10 classes" in err and "--num-classes" not in err
    assert main(["study", "rank", "--model", "wrn-10-1", "--budget", "40k", "--candidates", "3", "--proxies",
                 "params", "--epochs", "1", "--batch-size", "16", "--data-dir", data,
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "the studies train wrn-10-1 with its 10 classes" in err and "--num-classes" not in err
    assert not (tmp_path / "s2").exists() and not (tmp_path / "m").exists() and not (tmp_path / "r").exists()


def test_a_run_does_not_resume_on_changed_images(image_folder: Path, tmp_path: Path) -> None:
    from blockswap import Genotype
    from blockswap.train.training import TrainConfig, TrainingError, train

    root = _copy(image_folder, tmp_path)
    config = TrainConfig(genotype=Genotype.uniform(Backbone.from_name("wrn-10-1", 3)), data_dir=str(root), epochs=2,
                         batch_size=16, precision="fp32")

    def stop(row: dict, net: torch.nn.Module) -> None:
        raise KeyboardInterrupt  # after epoch 1's checkpoint, as Ctrl-C would stop the run

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", progress=False, on_epoch=stop, loader_workers=0)
    assert (tmp_path / "run" / "images.json").is_file()
    added = root / "train" / "cat" / "zz-new.jpg"
    shutil.copy(next((root / "train" / "cat").glob("*.jpg")), added)
    with pytest.raises(TrainingError, match=r"images in .* changed since .* started"):
        train(config, tmp_path / "run", resume=True, progress=False, loader_workers=0)
    added.unlink()  # the same images again: the run resumes and finishes
    final = train(config, tmp_path / "run", resume=True, progress=False, loader_workers=0)
    assert final["epochs"] == 2


def test_a_corrupt_validation_image_stops_the_run_before_it_starts(image_folder: Path, tmp_path: Path) -> None:
    from blockswap import Genotype
    from blockswap.train.training import TrainConfig, train

    root = _copy(image_folder, tmp_path)
    bad = sorted((root / "val" / "ship").glob("*.jpg"))[-1]
    bad.write_bytes(b"not an image at all")
    config = TrainConfig(genotype=Genotype.uniform(Backbone.from_name("wrn-10-1", 3)), data_dir=str(root), epochs=1,
                         batch_size=16, precision="fp32")
    with pytest.raises(DataError, match=f"cannot decode image {bad}"):
        train(config, tmp_path / "run", progress=False, loader_workers=0)
    assert not (tmp_path / "run").exists()  # found before the folder was claimed, not after an epoch of training


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_images_in_subfolders_belong_to_their_class_and_hidden_names_are_not_images(tmp_path: Path) -> None:
    """As torchvision's ImageFolder reads a class folder: its subfolders' images count (before, they were left out
    silently); a linked folder that loops back is read once; dot-files and hidden folders are not images."""
    import os

    root = tmp_path / "images"
    for split in ("train", "val"):
        for c, name in enumerate(("a", "b")):
            _png(root / split / name / "0.png", 40 * c)
            _png(root / split / name / "nested" / "deeper" / "1.png", 40 * c + 10)
            _png(root / split / name / ".hidden.png", 200)
            _png(root / split / name / ".ipynb_checkpoints" / "2.png", 200)
        os.symlink("..", root / split / "a" / "nested" / "loop")
    train, val = open_image_folder(root, 8)
    for split in (train, val):
        names = [str(Path(p).relative_to(root)).split(os.sep, 1)[1] for p in split.paths]
        assert sorted(names) == ["a/0.png", "a/nested/deeper/1.png", "b/0.png", "b/nested/deeper/1.png"]
        assert split.labels.tolist() == [0, 0, 1, 1]


def test_file_names_that_are_not_utf8_are_read_and_fingerprinted(tmp_path: Path) -> None:
    """A name with bytes that are not UTF-8 (a Latin-1 archive unpacked on Linux) is an image like any other."""
    import os

    root = tmp_path / "images"
    for split in ("train", "val"):
        for c, name in enumerate(("a", "b")):
            _png(root / split / name / "0.png", 40 * c)
            _png(root / split / name / os.fsdecode(b"caf\xe9.png"), 40 * c + 10)
    train, _ = open_image_folder(root, 8)
    assert len(train) == 4 and len(train.manifest_sha256()) == 64
    assert len(train.probe_fingerprint(4, 0)) == 64
