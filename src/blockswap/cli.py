"""The `blockswap` command line: fills the library's config dataclasses from argv.

Options are derived from the config dataclasses' fields (`blockswap.util.options`),
so their defaults and help live in one place. `--plugin MODULE_OR_FILE` (or
$BLOCKSWAP_PLUGINS, comma-separated) imports a user's module first, so the
backbones, block types and scorers it registers work in every command.
Nothing imports this module. Bad input ends with a one-line reason on stderr
and exit code 2, never a traceback and no warning above it: `--debug` (or BLOCKSWAP_DEBUG=1) shows both.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import sys
import threading
import typing
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch

from .data.imagefolder import ClassCountError
from .deploy.evaluate import EvalConfig, evaluate_checkpoint
from .deploy.export import FORMATS, export_checkpoint
from .search.run import SearchConfig, run_search
from .space.backbones import get_backbone, registered_layout
from .space.blocks import block_type
from .space.genotype import Genotype, load_genotype
from .space.latency import DEFAULT_MIN_TIME, check_latency_table, latency_table
from .space.sampling import uniform_genotypes
from .study.compare import CompareConfig, run_compare
from .study.config import StudyConfig, require_extra
from .study.mixing import MixingConfig, run_mixing
from .study.placement import PlacementConfig, run_placement, study_goodbad
from .study.protocols import compare_protocols
from .study.report import parse_sizes, study_samples
from .study.run import run_study
from .train.baselines import student_genotype
from .train.pruning import PRUNE_METHODS
from .train.training import RECIPES, TrainConfig, recipe_defaults, train
from .util.counts import format_count, parse_budget
from .util.distributed import setup_distributed
from .util.errors import BlockSwapError
from .util.options import add_options, argparse_type, comma_separated, positive_seconds, values
from .util.plugins import PLUGINS_ENV, env_plugins, load_plugin
from .util.system import usable_cores
from .weights.checkpoint import read_checkpoint
from .weights.resnet_import import is_weight_file
from .weights.teachers import load_network, model_backbone

__all__ = ["main", "build_parser", "load_plugin"]

DEBUG_ENV = "BLOCKSWAP_DEBUG"


def _setting(text: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as JSON where it parses (true, 3, 0.5, "x"), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def _out_path(text: str) -> Path:
    """An --out path; an empty one (which would mean the current folder) is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; name a folder or file")
    return Path(text)


def _device(text: str | None) -> torch.device:
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    here = "cpu" + (f", cuda:0..{torch.cuda.device_count() - 1}" if torch.cuda.is_available() else "")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise BlockSwapError(f"invalid device {text!r}; this machine has: {here}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BlockSwapError(f"device {text!r} requested but CUDA is not available; this machine has: {here}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BlockSwapError(f"device {text!r} does not exist; this machine has: {here}")
    if device.type not in ("cpu", "cuda"):
        raise BlockSwapError(f"device {text!r}: blockswap runs on cpu or cuda; this machine has: {here}")
    return device


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="sample budget-feasible students and rank them by a scorer (Fisher potential)",
                       description="Sample --samples genotypes within the budget window, score each with --scorer "
                       "(default: Fisher potential) on one seeded minibatch, write candidates.csv and best.json "
                       "to --out.")
    add_options(p, SearchConfig)
    p.add_argument("--scorer-setting", dest="scorer_settings", type=_setting, action="append", default=[],
                   metavar="KEY=VALUE", help="a keyword setting of the scorer (repeatable), recorded in search.json")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="scoring processes per rank (default: one single-threaded process per core on CPU, 1 on CUDA)")
    _add_resumable_options(p)
    p.set_defaults(func=_cmd_search)


def _add_resumable_options(p: argparse.ArgumentParser) -> None:
    """--device, --out and --quiet of the commands that resume in their output folder (search, study rank)."""
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--out", required=True, type=_out_path, help="output folder; rerun with the same one to resume")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _default_workers(device: torch.device) -> int:
    """One single-threaded scoring process per core torch would use here; one on CUDA."""
    return 1 if device.type == "cuda" else max(1, torch.get_num_threads())


