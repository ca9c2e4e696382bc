"""A table of bad inputs through the real command: exit code 2, one line, no traceback, nothing changed (issue 10).

Each row runs the command in a process of its own against a world of real
files made once per module: a finished search, a trained teacher, a training
run, and files that are damaged, of the wrong kind, or crafted to run code.
Every row must end with one line on stderr (the process's file descriptor 2,
so C-level warnings count too) naming the problem, exit code 2, and leave the
folders it touched byte-for-byte as they were (and create none). The processes
are forked from a server that has imported `blockswap.cli` once (the
multiprocessing forkserver), so a row costs a fork rather than a torch import;
a few rows also run as `python -m blockswap` from scratch, and must give the
same outcome, so nothing that only a fresh interpreter prints goes unseen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import blockswap as bs
from blockswap.train.training import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
SEARCH = ["search", "--model", "wrn-10-1", "--budget", "40k", "--samples", "2", "--batch-size", "16", "--quiet"]
STUDENT = ["train", "student", "--data-dir", "{cifar}", "--epochs", "1", "--batch-size", "32", "--train-subset", "64",
           "--test-subset", "50", "--precision", "fp32", "--quiet"]
TEACHER = ["train", "teacher", "--model", "wrn-10-1", "--data-dir", "{cifar}", "--epochs", "1", "--batch-size", "32",
           "--train-subset", "64", "--test-subset", "50", "--precision", "fp32", "--quiet"]
GENOTYPE = ["--genotype", "{w}/student.json"]
WITH_TEACHER = ["--teacher", "{teacher}"]


class _Payload:
    """Unpickling this creates {w}/pwned: what a crafted data file would do under plain pickle.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def _batches(folder: Path, content: object) -> None:
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, cifar_root: Path, tiny_teacher: Path) -> dict[str, Path]:
    """The folders and files the table's rows point at."""
    w = tmp_path_factory.mktemp("world")
    config = bs.SearchConfig(budget=40_000, model="wrn-10-1", samples=2, batch_size=16)
    bs.run_search(config, w / "search", progress=False, workers=1)
    for name in ("edited", "duplicated", "garbled", "damaged"):
        shutil.copytree(w / "search", w / name)
    lines = (w / "search" / "candidates.csv").read_text().splitlines()
    fields = lines[1].split(",")
    (w / "edited" / "candidates.csv").write_text("\n".join([lines[0], ",".join([*fields[:2], "1", *fields[3:]]),
                                                            *lines[2:]]) + "\n")
    (w / "duplicated" / "candidates.csv").write_text("\n".join([*lines, lines[1]]) + "\n")
    (w / "garbled" / "candidates.csv").write_text(lines[0] + "\n0,Conv Conv Conv,x,y,z,w\n")
    (w / "damaged" / "search.json").write_text('{"budget": 40000, "model": ')
    (w / "orphan").mkdir()
    shutil.copy(w / "search" / "candidates.csv", w / "orphan" / "candidates.csv")

    genotype = bs.Genotype.uniform(bs.get_backbone("wrn-10-1"), "G4B2")
    genotype.save(w / "student.json")
    (w / "teacher.pt").write_bytes((tiny_teacher / "last.pt").read_bytes())
    run = TrainConfig(genotype=genotype.to_dict(), data_dir=str(cifar_root), epochs=1, batch_size=32,
                      train_subset=64, test_subset=50, precision="fp32", teacher=str(w / "teacher.pt"))
    train(run, w / "run", progress=False)
    for name in ("run-damaged", "run-junk-checkpoint"):
        shutil.copytree(w / "run", w / name)
    (w / "run-damaged" / "config.json").write_text("{not json")
    (w / "run-junk-checkpoint" / "checkpoint.pt").write_bytes(os.urandom(4096))
    shutil.copytree(w / "run", w / "run-changed-teacher")
    (w / "teacher-copy.pt").write_bytes((w / "teacher.pt").read_bytes())
    changed = json.loads((w / "run-changed-teacher" / "config.json").read_text())
    changed["teacher"] = str(w / "teacher-copy.pt")
    (w / "run-changed-teacher" / "config.json").write_text(json.dumps(changed))
    payload = torch.load(w / "teacher-copy.pt", weights_only=True)
    payload["test_error_pct"] = -1.0  # the same architecture, another file
    torch.save(payload, w / "teacher-copy.pt")

    gray = dataclasses.replace(bs.get_backbone("resnet18"), in_channels=1, input_size=32)
    torch.save(bs.Genotype.uniform(gray).build().state_dict(), w / "gray.pth")  # a 1-channel stem
    torch.save(genotype.build(), w / "whole-module.pt")  # torch.save(model), not its state dict
    for name in ("mine", "tdir", "gdir"):  # folders of the user's own files, not blockswap runs
        (w / name).mkdir()
    shutil.copy(w / "teacher.pt", w / "mine" / "best.pt")
    shutil.copy(w / "teacher.pt", w / "tdir" / "last.pt")
    shutil.copy(w / "student.json", w / "gdir" / "final.json")
    (w / "stray-inputs").mkdir()
    (w / "stray-inputs" / "inputs.json").write_text("garbage{")
    (w / "binary-csv").mkdir()
    for name in ("search.json", "inputs.json"):
        shutil.copy(w / "search" / name, w / "binary-csv" / name)
    (w / "binary-csv" / "candidates.csv").write_bytes(bytes(range(128, 256)) * 3)
    (w / "samples-text").mkdir()
    bs.Genotype.uniform(bs.get_backbone("wrn-10-1", 1)).save(w / "one-class.json")
    (w / "samples-text" / "results.csv").write_text("index,genotype,test_error_pct\n0,Conv Conv Conv,all-Conv\n")
    torch.jit.save(torch.jit.trace(genotype.build().eval(), torch.randn(2, 3, 32, 32)), w / "exported.pt")
    broken = torch.load(w / "teacher.pt", weights_only=True)
    nan_at = next(v for k, v in broken["state_dict"].items() if k.endswith("weight"))
    nan_at[(0,) * nan_at.dim()] = float("nan")
    torch.save(broken, w / "teacher-nan.pt")
    (w / "junk.pt").write_bytes(os.urandom(2048))
    torch.save(genotype.build().state_dict(), w / "weights-only.pt")
    (w / "binary.csv").write_bytes(os.urandom(512))
    (w / "bad.json").write_text("{")
    (w / "list.json").write_text("[1, 2, 3]")
    legacy = {"family": "wrn", "width": 1, "num_classes": 10, "blocks": ["Conv"] * 3}
    (w / "depth-fraction.json").write_text(json.dumps({**legacy, "depth": 16.7}))
    (w / "depth-huge.json").write_text(json.dumps({**legacy, "depth": 1e300}))
    (w / "unknown-block.json").write_text(json.dumps({**genotype.to_dict(), "blocks": ["Conv", "Conv9", "Conv"]}))
    (w / "one-row.csv").write_text(",index,convs,fisher\n0,0,\"['Conv', 'Conv', 'Conv']\",0.0\n")
    (w / "afile").write_text("a file, not a folder\n")
    (w / "plugin_raises.py").write_text("raise RuntimeError('broken plugin')\n")
    _batches(w / "evil" / "cifar-10-batches-py",
             {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "x": _Payload(w / "pwned")})
    _batches(w / "wrongtype" / "cifar-10-batches-py", [1, 2, 3])
    _batches(w / "wrongshape" / "cifar-10-batches-py", {"data": np.zeros((2, 5), np.uint8), "labels": [0, 1]})
    return {"w": w, "cifar": cifar_root, "teacher": w / "teacher.pt"}


