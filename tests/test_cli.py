"""The `blockswap` command: search on the embedded default, info, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from blockswap.cli import _train_resume_hint, main


def test_search_on_embedded_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["search", "--budget", "40k", "--samples", "3", "--model", "wrn-10-1", "--batch-size", "16",
                 "--quiet", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "best: #" in text and "candidates.csv" in text
    best = json.loads((out / "best.json").read_text())
    assert best["model"] == "wrn-10-1" and len(best["blocks"]) == 3 and best["scorer"] == "fast"


def test_info_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "wrn-40-2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 2_243_546 and abs(data["macs"] - 328.3e6) < 3.3e6
    assert len(data["per_block"]) == 18
    csv_path = tmp_path / "bs400k.csv"
    csv_path.write_text(",index,convs,fisher\n0,0,\"" + repr(
        "Conv DConvG16 DConv DConvA2 ConvB2 DConvA8 DConvG2 DConvG16 DConvA8 DConvA16 DConvG8 DConvA4 DConvG4 "
        "DConvG4 A4B2 DConvG8 DConvG8 G16B2".split()) + "\",0.0\n")
    assert main(["info", str(csv_path)]) == 0
    table = capsys.readouterr().out
    assert "params 404,250" in table and "G16B2" in table and "128->128" in table


@pytest.mark.parametrize("argv,message", [
    (["search", "--budget", "10k", "--out", "{tmp}/a"], "outside the reachable range"),
    (["search", "--budget", "400k", "--model", "vgg", "--out", "{tmp}/b"], "unknown model 'vgg'"),
    (["search", "--budget", "400k", "--data-dir", "{tmp}/nodata", "--out", "{tmp}/c"],
     "could not download CIFAR-10"),
    (["info", "{tmp}/missing.json"], "not found"),
    (["info", "{tmp}/bad.json"], "not valid JSON"),
])
def test_bad_input_exits_non_zero_with_one_line(tmp_path: Path, argv: list[str], message: str) -> None:
    (tmp_path / "bad.json").write_text("{")
    proc = subprocess.run([sys.executable, "-m", "blockswap", *(a.format(tmp=tmp_path) for a in argv)],
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "", "HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
                               "BLOCKSWAP_CIFAR10_URL": (tmp_path / "none.tar.gz").as_uri()})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blockswap: error:") and message in lines[0], proc.stderr


def test_bad_budget_string_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["search", "--budget", "lots", "--out", "x"])
    assert e.value.code == 2
    assert "cannot parse budget 'lots'" in capsys.readouterr().err


def test_debug_shows_the_traceback_that_a_user_never_sees(tmp_path: Path) -> None:
    env = {"PATH": "", "HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    quiet = subprocess.run([sys.executable, "-m", "blockswap", "info", str(tmp_path / "missing.json")],
                           capture_output=True, text=True, timeout=120, env=env)
    loud = subprocess.run([sys.executable, "-m", "blockswap", "--debug", "info", str(tmp_path / "missing.json")],
                          capture_output=True, text=True, timeout=120, env=env)
    also = subprocess.run([sys.executable, "-m", "blockswap", "info", str(tmp_path / "missing.json")],
                          capture_output=True, text=True, timeout=120, env={**env, "BLOCKSWAP_DEBUG": "1"})
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert "Traceback" in loud.stderr and "GenotypeError" in loud.stderr
    assert "Traceback" in also.stderr


def test_info_on_a_16_block_csv_names_resnet34(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "bs_imagenet_1.csv"
    csv_path.write_text(",index,convs,fisher\n0,0,\"['DConvA8', 'G2B2', 'G2B2', 'Conv', 'DConvA2', 'DConvG2','ConvB2',"
                        "'DConvA16', 'A16B2', 'G16B2', 'DConvG4', 'A2B2', 'A8B2', 'G2B2', 'DConvG4', 'A4B2']\",0.0\n")
    assert main(["info", str(csv_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("blockswap: error:") and "(pass --model resnet34)" in err[0], err
    assert main(["info", str(csv_path), "--model", "resnet34"]) == 0
    table = capsys.readouterr().out
    assert "resnet34, 1000 classes" in table and "params 3,083,176 (3.08M)" in table


def test_the_hint_after_an_interrupted_training_run_matches_what_its_folder_holds(tmp_path: Path) -> None:
    assert _train_resume_hint(tmp_path) == "the run had not started; rerun the same command"
    (tmp_path / "config.json").write_text("{}")
    assert "starts again at epoch 1" in _train_resume_hint(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert _train_resume_hint(tmp_path).endswith(f"continue from {tmp_path / 'checkpoint.pt'}")