def _cmd_search(args: argparse.Namespace) -> int:
    config = SearchConfig(**values(args, SearchConfig), scorer_settings=dict(args.scorer_settings))
    cores = usable_cores()
    if args.workers is not None and args.workers > cores:
        raise BlockSwapError(f"--workers {args.workers} exceeds the {cores} CPU cores this process may use; each "
                             "worker holds a candidate's activations (about 2 GB for WRN-40-2 at batch 128)")
    place = setup_distributed(_device(args.device))
    try:
        workers = args.workers or _default_workers(place.device)
        result = run_search(config, args.out, device=place.device, progress=place.is_main and not args.quiet,
                            workers=workers, group=place.group)
    finally:
        place.close()
    if not place.is_main:
        return 0
    best = result.best
    screened = (f"screened {result.screened_now} new on {config.screen_batch} images, then "
                if config.screens else "")
    print(f"{screened}scored {result.scored_now} new of {len(result.candidates)} candidates in {result.seconds:.1f} s "
          f"({config.model}, budget {config.budgets()})")
    latency = f"  {best.latency_ms:.3g} ms predicted" if best.latency_ms is not None else ""
    print(f"best: #{best.index}  params {best.params:,}  MACs {format_count(best.macs)}{latency}  "
          f"{config.scorer} score {best.score:.6g}")
    print(f"      {' '.join(best.genotype.blocks)}")
    if result.non_finite:
        print(f"{result.non_finite} candidate(s) scored NaN or infinity: kept in candidates.csv, never chosen")
    print(f"wrote {result.out_dir / 'candidates.csv'} and {result.out_dir / 'best.json'}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters, MACs and per-block table of a genotype",
                       description="GENOTYPE is a genotype JSON, a published-format CSV, or a model name "
                       "(wrn-40-2, resnet34, resnet50, ...) for its teacher (every block the teacher's own type).")
    p.add_argument("genotype", help="genotype file (.json or .csv), model name, or a ResNet weight file (.pt/.pth)")
    p.add_argument("--model", default=None, help="backbone for a CSV genotype (default wrn-40-2)")
    _add_num_classes(p)
    p.add_argument("--row", type=int, default=0, help="data row of a multi-row CSV (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="also draw the blocks as bars (height = body parameters, colour = type family, stages "
                   "marked) to this PNG; needs matplotlib (pip install 'blockswap[study]')")
    p.set_defaults(func=_cmd_info)


def _add_num_classes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-classes", type=_positive_int, default=None,
                   help="classes of the network's head (default: the model's own, 10 for wrn-D-K, 1000 for the "
                   "ImageNet ResNets)")


def _resolve_genotype(text: str, model: str | None, row: int, num_classes: int | None = None) -> Genotype:
    """A genotype file (JSON, or a published CSV on `model`'s backbone), or a model name's teacher network;
    `num_classes` gives a model name or a CSV's backbone that many classes."""
    path = Path(text)
    backbone = get_backbone(model, num_classes) if model else None
    if is_weight_file(text):
        return Genotype.uniform(model_backbone(text, num_classes))
    if path.suffix.lower() in (".json", ".csv") or path.exists():
        if backbone is None and num_classes is not None and path.suffix.lower() == ".csv":
            backbone = get_backbone("wrn-40-2", num_classes)
        genotype = load_genotype(path, backbone=backbone, row=row)
        if num_classes is not None and genotype.backbone.num_classes != num_classes:
            raise BlockSwapError(f"{path} is a genotype with {genotype.backbone.num_classes} classes, not the "
                                 f"{num_classes} --num-classes asks for")
        return genotype
    try:
        return Genotype.uniform(get_backbone(text, num_classes))
    except BlockSwapError:
        raise BlockSwapError(f"{text!r} is neither a genotype file nor a model name") from None