# (id, argv, what the one line must say, folders that must stay as they are, paths that must not appear)
CASES: list[tuple[str, list[str], str, list[str], list[str]]] = [
    # numbers: parsed, finite, in range, integral where they must be
    ("budget-text", [*SEARCH, "--budget", "lots", "--out", "{new}"], "cannot parse budget 'lots'", [], ["{new}"]),
    ("budget-fraction", [*SEARCH, "--budget", "0.3", "--out", "{new}"], "must be a positive count", [], ["{new}"]),
    ("budget-overflow", [*SEARCH, "--budget", "1e400", "--out", "{new}"], "must be a positive count", [], ["{new}"]),
    ("budget-infinity", [*SEARCH, "--budget", "Infinity", "--out", "{new}"], "cannot parse budget", [], ["{new}"]),
    ("budget-negative", [*SEARCH, "--budget", "-5", "--out", "{new}"], "cannot parse budget", [], ["{new}"]),
    ("budget-unreachable", [*SEARCH, "--budget", "1k", "--out", "{new}"], "outside the reachable range", [],
     ["{new}"]),
    ("samples-zero", [*SEARCH, "--samples", "0", "--out", "{new}"], "samples must be a positive", [], ["{new}"]),
    ("samples-negative", [*SEARCH, "--samples", "-3", "--out", "{new}"], "samples must be a positive", [],
     ["{new}"]),
    ("samples-fraction", [*SEARCH, "--samples", "1.5", "--out", "{new}"], "invalid int value", [], ["{new}"]),
    ("batch-zero", [*SEARCH, "--batch-size", "0", "--out", "{new}"], "batch_size must be a positive", [],
     ["{new}"]),
    ("tolerance-zero", [*SEARCH, "--tolerance", "0", "--out", "{new}"], "tolerance must be a fraction", [],
     ["{new}"]),
    ("tolerance-nan", [*SEARCH, "--tolerance", "nan", "--out", "{new}"], "tolerance must be a fraction", [],
     ["{new}"]),
    ("tolerance-big", [*SEARCH, "--tolerance", "1.5", "--out", "{new}"], "tolerance must be a fraction", [],
     ["{new}"]),
    ("seed-negative", [*SEARCH, "--seed", "-1", "--out", "{new}"], "seed must be a whole number", [], ["{new}"]),
    ("seed-huge", [*SEARCH, "--seed", str(2**70), "--out", "{new}"], "seed must be a whole number", [], ["{new}"]),
    ("seed-fraction", [*SEARCH, "--seed", "1.5", "--out", "{new}"], "invalid int value", [], ["{new}"]),
    ("workers-zero", [*SEARCH, "--workers", "0", "--out", "{new}"], "must be a positive integer", [], ["{new}"]),
    ("workers-too-many", [*SEARCH, "--workers", "1000", "--out", "{new}"], "exceeds the", [], ["{new}"]),
    ("model-unknown", [*SEARCH, "--model", "vgg", "--out", "{new}"], "unknown model 'vgg'", [], ["{new}"]),
    ("model-depth", [*SEARCH, "--model", "wrn-17-2", "--out", "{new}"], "depth must be 6n+4", [], ["{new}"]),
    ("model-resnet20", [*SEARCH, "--model", "resnet20", "--out", "{new}"], "ResNet depth must be one of", [],
     ["{new}"]),
    ("scorer-unknown", [*SEARCH, "--scorer", "magic", "--out", "{new}"], "invalid choice: 'magic'", [], ["{new}"]),
    ("scorer-setting-form", [*SEARCH, "--scorer-setting", "nokey", "--out", "{new}"], "expected KEY=VALUE", [],
     ["{new}"]),
    ("scorer-setting-unknown", [*SEARCH, "--scorer-setting", "bogus=1", "--out", "{new}"], "does not take settings",
     [], ["{new}"]),
    ("palette-unknown", [*SEARCH, "--palette", "Conv,Nope", "--out", "{new}"], "unknown block type 'Nope'", [],
     ["{new}"]),
    ("palette-empty", [*SEARCH, "--palette", ",", "--out", "{new}"], "at least one block type", [], ["{new}"]),
    ("device-cuda", [*SEARCH, "--device", "cuda", "--out", "{new}"], "CUDA is not available", [], ["{new}"]),
    ("device-bad", [*SEARCH, "--device", "banana", "--out", "{new}"], "invalid device 'banana'", [], ["{new}"]),
    ("device-mps", [*SEARCH, "--device", "mps", "--out", "{new}"], "runs on cpu or cuda", [], ["{new}"]),
    ("device-cuda-index", [*SEARCH, "--device", "cuda:7", "--out", "{new}"], "this machine has: cpu", [],
     ["{new}"]),
    ("out-empty", [*SEARCH, "--out", ""], "argument --out: is empty", [], []),
    ("stem-gray-on-rgb", [*SEARCH, "--model", "{w}/gray.pth", "--budget", "3M", "--data-dir", "{cifar}", "--out",
                          "{new}"], "takes 1-channel images but", [], ["{new}"]),
    ("teacher-gray", [*STUDENT, "--genotype", "resnet18", "--teacher", "{w}/gray.pth", "--out", "{new}"],
     "takes 1-channel images", [], ["{new}"]),
    ("teacher-nan", [*STUDENT, *GENOTYPE, "--teacher", "{w}/teacher-nan.pt", "--out", "{new}"],
     "teacher-nan.pt holds NaN or infinite values in", [], ["{new}"]),
    ("teacher-whole-module", [*STUDENT, *GENOTYPE, "--teacher", "{w}/whole-module.pt", "--out", "{new}"],
     "torch.save(model.state_dict(), path)", [], ["{new}"]),
    ("eval-export", ["eval", "--checkpoint", "{w}/exported.pt", "--data-dir", "{cifar}"], "is a TorchScript export",
     [], []),
    ("export-over-its-weights", ["export", "--checkpoint", "{w}/teacher.pt", "--format", "torchscript", "--out",
                                 "{w}/teacher.pt"], "is the weight file being exported", ["{w}/teacher.pt"], []),
    ("export-over-a-run", ["export", "--checkpoint", "{teacher}", "--format", "torchscript", "--out",
                           "{w}/run/last.pt"], "exists; name a new file, or pass --force", ["{w}/run"], []),
    # places: files where folders belong, unwritable or impossible paths, a batch the data cannot fill
    ("out-is-file", [*SEARCH, "--out", "{w}/afile"], "is a file", ["{w}/afile"], []),
    ("out-in-proc", [*SEARCH, "--out", "/proc/blockswap-test/out"], "/proc/blockswap-test", [], []),
    ("out-name-too-long", [*SEARCH, "--out", "{w}/" + "x" * 300], "File name too long", [], []),
    ("data-dir-is-file", [*SEARCH, "--data-dir", "{w}/afile", "--out", "{new}"], "is a file", ["{w}/afile"],
     ["{new}"]),
    ("data-missing", [*SEARCH, "--data-dir", "{w}/nodata", "--out", "{new}"], "could not download CIFAR-10", [],
     ["{new}"]),
    ("batch-larger-than-data", [*SEARCH, "--batch-size", "5000", "--out", "{new}"], "exceeds the 1000 images", [],
     ["{new}"]),
    # data files never run code
    ("data-payload", [*SEARCH, "--data-dir", "{w}/evil", "--out", "{new}"], "never holds; not loaded", [],
     ["{new}", "{w}/pwned"]),
    ("data-wrong-type", [*SEARCH, "--data-dir", "{w}/wrongtype", "--out", "{new}"], "cannot read CIFAR-10 batch",
     [], ["{new}"]),
    ("data-wrong-shape", [*SEARCH, "--data-dir", "{w}/wrongshape", "--out", "{new}"], "expected uint8 N x 3072",
     [], ["{new}"]),
    # output folders that hold something else
    ("search-other-seed", [*SEARCH, "--seed", "1", "--out", "{w}/search"], "seed: 0 -> 1", ["{w}/search"], []),
    ("search-other-scorer", [*SEARCH, "--scorer", "reference", "--out", "{w}/search"], "scorer: 'fast' -> 'reference'",
     ["{w}/search"], []),
    ("search-damaged-record", [*SEARCH, "--out", "{w}/damaged"], "not a readable search record", ["{w}/damaged"], []),
    ("search-edited-row", [*SEARCH, "--out", "{w}/edited"], "edited by hand", ["{w}/edited"], []),
    ("search-duplicated-row", [*SEARCH, "--out", "{w}/duplicated"], "appears twice", ["{w}/duplicated"], []),
    ("search-garbled-row", [*SEARCH, "--out", "{w}/garbled"], "malformed candidate row", ["{w}/garbled"], []),
    ("search-rows-without-record", [*SEARCH, "--out", "{w}/orphan"], "did not write (candidates.csv) and no "
     "search.json", ["{w}/orphan"], []),
    ("plugin-missing", ["--plugin", "{w}/nope.py", "info", "wrn-10-1"], "plugin file not found", [], []),
    ("plugin-unimportable", ["--plugin", "no_such_module_xyz", "info", "wrn-10-1"], "cannot import plugin", [], []),
    ("plugin-raises", ["--plugin", "{w}/plugin_raises.py", "info", "wrn-10-1"],
     "plugin_raises.py failed while importing: RuntimeError: broken plugin", [], []),
    ("command-unknown", ["frobnicate"], "invalid choice: 'frobnicate'", [], []),
    # genotype files
    ("info-missing", ["info", "{w}/missing.json"], "not found", [], []),
    ("info-bad-json", ["info", "{w}/bad.json"], "not valid JSON", [], []),
    ("info-list-json", ["info", "{w}/list.json"], "must be a JSON object", [], []),
    ("info-binary-csv", ["info", "{w}/binary.csv"], "not a readable genotype CSV", [], []),
    ("info-depth-fraction", ["info", "{w}/depth-fraction.json"], "'depth' must be a whole number", [], []),
    ("info-depth-huge", ["info", "{w}/depth-huge.json"], "WRN depth must be 6n+4", [], []),
    ("info-unknown-block", ["info", "{w}/unknown-block.json"], "unknown block type 'Conv9'", [], []),
    ("info-neither", ["info", "frob"], "neither a genotype file nor a model name", [], []),
    ("info-row", ["info", "{w}/one-row.csv", "--model", "wrn-10-1", "--row", "5"], "row 5 requested", [], []),
    # weight files of the wrong kind
    ("teacher-junk", [*STUDENT, *GENOTYPE, "--teacher", "{w}/junk.pt", "--out", "{new}"], "as a weight file", [],
     ["{new}"]),
    ("teacher-weights-only", [*STUDENT, *GENOTYPE, "--teacher", "{w}/weights-only.pt", "--out", "{new}"],
     "does not record its architecture", [], ["{new}"]),
    ("teacher-is-genotype", [*STUDENT, *GENOTYPE, "--teacher", "{w}/student.json", "--out", "{new}"],
     "as a weight file", [], ["{new}"]),
    ("teacher-missing", [*STUDENT, *GENOTYPE, "--teacher", "{w}/nope.pt", "--out", "{new}"], "not found", [],
     ["{new}"]),
    ("eval-junk", ["eval", "--checkpoint", "{w}/junk.pt", "--data-dir", "{cifar}"], "as a weight file", [], []),
    ("eval-weights-only", ["eval", "--checkpoint", "{w}/weights-only.pt", "--data-dir", "{cifar}"],
     "does not record its architecture", [], []),  # and advises no flag eval lacks: see the test below
    ("eval-missing", ["eval", "--checkpoint", "{w}/nope.pt", "--data-dir", "{cifar}"], "not found", [], []),
    ("eval-min-time-zero", ["eval", "--checkpoint", "{w}/run/last.pt", "--data-dir", "{cifar}", "--min-time", "0"],
     "must be a positive number of seconds", [], []),
    ("eval-latency-batch-junk", ["eval", "--checkpoint", "{w}/run/last.pt", "--data-dir", "{cifar}",
                                 "--latency-batch-sizes", "1,x"], "comma-separated whole numbers", [], []),
    ("eval-latency-threads-zero", ["eval", "--checkpoint", "{w}/run/last.pt", "--data-dir", "{cifar}",
                                   "--latency-threads", "0"], "positive whole numbers", [], []),
    ("search-no-budget", ["search", "--out", "{new}"], "at least one budget", [], ["{new}"]),
    ("search-mac-budget-unreachable", ["search", "--budget-macs", "1k", "--out", "{new}"],
     "MAC budget 1.0K MACs (1,000 MACs) is outside the reachable range for wrn-40-2: 13,395,200 MACs", [],
     ["{new}"]),
    ("search-mac-budget-junk", ["search", "--budget-macs", "lots", "--out", "{new}"], "cannot parse MAC budget",
     [], ["{new}"]),
    ("search-ms-junk", ["search", "--budget-ms", "-3", "--out", "{new}"], "positive number of milliseconds", [],
     ["{new}"]),
    ("search-params-and-macs-disjoint", ["search", "--budget", "200k", "--budget-macs", "300M", "--out", "{new}"],
     "inside every window at once", [], ["{new}"]),
    ("eval-data-is-file", ["eval", "--checkpoint", "{w}/run/last.pt", "--data-dir", "{w}/afile"], "is a file",
     ["{w}/afile"], []),
    # training settings
    ("beta-nan", [*STUDENT, *GENOTYPE, *WITH_TEACHER, "--beta", "nan", "--out", "{new}"], "beta must be", [],
     ["{new}"]),
    ("beta-infinite", [*STUDENT, *GENOTYPE, *WITH_TEACHER, "--beta", "inf", "--out", "{new}"], "beta must be", [],
     ["{new}"]),
    ("kd-alpha", [*STUDENT, *GENOTYPE, *WITH_TEACHER, "--kd-alpha", "2", "--out", "{new}"], "KD alpha", [],
     ["{new}"]),
    ("kd-temperature-nan", [*STUDENT, *GENOTYPE, *WITH_TEACHER, "--kd-temperature", "nan", "--out", "{new}"],
     "KD temperature must be positive", [], ["{new}"]),
    ("cutout-negative", [*STUDENT, *GENOTYPE, "--no-teacher", "--cutout", "-5", "--out", "{new}"],
     "cutout must be", [], ["{new}"]),
    ("cutout-huge", [*STUDENT, *GENOTYPE, "--no-teacher", "--cutout", "100", "--out", "{new}"], "cutout must be",
     [], ["{new}"]),
    ("momentum-nan", [*STUDENT, *GENOTYPE, "--no-teacher", "--momentum", "nan", "--out", "{new}"],
     "momentum must be in [0, 1)", [], ["{new}"]),
    ("lr-zero", [*STUDENT, *GENOTYPE, "--no-teacher", "--lr", "0", "--out", "{new}"], "lr must be positive", [],
     ["{new}"]),
    ("epochs-fraction", [*STUDENT, *GENOTYPE, "--no-teacher", "--epochs", "1.5", "--out", "{new}"],
     "invalid int value", [], ["{new}"]),
    ("train-seed-huge", [*STUDENT, *GENOTYPE, "--no-teacher", "--seed", str(2**70), "--out", "{new}"],
     "seed must be a whole number", [], ["{new}"]),
    ("train-batch-larger-than-subset", [*STUDENT, *GENOTYPE, "--no-teacher", "--batch-size", "5000", "--out",
                                        "{new}"], "cannot fill one batch", [], ["{new}"]),
    ("random-without-budget", [*STUDENT, "--random", *WITH_TEACHER, "--out", "{new}"], "needs --budget", [],
     ["{new}"]),
    ("all-unknown-type", [*STUDENT, "--all", "Nope", *WITH_TEACHER, "--out", "{new}"], "unknown block type 'Nope'",
     [], ["{new}"]),
    # training folders that hold something else
    ("run-exists", [*TEACHER, "--out", "{w}/run"], "pass --resume", ["{w}/run"], []),
    ("run-other-settings", [*STUDENT, *GENOTYPE, *WITH_TEACHER, "--lr", "0.05", "--resume", "--out", "{w}/run"],
     "holds a different run (lr: 0.1 -> 0.05)", ["{w}/run"], []),
    # never written over: the user's own files in --out, the weights or genotype a command reads
    ("train-out-user-files", [*TEACHER, "--out", "{w}/mine"], "holds files this run did not write (best.pt)",
     ["{w}/mine"], []),
    ("student-out-teacher-folder", [*STUDENT, *GENOTYPE, "--teacher", "{w}/tdir/last.pt", "--out", "{w}/tdir"],
     "holds files this run did not write (last.pt)", ["{w}/tdir"], []),
    ("student-out-genotype-folder", [*STUDENT, "--genotype", "{w}/gdir/final.json", *WITH_TEACHER, "--out",
                                     "{w}/gdir"], "holds files this run did not write (final.json)", ["{w}/gdir"], []),
    ("search-out-run-folder", [*SEARCH, "--out", "{w}/run"], "holds files this search did not write", ["{w}/run"], []),
    ("search-out-stray-inputs", [*SEARCH, "--out", "{w}/stray-inputs"], "did not write (inputs.json)",
     ["{w}/stray-inputs"], []),
    ("study-out-user-files", ["study", "rank", "--model", "wrn-10-1", "--budget", "40k", "--candidates", "3",
                              "--proxies", "params", "--epochs", "1", "--data-dir", "{cifar}", "--out", "{w}/mine"],
     "holds files this study did not write", ["{w}/mine"], []),
    ("eval-checkpoint-folder", ["eval", "--checkpoint", "{w}/run", "--data-dir", "{cifar}"],
     "is a folder; name a weight file in it", [], []),
    ("teacher-folder", [*STUDENT, *GENOTYPE, "--teacher", "{w}/run", "--out", "{new}"], "is a folder", [], ["{new}"]),
    ("protocols-search-folder", ["study", "protocols", "{w}/search", "--out", "{new}"],
     "is not a ranking study folder", ["{w}/search"], ["{new}"]),
    ("samples-too-many", [*SEARCH, "--samples", "2000000", "--out", "{new}"], "ask for fewer samples", [], ["{new}"]),
    ("momentum-above-one", [*TEACHER, "--momentum", "1.5", "--out", "{new}"], "1 or more makes SGD diverge", [],
     ["{new}"]),
    ("one-output-genotype", ["train", "teacher", "--genotype", "{w}/one-class.json", *TEACHER[4:], "--out", "{new}"],
     "a network with one output cannot learn to classify", [], ["{new}"]),
    ("info-plot-over-weights", ["info", "wrn-10-1", "--plot", "{w}/teacher.pt"], "exists and is not a PNG",
     ["{w}/teacher.pt"], []),
    ("info-plot-over-genotype", ["info", "{w}/student.json", "--plot", "{w}/student.json"], "is not a PNG",
     ["{w}/student.json"], []),
    ("search-binary-candidates", [*SEARCH, "--out", "{w}/binary-csv"], "is not a candidates table (not text)",
     ["{w}/binary-csv"], []),
    ("samples-not-a-folder", ["study", "samples", "--study", "{w}/afile"], "is not a folder", ["{w}/afile"], []),
    ("samples-text-error", ["study", "samples", "--study", "{w}/samples-text"], "a cell that should be a number",
     ["{w}/samples-text"], []),
    ("train-subset-above-data", [*STUDENT, *GENOTYPE, "--no-teacher", "--train-subset", "60000", "--out", "{new}"],
     "--train-subset 60000 asks for more than the 50000 images", [], ["{new}"]),
    ("eval-test-subset-above-data", ["eval", "--checkpoint", "{w}/run/last.pt", "--data-dir", "{cifar}",
                                     "--test-subset", "10001"], "--test-subset 10001 asks for more than the 10000", [],
     []),
    ("study-subset-above-data", ["study", "rank", "--model", "wrn-10-1", "--budget", "40k", "--candidates", "3",
                                 "--proxies", "params", "--epochs", "1", "--train-subset", "50001", "--data-dir",
                                 "{cifar}", "--out", "{new}"], "asks for more than the 50000", [], ["{new}"]),
    ("resume-nothing", [*STUDENT, *GENOTYPE, "--no-teacher", "--resume", "--out", "{new}"],
     "holds no run to continue (no config.json); leave out --resume", [], ["{new}"]),
    ("eval-latency-threads-above-cores", ["eval", "--checkpoint", "{w}/run/last.pt", "--data-dir", "{cifar}",
                                          "--latency-threads", "999"], "latency threads 999 is more than the", [], []),
    ("latency-threads-above-cores", ["latency", "--model", "wrn-10-1", "--palette", "Conv", "--threads", "999"],
     "latency threads 999 is more than the", [], []),
    ("export-weights-only", ["export", "--checkpoint", "{w}/weights-only.pt", "--format", "torchscript", "--out",
                             "{w}/exported-new.pt"], "save it as blockswap train does", [], ["{w}/exported-new.pt"]),
    ("run-damaged-config", [*STUDENT, *GENOTYPE, *WITH_TEACHER, "--resume", "--out", "{w}/run-damaged"],
     "not a readable run record", ["{w}/run-damaged"], []),
    ("run-junk-checkpoint", [*STUDENT, *GENOTYPE, *WITH_TEACHER, "--resume", "--out", "{w}/run-junk-checkpoint"],
     "as a weight file", ["{w}/run-junk-checkpoint"], []),
    ("run-changed-teacher", [*STUDENT, *GENOTYPE, "--teacher", "{w}/teacher-copy.pt", "--resume", "--out",
                             "{w}/run-changed-teacher"], "teacher_sha256", ["{w}/run-changed-teacher"], []),
]


