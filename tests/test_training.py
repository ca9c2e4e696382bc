"""Training runs at tiny scale on real CIFAR-10: distillation, output files, resume, failures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from blockswap import Backbone, Genotype
from blockswap.cli import main
from blockswap.data.cifar import DataError, augment, load_cifar10
from blockswap.train.training import TrainConfig, TrainingError, epoch_order, make_scheduler, train
from blockswap.util.errors import BlockSwapError
from blockswap.weights.checkpoint import CheckpointError, read_checkpoint

WRN10 = Backbone.from_name("wrn-10-1")


def _config(cifar_root: Path, **overrides: object) -> TrainConfig:
    settings = {"genotype": Genotype.uniform(WRN10).to_dict(), "data_dir": str(cifar_root), "epochs": 2,
                "batch_size": 32, "train_subset": 128, "test_subset": 100, **overrides}
    return TrainConfig(**settings)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the library catches it."""


def test_student_with_teacher_reduces_train_loss(cifar_root: Path, tiny_teacher: Path, tmp_path: Path) -> None:
    student = Genotype.uniform(WRN10, "G4B2")
    config = _config(cifar_root, genotype=student.to_dict(), teacher=str(tiny_teacher / "last.pt"), epochs=3,
                     lr=0.05, schedule="step")
    final = train(config, tmp_path, progress=False)
    rows = _rows(tmp_path)
    assert len(rows) == 3
    assert all(r["train_at"] > 0 for r in rows)  # the teacher's attention maps were used
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    assert rows[-1]["train_at"] < rows[0]["train_at"] and rows[-1]["train_ce"] < rows[0]["train_ce"]
    assert final["params"] == student.params() and final["macs"] == student.macs()
    assert final["teacher"] == str(tiny_teacher / "last.pt")


def test_output_files(cifar_root: Path, tiny_teacher: Path) -> None:
    out = tiny_teacher  # a finished teacher run from conftest
    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert config.genotype == Genotype.uniform(WRN10) and config.train_subset == 256
    (row,) = _rows(out)
    assert set(row) >= {"epoch", "lr", "train_loss", "train_error_pct", "test_loss", "test_error_pct", "seconds"}
    assert row["lr"] == 0.1 and row["train_kd"] == 0.0 and row["train_at"] == 0.0
    final = json.loads((out / "final.json").read_text())
    assert set(final) >= {"test_error_pct", "params", "macs", "epochs", "seconds"}
    assert final["test_error_pct"] == row["test_error_pct"] and final["epochs"] == 1
    assert final["params"] == 77_850 == Genotype.uniform(WRN10).params()
    for name in ("checkpoint.pt", "best.pt", "last.pt"):
        payload = read_checkpoint(out / name)
        assert Genotype.from_dict(payload["genotype"]) == Genotype.uniform(WRN10)
        assert payload["epoch"] == 1
    assert not list(out.glob("*.tmp"))