def _check_plot_path(path: Path) -> None:
    """Refuse a --plot path that holds anything but an earlier PNG (a weight file, the genotype being read)."""
    if path.is_dir():
        raise BlockSwapError(f"--plot {path} is a folder; name a .png file")
    if path.exists():
        with path.open("rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                raise BlockSwapError(f"--plot {path} exists and is not a PNG; name a new file (only an earlier "
                                     "PNG is replaced)")


def _cmd_info(args: argparse.Namespace) -> int:
    g = _resolve_genotype(args.genotype, args.model, args.row, args.num_classes)
    post = g.backbone.post_activation
    rows = []
    for i, (name, shape, stage) in enumerate(zip(g.blocks, g.backbone.block_shapes(), g.backbone.block_stages())):
        t = block_type(name)
        rows.append({"index": i, "stage": stage, "type": name, "c_in": shape.c_in, "c_out": shape.c_out,
                     "stride": shape.stride, "body_params": t.params(shape.c_in, shape.c_out, shape.stride, post),
                     "body_macs": t.macs(shape.c_in, shape.c_out, shape.stride, shape.size_in)})
    if args.plot is not None:
        from .space.drawing import plot_genotype

        _check_plot_path(args.plot)
        plot_genotype(g, args.plot)
    if args.json:
        plot = {"plot": str(args.plot)} if args.plot is not None else {}
        print(json.dumps({**g.to_dict(), "params": g.params(), "macs": g.macs(), "per_block": rows, **plot}))
        return 0
    print(f"{g.backbone.name}, {g.backbone.num_classes} classes, input {g.backbone.input_size}x{g.backbone.input_size}")
    width = max(9, *(len(r["type"]) for r in rows))
    print(f"{'#':>3} {'stage':>5} {'type':<{width}} {'channels':>11} {'s':>2} {'body params':>12} {'body MACs':>12}")
    for r in rows:
        ch = f"{r['c_in']}->{r['c_out']}"
        print(f"{r['index']:>3} {r['stage']:>5} {r['type']:<{width}} {ch:>11} {r['stride']:>2} "
              f"{r['body_params']:>12,} {r['body_macs']:>12,}")
    print(f"params {g.params():,} ({format_count(g.params())})   MACs {g.macs():,} ({format_count(g.macs())})")
    if args.plot is not None:
        print(f"wrote {args.plot}")
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options of `train teacher` and `train student` that are about this invocation, not the run's settings."""
    p.add_argument("--out", required=True, type=_out_path, help="output folder of this run")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_loader_workers(p)


def _add_loader_workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loader-workers", type=_non_negative_int, default=None,
                   help="processes decoding an image folder's images (0: in the main process; default: one per "
                   "core, at most 8); changes the speed, never the batches")


def _add_recipe(p: argparse.ArgumentParser, recipe: str) -> None:
    p.add_argument("--recipe", choices=list(RECIPES), default=recipe,
                   help="the defaults of every training setting: cifar (SPEC section 5: 200 epochs, batch 128, "
                   "wd 5e-4, cosine, Cutout, beta 1000) or imagenet (100 epochs, batch 256, wd 1e-4, lr/10 every 30 "
                   "epochs, no Cutout, beta 750); any setting given on the command line wins (default: cifar)")


def _add_train(sub: argparse._SubParsersAction, recipe: str) -> None:
    p = sub.add_parser("train", help="train a teacher, or a student with attention transfer",
                       description="Train on CIFAR-10 or an image folder with the paper's recipe (--recipe); writes "
                       "config.json, metrics.jsonl, checkpoint.pt, best.pt, last.pt and final.json to --out. "
                       "Works under torchrun.")
    kinds = p.add_subparsers(dest="kind", required=True)
    t = kinds.add_parser("teacher", help="train a network with cross-entropy",
                         description="Train any supported network with plain cross-entropy.")
    arch = t.add_mutually_exclusive_group(required=True)
    arch.add_argument("--model", help="the teacher network of a registered backbone, e.g. wrn-40-2 or resnet18")
    arch.add_argument("--genotype", help="genotype file (.json, or published .csv as WRN-40-2)")
    _add_num_classes(t)
    _add_recipe(t, recipe)
    add_options(t, TrainConfig, skip=("distill",), defaults=recipe_defaults(recipe))
    _add_run_options(t)
    t.set_defaults(func=_cmd_train)

    s = kinds.add_parser("student", help="train a student (or a baseline) with attention transfer",
                         description="The student is --genotype, a scaled WRN (--model), a single-blocktype network "
                         "(--all TYPE), a random budget-feasible genotype (--random --budget B), or the teacher "
                         "pruned to --budget non-zero parameters (--prune l1|snip). --all and --random use the "
                         "backbone of --model, else the teacher's.")
    arch = s.add_mutually_exclusive_group()
    arch.add_argument("--genotype", help="genotype file, e.g. best.json from blockswap search")
    arch.add_argument("--all", metavar="TYPE", help="every block the same registered type, e.g. G4B2")
    arch.add_argument("--random", action="store_true", help="a random genotype within --budget (seeded by --seed)")
    arch.add_argument("--prune", choices=PRUNE_METHODS,
                      help="prune the teacher to --budget: l1 (magnitude of its trained weights) or snip (at init)")
    s.add_argument("--model", help="student backbone, alone a depth/width baseline (e.g. wrn-16-2)")
    s.add_argument("--budget", type=argparse_type(parse_budget),
                   help="parameter budget for --random and --prune, e.g. 400k")
    teach = s.add_mutually_exclusive_group(required=True)
    teach.add_argument("--teacher", help="teacher weight file: last.pt of a teacher run, or your own ResNet's "
                       "weights (BasicBlock or Bottleneck, torchvision/timm layout, read from its shapes)")
    teach.add_argument("--no-teacher", action="store_true", help="cross-entropy only: what distillation adds")
    s.add_argument("--teacher-model", help="the teacher's architecture (model name or genotype file); "
                   "checked against the checkpoint, needed only for a bare state dict that is not a ResNet")
    _add_num_classes(s)
    _add_recipe(s, recipe)
    add_options(s, TrainConfig, defaults=recipe_defaults(recipe))
    _add_run_options(s)
    s.set_defaults(func=_cmd_train)