# Rows that also start a fresh interpreter: one per command, the plugin import and the crafted pickle.
FRESH = {"budget-text", "plugin-raises", "data-payload", "info-missing", "teacher-junk", "eval-junk"}


def _fill(text: str, world: dict[str, Path]) -> str:
    return text.format(**{k: str(v) for k, v in world.items()})


def _snapshot(folder: Path) -> dict[str, str]:
    if folder.is_file():
        return {folder.name: hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli_in_child(argv: list[str], env: dict[str, str], out: str, err: str) -> None:
    """A forked process's whole life: stdin empty, stdout/stderr to files, the given environment, the command."""
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    os.environ.clear()
    os.environ.update(env)
    from blockswap.cli import main

    sys.exit(main(argv))


def _forked_cli(argv: list[str], env: dict[str, str], folder: Path) -> tuple[int, str]:
    """(exit code, stderr) of the command in a process forked from a server that has blockswap.cli imported."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["blockswap.cli"])
    folder.mkdir(parents=True, exist_ok=True)
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    process = context.Process(target=_cli_in_child, args=(argv, env, str(out), str(err)))
    process.start()
    process.join(timeout=300)
    if process.is_alive():
        process.kill()
        pytest.fail(f"blockswap {' '.join(argv)} did not end in 300 s")
    return process.exitcode, err.read_text()


def _run_row(world: dict[str, Path], case: str, argv: list[str], fresh: bool) -> tuple[int, str]:
    """Run one row's command, forked or as a fresh `python -m blockswap`; its exit code and stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1",
           "BLOCKSWAP_CIFAR10_URL": (world["w"] / "no-mirror.tar.gz").as_uri()}
    env.pop("BLOCKSWAP_DEBUG", None)
    args = [_fill(a, world) for a in argv]
    if not fresh:
        return _forked_cli(args, env, world["w"] / "streams" / case)
    done = subprocess.run([sys.executable, "-m", "blockswap", *args], env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    return done.returncode, done.stderr


def test_the_table_covers_every_class_with_at_least_60_rows() -> None:
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case,argv,message,unchanged,absent", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_code_2(world: dict[str, Path], case: str, argv: list[str], message: str,
                                               unchanged: list[str], absent: list[str]) -> None:
    world = {**world, "new": world["w"] / f"new-{case}"}  # a fresh --out per row: one row's leftovers hit no other
    before = {path: _snapshot(Path(_fill(path, world))) for path in unchanged}
    code, stderr = _run_row(world, case, argv, fresh=case in FRESH)
    lines = stderr.strip().splitlines()
    assert code == 2, stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert lines[0].startswith("blockswap") and "error: " in lines[0] and message in lines[0], lines[0]
    for path in unchanged:
        assert _snapshot(Path(_fill(path, world))) == before[path], f"{path} changed"
    for path in absent:
        assert not Path(_fill(path, world)).exists(), f"{path} was created"


def test_advice_for_unnamed_weights_names_only_what_the_command_has(world: dict[str, Path]) -> None:
    """Training is told to name the architecture with --teacher-model; eval and export, which have no such flag, to
    save the genotype with the weights."""
    for argv, advice in ((["eval", "--checkpoint", "{w}/weights-only.pt", "--data-dir", "{cifar}"], "'genotype'"),
                         ([*STUDENT, *GENOTYPE, "--teacher", "{w}/weights-only.pt", "--out", "{new}"],
                          "--teacher-model")):
        code, stderr = _run_row({**world, "new": world["w"] / "new-advice"}, "advice", argv, fresh=False)
        assert code == 2 and advice in stderr
        assert ("--teacher-model" in stderr) == (argv[0] == "train"), stderr
