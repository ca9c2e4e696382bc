"""Weight files: what is not one (a pickled module, a TorchScript export) is named as what it is, in one plain line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blockswap import Backbone, Genotype
from blockswap.cli import main
from blockswap.weights.checkpoint import CheckpointError, read_checkpoint

NET = Genotype.uniform(Backbone.from_name("wrn-10-1")).build().eval()


def test_a_pickled_module_is_told_to_save_its_state_dict(tmp_path: Path) -> None:
    torch.save(NET, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"torch.save\(model\).* torch.save\(model.state_dict\(\), path\)") as e:
        read_checkpoint(tmp_path / "model.pt")
    assert "\x1b" not in str(e.value) and "\n" not in str(e.value)


def test_a_torchscript_export_is_named_as_an_export(tmp_path: Path, cifar_root: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    torch.jit.save(torch.jit.trace(NET, torch.randn(2, 3, 32, 32)), tmp_path / "student.pt")
    with pytest.raises(CheckpointError, match="is a TorchScript export .* not a weight file"):
        read_checkpoint(tmp_path / "student.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "student.pt"), "--data-dir", str(cifar_root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TorchScript export" in err  # one line, no torch warning above it


def test_a_state_dict_file_still_reads(tmp_path: Path) -> None:
    torch.save({"state_dict": NET.state_dict()}, tmp_path / "ok.pt")
    assert read_checkpoint(tmp_path / "ok.pt")["state_dict"].keys() == NET.state_dict().keys()


@pytest.mark.parametrize("damage, message", [("nan", "NaN or infinite values in"),
                                             ("variance", "negative BatchNorm variance in")])
def test_a_broken_teacher_is_named_as_the_teacher(tmp_path: Path, cifar_root: Path, damage: str, message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from blockswap.weights.checkpoint import save_atomic

    genotype = Genotype.uniform(Backbone.from_name("wrn-10-1"))
    state = {k: v.clone() for k, v in NET.state_dict().items()}
    key = next(k for k in state if (k.endswith("running_var") if damage == "variance" else k.endswith("weight")))
    state[key].view(-1)[0] = -1.0 if damage == "variance" else float("nan")
    save_atomic({"genotype": genotype.to_dict(), "state_dict": state}, tmp_path / "teacher.pt")
    code = main(["train", "student", "--genotype", "wrn-10-1", "--teacher", str(tmp_path / "teacher.pt"),
                 "--data-dir", str(cifar_root), "--epochs", "1", "--train-subset", "32", "--quiet",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and f"teacher.pt holds {'a ' if damage == 'variance' else ''}" in err and message in err
    assert key in err and "--lr" not in err and not (tmp_path / "run").exists()