def _teacher_genotype(args: argparse.Namespace) -> Genotype | None:
    """The teacher's genotype from --teacher-model, else as the --teacher file records it or its weights show."""
    if args.teacher_model:
        return _resolve_genotype(args.teacher_model, None, 0, args.num_classes)
    if args.teacher is None:
        return None
    return load_network(args.teacher)[1]


def _check_baseline_flags(args: argparse.Namespace, has_teacher: bool) -> None:
    """Refuse a student the flags do not name, in the flags' words (the library checks again in its own)."""
    if args.budget is not None and not (args.random or args.prune):
        raise BlockSwapError("--budget applies to --random and --prune only")
    if (args.random or args.prune) and args.budget is None:
        raise BlockSwapError(f"--{'random' if args.random else 'prune'} needs --budget")
    if args.prune and args.model:
        raise BlockSwapError("--prune prunes the teacher's own network; --model does not apply")
    if args.prune and not has_teacher:
        raise BlockSwapError("--prune prunes the teacher: give --teacher, or --teacher-model with --no-teacher")
    if not (args.model or has_teacher):
        raise BlockSwapError("name the student: --genotype FILE, --model NAME, or a teacher to derive it from")
    if not (args.model or args.all or args.random or args.prune):
        raise BlockSwapError("name the student: --genotype, --model, --all, --random or --prune")


def _train_resume_hint(out: Path) -> str:
    """How to go on after an interrupted training run, from what its folder holds."""
    if (out / "checkpoint.pt").is_file():
        return f"add --resume to the same command to continue from {out / 'checkpoint.pt'}"
    if (out / "config.json").is_file():
        return "add --resume to the same command to continue (no epoch had finished: it starts again at epoch 1)"
    return "the run had not started; rerun the same command"


def _cmd_train(args: argparse.Namespace) -> int:
    if args.kind == "teacher":
        genotype = _resolve_genotype(args.genotype or args.model, None, 0, args.num_classes)
        config = TrainConfig(genotype=genotype, **values(args, TrainConfig, skip=("distill",)))
    else:
        teacher = _teacher_genotype(args)
        if args.genotype:
            genotype = _resolve_genotype(args.genotype, args.model, 0, args.num_classes)
        else:
            _check_baseline_flags(args, teacher is not None)
            genotype = student_genotype(teacher, model=args.model, all_type=args.all, random=args.random,
                                        prune=args.prune, budget=args.budget, seed=args.seed,
                                        num_classes=args.num_classes)
        config = TrainConfig(
            genotype=genotype, teacher=args.teacher,
            teacher_genotype=teacher if args.teacher and (args.teacher_model or "genotype" not in
                                                          read_checkpoint(args.teacher)) else None,
            prune=args.prune, prune_budget=args.budget if args.prune else None, **values(args, TrainConfig))
    config.validate()
    out = Path(args.out)
    if args.resume and not (out / "config.json").is_file():
        raise BlockSwapError(f"--resume: {out} holds no run to continue (no config.json); leave out --resume to "
                             "start one there")
    place = setup_distributed(_device(args.device))
    try:
        final = train(config, out, resume=args.resume, device=place.device, progress=not args.quiet,
                      group=place.group, loader_workers=args.loader_workers)
    except KeyboardInterrupt as e:
        print(f"blockswap: interrupted; {_train_resume_hint(out)}", file=sys.stderr)
        return _interrupted_code(e)
    finally:
        place.close()
    if not place.is_main:  # under torchrun, rank 0 reports
        return 0
    print(f"{final['model']}  test error {final['test_error_pct']:.2f}%  params {final['params']:,}  "
          f"MACs {format_count(final['macs'])}  {final['epochs']} epochs in {final['seconds']:.0f} s")
    print(f"wrote {args.out / 'final.json'}, {args.out / 'last.pt'}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="test error, params, MACs and latency of a trained network, as JSON",
                       description="Evaluate a weight file written by `blockswap train` (best.pt, last.pt or "
                       "checkpoint.pt) on the CIFAR-10 test set or an image folder's val/ split and time it on the "
                       "current device.")
    add_options(p, EvalConfig)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    _add_loader_workers(p)
    p.set_defaults(func=_cmd_eval)