@pytest.mark.parametrize("schedule", ["cosine", "cosine-steps"])
def test_resume_ends_with_the_same_weights(cifar_root: Path, tmp_path: Path, schedule: str) -> None:
    config = _config(cifar_root, schedule=schedule)
    whole = train(config, tmp_path / "whole", progress=False)

    def kill_after_first(row: dict, _net: torch.nn.Module) -> None:
        if row["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        train(config, tmp_path / "split", progress=False, on_epoch=kill_after_first)
    assert read_checkpoint(tmp_path / "split" / "checkpoint.pt")["epoch"] == 1
    with pytest.raises(TrainingError, match="--resume"):
        train(config, tmp_path / "split", progress=False)
    resumed = train(config, tmp_path / "split", resume=True, progress=False)

    a = read_checkpoint(tmp_path / "whole" / "last.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "split" / "last.pt")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed["test_error_pct"] == whole["test_error_pct"]
    rows_a, rows_b = _rows(tmp_path / "whole"), _rows(tmp_path / "split")
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]
    assert [r["lr"] for r in rows_b] == pytest.approx([0.1, 0.05])  # the schedule continued, not restarted
    steps = 2 * 128 // 32 if schedule == "cosine-steps" else 2  # a per-step schedule counts SGD steps
    assert read_checkpoint(tmp_path / "split" / "checkpoint.pt")["scheduler"]["last_epoch"] == steps


def test_resume_refuses_changed_settings(cifar_root: Path, tmp_path: Path) -> None:
    config = _config(cifar_root, epochs=1)
    train(config, tmp_path, progress=False)
    changed = _config(cifar_root, epochs=1, lr=0.2)
    with pytest.raises(TrainingError, match="lr: 0.1 -> 0.2"):
        train(changed, tmp_path, resume=True, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(cifar_root: Path, tmp_path: Path) -> None:
    def poison(row: dict, net: torch.nn.Module) -> None:
        with torch.no_grad():
            net.fc.weight.fill_(float("nan"))

    with pytest.raises(TrainingError, match="loss became nan in epoch 2.*keeps epoch 1"):
        train(_config(cifar_root), tmp_path, progress=False, on_epoch=poison)
    kept = read_checkpoint(tmp_path / "checkpoint.pt")
    assert kept["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in kept["state_dict"].values())
    assert len(_rows(tmp_path)) == 1
    assert not (tmp_path / "final.json").exists()


def test_cli_diverging_run_exits_with_message(cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["train", "teacher", "--model", "wrn-10-1", "--data-dir", str(cifar_root), "--epochs", "1",
                 "--train-subset", "64", "--test-subset", "50", "--batch-size", "32", "--lr", "1e30",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 2
    assert "training loss became nan" in capsys.readouterr().err


def test_teacher_architecture_mismatch(cifar_root: Path, tiny_teacher: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    wrong = Genotype.uniform(Backbone.from_name("wrn-16-1"))
    config = _config(cifar_root, teacher=str(tiny_teacher / "last.pt"), teacher_genotype=wrong.to_dict())
    with pytest.raises(CheckpointError, match="holds wrn-10-1.*expected wrn-16-1"):
        train(config, tmp_path / "a", progress=False)
    bare = tmp_path / "bare.pt"
    torch.save(read_checkpoint(tiny_teacher / "last.pt")["state_dict"], bare)
    code = main(["train", "student", "--all", "G4B2", "--model", "wrn-10-1", "--teacher", str(bare),
                 "--teacher-model", "wrn-16-1", "--data-dir", str(cifar_root), "--out", str(tmp_path / "b")])
    assert code == 2
    assert "does not fit wrn-16-1" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        train(_config(tmp_path / "nowhere"), tmp_path / "out", progress=False)
    code = main(["train", "teacher", "--model", "wrn-10-1", "--data-dir", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "out2")])
    assert code == 2
    assert "CIFAR-10 not found" in capsys.readouterr().err


def test_each_epoch_walks_a_new_permutation(cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import blockswap.data.cifar as data

    batches: list[torch.Tensor] = []

    def spy(images: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        batches.append(images.clone())  # the uint8 images a training step is about to see
        return augment(images, *args, **kwargs)

    monkeypatch.setattr(data, "augment", spy)  # what ImageSet.train_batches augments each batch with
    train(_config(cifar_root, epochs=3, precision="fp32"), tmp_path, progress=False)
    subset = load_cifar10(cifar_root, train=True).subset(128).images
    epochs = [torch.cat(batches[4 * e : 4 * e + 4]) for e in range(3)]  # 128 images, batch 32: 4 steps an epoch
    assert len(batches) == 12

    def positions(seen: torch.Tensor) -> list[int]:
        return [int((subset == image).flatten(1).all(1).nonzero()[0]) for image in seen]

    orders = [positions(seen) for seen in epochs]
    assert all(sorted(order) == list(range(128)) for order in orders)  # every image once an epoch
    assert orders[0] != orders[1] and orders[1] != orders[2]
    assert orders[1] == epoch_order(128, 0, 1).tolist()  # seeded by (seed, epoch): a resumed run replays it


def _comparable(out: Path) -> dict[str, object]:
    """What an interrupted-and-resumed run must share with an uninterrupted one (wall-clock figures aside)."""
    clock = {"seconds", "train_images_per_s"}
    rows = [{k: v for k, v in json.loads(line).items() if k not in clock}
            for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = {k: v for k, v in json.loads((out / "final.json").read_text()).items() if k not in clock}
    files = {name: read_checkpoint(out / name) for name in ("best.pt", "last.pt")}
    assert files["best.pt"]["epoch"] == final["best_epoch"]  # the three agree with one another
    assert min(rows, key=lambda r: r["test_error_pct"])["epoch"] == final["best_epoch"]
    weights = {name: {k: v.tolist() for k, v in f["state_dict"].items()} for name, f in files.items()}
    return {"rows": rows, "final": final, "weights": weights, "epochs": {n: f["epoch"] for n, f in files.items()}}


def test_a_kill_between_any_two_writes_resumes_to_the_same_files(cifar_root: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from blockswap.train import training  # `blockswap.train` as an attribute is the function, not the package

    config = _config(cifar_root, epochs=2, batch_size=64, train_subset=512, test_subset=200, precision="fp32",
                     lr=0.05, seed=1)
    train(config, tmp_path / "whole", progress=False)
    expected = _comparable(tmp_path / "whole")
    assert expected["final"]["best_epoch"] == 2  # epoch 2 rewrites best.pt: the write a kill could leave stale
    writers = ("save_atomic", "write_json_atomic", "write_text_atomic", "record")
    real = {name: getattr(training, name) for name in writers}
    writes: list[str] = []

    def counting(name: str):
        def write(*args: object, **kwargs: object) -> object:
            writes.append(name)
            return real[name](*args, **kwargs)
        return write

    for name in writers:
        monkeypatch.setattr(training, name, counting(name))
    train(config, tmp_path / "count", progress=False)
    total = len(writes)
    assert total >= 8  # config, metrics, (best, checkpoint, metrics) x 2, last, final
    for kill_at in range(total):
        seen = [0]

        def dying(name: str):
            def write(*args: object, **kwargs: object) -> object:
                if seen[0] == kill_at:
                    raise Killed
                seen[0] += 1
                return real[name](*args, **kwargs)
            return write

        for name in writers:
            monkeypatch.setattr(training, name, dying(name))
        out = tmp_path / f"cut{kill_at}"
        with pytest.raises(Killed):
            train(config, out, progress=False)
        for name in writers:
            monkeypatch.setattr(training, name, real[name])
        train(config, out, resume=True, progress=False)
        assert _comparable(out) == expected, f"killed before write {kill_at + 1} of {total} ({writes[kill_at]})"
        assert not list(out.glob(".*.tmp")), "a temporary file was left behind"


def test_step_schedule_divides_by_five_at_30_60_80_percent() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_scheduler(opt, "step", 200)
    lrs = []
    for _ in range(200):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[59] == pytest.approx(0.1) and lrs[60] == pytest.approx(0.02)
    assert lrs[119] == pytest.approx(0.02) and lrs[120] == pytest.approx(0.004)
    assert lrs[160] == pytest.approx(0.0008) and math.isclose(lrs[-1], 0.0008)


def test_cosine_steps_anneals_to_zero_within_a_short_run() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_scheduler(opt, "cosine-steps", 2, 4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * t / 8)) for t in range(8)])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_under_torchrun_train_needs_a_group_unless_told_to_run_alone(cifar_root: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from blockswap.train.training import ONE_PROCESS

    monkeypatch.setenv("WORLD_SIZE", "2")
    config = _config(cifar_root, epochs=1)
    with pytest.raises(BlockSwapError, match="no process group"):
        train(config, tmp_path / "a", progress=False)
    with pytest.raises(BlockSwapError, match="ONE_PROCESS"):
        train(config, tmp_path / "b", progress=False, group="alone")  # type: ignore[arg-type]
    final = train(config, tmp_path / "c", progress=False, group=ONE_PROCESS)
    assert final["processes"] == 1 and (tmp_path / "c" / "final.json").is_file()
    assert final["threads"] == torch.get_num_threads()  # with seconds: the core-minutes a run cost