def _add_min_time(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-time", type=argparse_type(positive_seconds), default=DEFAULT_MIN_TIME,
                   help="seconds each timing runs for after its warm-up; longer is steadier "
                   f"(default: {DEFAULT_MIN_TIME})")


def _cmd_eval(args: argparse.Namespace) -> int:
    config = EvalConfig(**values(args, EvalConfig))
    report = evaluate_checkpoint(config, _device(args.device), loader_workers=args.loader_workers)
    print(json.dumps(report.to_dict(), indent=2))
    return 0


_EXPORT_DEFAULTS = {name: p.default for name, p in inspect.signature(export_checkpoint).parameters.items()}


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a trained network as ONNX or TorchScript, checked against PyTorch",
                       description="Export the network of a weight file (a student, a teacher, or a bare ResNet "
                       "state dict) in eval mode on the CPU, run the written file (onnxruntime, or "
                       "torch.jit.load) on a seeded batch of another size than the export saw, and compare its "
                       "logits with PyTorch's. A difference above --tolerance exits with code 2 and keeps the file. "
                       "ONNX needs the export extra: pip install 'blockswap[export]'.")
    p.add_argument("--checkpoint", required=True, help="weight file")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx (dynamic batch axis, input 'images', "
                   "output 'logits') or torchscript (torch.jit.trace)")
    p.add_argument("--out", required=True, type=_out_path, help="file to write (its folder is created if missing); an "
                   "existing file is refused unless --force, the --checkpoint file always")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=_positive_int, default=_EXPORT_DEFAULTS["batch_size"],
                   help="images in the parity check; the export sees a batch of another size "
                   f"(default: {_EXPORT_DEFAULTS['batch_size']})")
    p.add_argument("--tolerance", type=float, default=_EXPORT_DEFAULTS["tolerance"],
                   help="largest absolute difference of the logits allowed "
                   f"(default: {_EXPORT_DEFAULTS['tolerance']})")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    report = export_checkpoint(args.checkpoint, args.format, args.out, batch_size=args.batch_size,
                               tolerance=args.tolerance, force=args.force)
    print(report.summary())
    return 0


def _add_latency(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("latency", help="measure (or show the cached) block latency table, and check it",
                       description="Time every block type at every slot of --model on the current device (once per "
                       "distinct slot shape; warm-up, median), cache the table per device, model, input size, batch "
                       "and threads, print it, and time --check sampled students whole against the sum the table "
                       "predicts. A search with --budget-ms uses the same table.")
    p.add_argument("--model", default="wrn-40-2",
                   help="a registered backbone or a ResNet weight file (default: wrn-40-2)")
    _add_num_classes(p)
    p.add_argument("--batch-size", type=_positive_int, default=1, help="batch size of every timing (default: 1)")
    p.add_argument("--threads", type=_positive_int, default=1, help="CPU threads of every timing (default: 1)")
    p.add_argument("--palette", type=comma_separated, default=None, metavar="NAMES",
                   help="comma-separated block types (default: the 23 published types)")
    p.add_argument("--check", type=_non_negative_int, default=5,
                   help="students timed whole (for 5x --min-time each) against the table's prediction: the "
                   "teacher, then students with uniformly drawn types (default: 5)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the checked students (default: 0)")
    _add_min_time(p)
    p.add_argument("--refresh", action="store_true", help="measure again even when a cached table exists")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_latency)


def _cmd_latency(args: argparse.Namespace) -> int:
    backbone = model_backbone(args.model, args.num_classes)
    palette = SearchConfig.named_palette(args.palette)
    device = _device(args.device)
    table, path = latency_table(backbone, palette.names, device, args.batch_size, args.threads, args.min_time,
                                args.refresh, progress=not args.quiet)
    students = [Genotype.uniform(backbone)] if backbone.teacher_block in palette else []
    students += uniform_genotypes(backbone, args.check, args.seed, palette)
    checks = check_latency_table(table, students[: args.check], device, 5 * args.min_time, progress=not args.quiet)
    errors = [abs(c.error_pct) for c in checks]
    summary = {"mean_abs_error_pct": sum(errors) / len(errors), "max_abs_error_pct": max(errors)} if checks else {}
    if args.json:
        print(json.dumps({"table_file": str(path), "context": table.context, **table.to_dict(),
                          "checks": [c.to_dict() for c in checks], **summary}))
        return 0
    print(f"{backbone.name} {table.context}, input {backbone.input_size}x{backbone.input_size}")
    print(f"table: {path}")
    print(f"stem and head: {table.fixed_ms:.4f} ms")
    shapes = backbone.block_shapes()
    groups: list[list[int]] = []
    for i, shape in enumerate(shapes):
        if groups and shapes[groups[-1][0]] == shape:
            groups[-1].append(i)
        else:
            groups.append([i])
    heads = [f"{g[0]}" if len(g) == 1 else f"{g[0]}-{g[-1]}" for g in groups]
    width = max(4, *(len(n) for n in palette.names))
    where = [f"{h}: {shapes[g[0]].c_in}->{shapes[g[0]].c_out}/{shapes[g[0]].stride}" for h, g in zip(heads, groups)]
    print(f"ms per block, by slot (channels in->out/stride: {', '.join(where)})")
    print(f"{'type':<{width}} " + " ".join(f"{h:>9}" for h in heads))
    for name in palette.names:
        cells = [table.ms[name][g[0]] for g in groups]
        print(f"{name:<{width}} " + " ".join(f"{'-':>9}" if v is None else f"{v:9.4f}" for v in cells))
    if checks:
        print(f"whole networks timed against the table's sum ({len(checks)}):")
        for c in checks:
            label = f"all {blocks.pop()}" if len(blocks := set(c.genotype.blocks)) == 1 else " ".join(c.genotype.blocks)
            print(f"  predicted {c.predicted_ms:8.3f} ms  measured {c.measured_ms:8.3f} ms  error "
                  f"{c.error_pct:+6.1f}%  {label[:60]}")
        print(f"mean |error| {summary['mean_abs_error_pct']:.1f}%, largest {summary['max_abs_error_pct']:.1f}%")
    return 0


def _add_study_options(p: argparse.ArgumentParser, what: str) -> None:
    """--workers, --device, --out and --quiet of the studies that train."""
    p.add_argument("--workers", type=_positive_int, default=1, help=f"{what} at once, each in its own process with "
                   "an equal share of the CPU threads (several share one GPU) (default: 1)")
    _add_resumable_options(p)


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="measure how well proxies rank students by the error they train to",
                       description="The paper's ranking study (sections 4.2 and 4.3).")
    kinds = p.add_subparsers(dest="kind", required=True)
    r = kinds.add_parser("rank", help="score a seeded pool with every proxy, train every candidate, report",
                         description="Sample --candidates students of --budget, score each with every --proxies "
                         "entry, train each with the recipe once per --train-seeds entry, and write results.csv, "
                         "study.json, report.md and proxies.png to --out. Rerun the same command to resume: "
                         "finished candidates are not trained again. Works under torchrun (candidates split "
                         "over ranks).")
    add_options(r, StudyConfig)
    _add_study_options(r, "candidates scored and trained")
    r.set_defaults(func=_cmd_study_rank)
    s = kinds.add_parser("samples", help="expected error of the best-by-proxy of n samples, from a finished study",
                         description="From the results.csv of `blockswap study rank`, the expected test error "
                         "of the candidate each proxy picks among n random samples (exact over all draws, with "
                         "a 5-95% range by resampling), beside a random pick and the best of n; writes "
                         "samples.csv and samples.png to the study folder.")
    s.add_argument("--study", required=True, type=Path, help="folder of a finished `blockswap study rank`")
    s.add_argument("--sizes", type=argparse_type(parse_sizes), default=None,
                   help="comma-separated n (default: 1, 2, 5, 10, 20, ... up to the pool)")
    s.add_argument("--proxies", type=comma_separated, default=None, help="comma-separated proxy columns (default: all)")
    s.set_defaults(func=_cmd_study_samples)
    c = kinds.add_parser("protocols", help="noise ceilings of several studies side by side, against their cost",
                         description="For each folder of `blockswap study rank` with two or more training seeds "
                         "(finished or still running: only candidates whose every seed finished count), the "
                         "seed-to-seed Spearman and the one-way ICC with 95%% bootstrap intervals and the minutes "
                         "one training run took; writes protocols.csv, protocols.md and protocols.png to --out.")
    c.add_argument("studies", nargs="+", type=Path, help="study folders, one per training protocol")
    c.add_argument("--out", required=True, type=_out_path, help="folder for protocols.csv, protocols.md, protocols.png")
    c.set_defaults(func=_cmd_study_protocols)
    for kind, (config_class, runner, summary, description) in _COHORT_STUDIES.items():
        k = kinds.add_parser(kind, help=summary, description=description + " Rerun the same command to resume: "
                             "finished training runs are not repeated. Works under torchrun (students split over "
                             "ranks).")
        add_options(k, config_class)
        _add_study_options(k, "training runs")
        k.set_defaults(func=_cmd_cohort_study, config_class=config_class, runner=runner)
    g = kinds.add_parser("goodbad", help="block types and positions of the good and bad students of a study",
                         description="From a finished study's results.csv (study mixing, rank or compare), the "
                         "students whose error lies more than --sd standard deviations below (good) or above (bad) "
                         "the mean: their block types and positions counted, and a drawing of the best good and "
                         "the worst bad genotype; writes goodbad.csv, goodbad.md, good.png and bad.png there.")
    g.add_argument("--study", required=True, type=Path, help="folder of a finished study")
    g.add_argument("--sd", type=float, default=2.0, help="standard deviations from the mean (default: 2, the paper's)")
    g.add_argument("--budget", type=argparse_type(parse_budget), help="of a study compare with random students at "
                   "several budgets: the budget whose students are split (errors differ by budget)")
    g.set_defaults(func=_cmd_study_goodbad)


_COHORT_STUDIES: dict[str, tuple[type, Callable[..., dict[str, Any]], str, str]] = {
    "mixing": (MixingConfig, run_mixing, "single-type students against random mixed ones at a budget (Fig. 2)",
               "Train every single-type network inside the --budget window and --candidates random mixed-blocktype "
               "genotypes of the budget, and write results.csv, mixing.json, report.md and mixing.png (the density "
               "of the mixed students' errors, each single type's as a line) to --out."),
    "placement": (PlacementConfig, run_placement, "one block at a time swapped for a cheap type (Fig. 4)",
                  "Train the all-Conv teacher network and, for every block position, that network with the block "
                  "alone swapped for --type; write results.csv, placement.json, report.md and placement.png (error "
                  "and parameters per position, coloured by stage) to --out."),
    "compare": (CompareConfig, run_compare, "BlockSwap's pick against random, single-type, scaled and pruned "
                "students (Tables 2/6, Fig. 3)",
                "At each of --budgets: BlockSwap's pick from a search of --samples candidates, --random random "
                "genotypes and the teacher pruned by each --prune method; besides, the single types inside a budget "
                "window, every --types network and the --scaled models; all trained from one teacher (trained "
                "here first unless --teacher names one) once per --train-seeds entry. Writes results.csv, "
                "compare.json, report.md (the Table 2 layout) and compare.png (error against parameters)."),
}


def _run_training_study(args: argparse.Namespace, runner: Callable[..., dict[str, Any]], config: Any,
                        ) -> tuple[dict[str, Any], bool]:
    """Run a study that trains (`runner(config, out, ...)`) with the command's --workers, --device and --out, under
    torchrun where it was started so; its report and whether this is the main process."""
    device = _device(args.device)
    if device.type == "cpu" and args.workers > usable_cores():
        raise BlockSwapError(f"--workers {args.workers} exceeds the {usable_cores()} CPU cores this process may use")
    place = setup_distributed(device)
    try:
        report = runner(config, args.out, workers=args.workers, device=place.device,
                        progress=place.is_main and not args.quiet, group=place.group)
    finally:
        place.close()
    return report, place.is_main


def _cmd_cohort_study(args: argparse.Namespace) -> int:
    report, main_process = _run_training_study(args, args.runner, args.config_class(**values(args, args.config_class)))
    if main_process:
        print("\n".join(report["summary"]))
    return 0


def _cmd_study_goodbad(args: argparse.Namespace) -> int:
    report = study_goodbad(args.study, args.sd, args.budget)
    print("\n".join(report["summary"]))
    return 0


def _cmd_study_rank(args: argparse.Namespace) -> int:
    report, main_process = _run_training_study(args, run_study, StudyConfig(**values(args, StudyConfig)))
    if not main_process:
        return 0
    best = min(report["proxies"].items(), key=lambda kv: kv[1]["spearman"] if kv[1]["spearman"] == kv[1]["spearman"]
               else float("inf"))
    print(f"{report['candidates']} candidates; most negative Spearman: {best[0]} {best[1]['spearman']:.3f} "
          f"[{best[1]['spearman_low']:.3f}, {best[1]['spearman_high']:.3f}]")
    print(f"wrote {args.out / 'results.csv'}, study.json, report.md and proxies.png")
    return 0


def _cmd_study_samples(args: argparse.Namespace) -> int:
    table = study_samples(args.study, args.sizes, args.proxies)
    for row in table:
        print(f"{row['proxy']:>16s}  n={row['n']:<5d} expected {row['expected_error_pct']:.2f}%  "
              f"(5-95% {row['p05_error_pct']:.2f}-{row['p95_error_pct']:.2f})  oracle {row['oracle_error_pct']:.2f}%  "
              f"random {row['random_error_pct']:.2f}%")
    print(f"wrote {args.study / 'samples.csv'} and {args.study / 'samples.png'}")
    return 0


def _cmd_study_protocols(args: argparse.Namespace) -> int:
    require_extra()
    compare_protocols(args.studies, args.out)
    print((args.out / "protocols.md").read_text(), end="")
    print(f"wrote {args.out / 'protocols.csv'}, {args.out / 'protocols.md'} and {args.out / 'protocols.png'}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (`blockswap <command>: error: ...`) and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(recipe: str = "cifar") -> argparse.ArgumentParser:
    """The whole command line; build it after plugins are loaded, so their scorers are among the choices.

    `recipe` (see `_recipe`) gives the training commands' option defaults.
    """
    parser = _Parser(prog="blockswap", description="Fisher-guided block substitution (BlockSwap).")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error (also ${DEBUG_ENV}=1)")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                        help=f"import a module that registers backbones, block types or scorers (repeatable; "
                        f"also ${PLUGINS_ENV}, comma-separated)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_search(sub)
    _add_info(sub)
    _add_train(sub, recipe)
    _add_eval(sub)
    _add_latency(sub)
    _add_export(sub)
    _add_study(sub)
    return parser


def _load_plugins(argv: Sequence[str]) -> list[str]:
    """Import the plugins named in $BLOCKSWAP_PLUGINS and by --plugin options; argv without those options."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--plugin", action="append", default=[])
    known, rest = pre.parse_known_args(argv)
    for spec in env_plugins() + known.plugin:
        load_plugin(spec)
    return rest


def _recipe(argv: Sequence[str]) -> str:
    """The --recipe named in argv (cifar when none): it sets the training options' defaults before parsing."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe", default="cifar")
    recipe = pre.parse_known_args(argv)[0].recipe
    return recipe if recipe in RECIPES else "cifar"  # an unknown name is left for the full parser to refuse


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: rows flushed, workers stopped, the resume hint printed."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def _interrupted_code(e: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended."""
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)


def _class_advice(args: argparse.Namespace, e: ClassCountError) -> str:
    """What fixes a head that does not fit the data, for the command that met it (each named flag exists there)."""
    if e.have < 2:
        return "; a network with one output cannot learn to classify: give it a head of 2 or more classes"
    fixed = f"use data with {e.have} classes"
    if args.func is _cmd_search:
        if is_weight_file(args.model):
            name = registered_layout(model_backbone(args.model))
            other = f", or search --model {name} --num-classes {e.need} (its layout with a new head)" if name else ""
            return f"; {fixed} (the file's head){other}"
        return f"; pass --num-classes {e.need}"
    if args.func is _cmd_train:
        named = getattr(args, "teacher_model", None) or getattr(args, "model", None) or ""
        if getattr(args, "teacher", None) or is_weight_file(named) or getattr(args, "genotype", None):
            return f"; {fixed}, as the network you named has"
        return f"; pass --num-classes {e.need}"
    if args.func is _cmd_eval:
        return f"; {fixed}: a trained network's head is fixed"
    return f"; {fixed}: the studies train {getattr(args, 'model', 'the model')} with its {e.have} classes"


def _one_line(e: BaseException) -> str:
    """What the user reads: our own errors as they are; a file-system error with its path; anything else typed."""
    if isinstance(e, BlockSwapError):
        return str(e)
    if isinstance(e, BrokenProcessPool):
        return ("a worker process died, most often killed by the system for lack of memory (scoring a ResNet-50 "
                "at batch 128 peaked at about 20 GB in one worker): rerun the same command with fewer --workers or a "
                "smaller --batch-size; finished work is kept and resumed")
    if isinstance(e, OSError) and e.strerror:
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror}{where}"
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text} (rerun with --debug for the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if not debug:  # torch's and Pillow's warnings would sit above the one line a failure prints; --debug shows them
        warnings.simplefilter("ignore")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")  # and in the worker processes this run spawns
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        rest = _load_plugins(argv)  # first: the parser's choices include what plugins register
        recipe = _recipe(rest)
        args = build_parser(recipe).parse_args(rest)
        if getattr(args, "recipe", recipe) != recipe:  # named by an abbreviation the pre-parse did not see
            args = build_parser(args.recipe).parse_args(rest)
        return args.func(args)
    except KeyboardInterrupt as e:
        print("blockswap: interrupted; rerun the same command to resume", file=sys.stderr)
        return _interrupted_code(e)
    except Exception as e:  # noqa: BLE001 - every failure a user sees is one line; --debug shows the rest
        if debug:
            raise
        advice = _class_advice(args, e) if isinstance(e, ClassCountError) else ""
        print(f"blockswap: error: {_one_line(e)}{advice}", file=sys.stderr)
        return 2
