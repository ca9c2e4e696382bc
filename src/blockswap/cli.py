"""The `blockswap` command line: fills the library's config dataclasses from argv.

Nothing imports this module; bad input ends with a one-line reason and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .blocks import DEFAULT_PALETTE as palette
from .budget import format_count, parse_budget, sample_genotypes
from .checkpoint import read_checkpoint
from .distributed import setup_distributed
from .errors import BlockSwapError
from .evaluate import evaluate_checkpoint
from .genotype import Genotype, load_genotype
from .networks import Backbone
from .precision import PRECISIONS
from .pruning import PRUNE_METHODS
from .scoring import SCORERS
from .search import SearchConfig, run_search
from .training import SCHEDULES, TrainConfig, train

__all__ = ["main", "build_parser"]


def _budget(text: str) -> int:
    try:
        return parse_budget(text)
    except BlockSwapError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _device(text: str | None) -> torch.device:
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise BlockSwapError(f"invalid device {text!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BlockSwapError(f"device {text!r} requested but CUDA is not available")
    return device


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="sample budget-feasible students and rank them by Fisher potential",
                       description="Sample --samples genotypes within the budget window, score each by Fisher "
                       "potential on one seeded minibatch, write candidates.csv and best.json to --out.")
    p.add_argument("--budget", required=True, type=_budget, help="parameter budget, e.g. 400k, 1.6M, 400000")
    p.add_argument("--samples", type=_positive_int, default=1000, help="candidates to score (default 1000)")
    p.add_argument("--model", default="wrn-40-2", help="teacher network: wrn-D-K or resnet18/34 (default wrn-40-2)")
    p.add_argument("--data-dir", default=None,
                   help="CIFAR-10 folder (downloaded there if missing); default: the embedded 1,000-image sample")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="probe minibatch size (default 128)")
    p.add_argument("--tolerance", type=float, default=0.025, help="budget window, fraction (default 0.025)")
    p.add_argument("--seed", type=int, default=0, help="fixes candidates, weights and the probe batch (default 0)")
    p.add_argument("--scorer", choices=sorted(SCORERS), default="fast",
                   help="fast (default) or reference: the plain fp32 scorer the fast one is checked against")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="scoring processes per rank (default: one single-threaded process per core on CPU, 1 on CUDA)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--out", required=True, type=Path, help="output folder; rerun with the same one to resume")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_search)


def _default_workers(device: torch.device) -> int:
    """One single-threaded scoring process per core torch would use here; one on CUDA."""
    return 1 if device.type == "cuda" else max(1, torch.get_num_threads())


def _cmd_search(args: argparse.Namespace) -> int:
    config = SearchConfig(budget=args.budget, model=args.model, samples=args.samples, batch_size=args.batch_size,
                          tolerance=args.tolerance, seed=args.seed, data_dir=args.data_dir, scorer=args.scorer)
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
    print(f"scored {result.scored_now} new of {len(result.candidates)} candidates in {result.seconds:.1f} s "
          f"({config.model}, budget {format_count(config.budget)})")
    print(f"best: #{best.index}  params {best.params:,}  MACs {format_count(best.macs)}  fisher {best.fisher:.6g}")
    print(f"      {' '.join(best.genotype.blocks)}")
    print(f"wrote {result.out_dir / 'candidates.csv'} and {result.out_dir / 'best.json'}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters, MACs and per-block table of a genotype",
                       description="GENOTYPE is a genotype JSON, a published-format CSV, or a model name "
                       "(wrn-40-2, resnet34, ...) for its all-Conv teacher.")
    p.add_argument("genotype", help="genotype file (.json or .csv) or model name")
    p.add_argument("--model", default=None, help="backbone for a CSV genotype (default wrn-40-2)")
    p.add_argument("--row", type=int, default=0, help="data row of a multi-row CSV (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_info)


def _resolve_genotype(text: str, model: str | None, row: int) -> Genotype:
    path = Path(text)
    backbone = Backbone.from_name(model) if model else None
    if path.suffix.lower() in (".json", ".csv") or path.exists():
        return load_genotype(path, backbone=backbone, row=row)
    try:
        return Genotype.uniform(Backbone.from_name(text))
    except ValueError:
        raise BlockSwapError(f"{text!r} is neither a genotype file nor a model name") from None


def _cmd_info(args: argparse.Namespace) -> int:
    g = _resolve_genotype(args.genotype, args.model, args.row)
    post = g.backbone.post_activation
    rows = []
    for i, (name, shape, stage) in enumerate(zip(g.blocks, g.backbone.block_shapes(), g.backbone.block_stages())):
        t = palette[name]
        rows.append({"index": i, "stage": stage, "type": name, "c_in": shape.c_in, "c_out": shape.c_out,
                     "stride": shape.stride, "body_params": t.params(shape.c_in, shape.c_out, shape.stride, post),
                     "body_macs": t.macs(shape.c_in, shape.c_out, shape.stride, shape.size_in)})
    if args.json:
        print(json.dumps({"model": g.backbone.name, **g.to_dict(), "params": g.params(), "macs": g.macs(),
                          "per_block": rows}))
        return 0
    print(f"{g.backbone.name}, {g.backbone.num_classes} classes, input {g.backbone.input_size}x{g.backbone.input_size}")
    print(f"{'#':>3} {'stage':>5} {'type':<9} {'channels':>11} {'s':>2} {'body params':>12} {'body MACs':>12}")
    for r in rows:
        ch = f"{r['c_in']}->{r['c_out']}"
        print(f"{r['index']:>3} {r['stage']:>5} {r['type']:<9} {ch:>11} {r['stride']:>2} "
              f"{r['body_params']:>12,} {r['body_macs']:>12,}")
    print(f"params {g.params():,} ({format_count(g.params())})   MACs {g.macs():,} ({format_count(g.macs())})")
    return 0


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `train teacher` and `train student`: data, recipe, run control."""
    p.add_argument("--data-dir", required=True,
                   help="folder holding cifar-10-batches-py (downloaded there, MD5-checked, if missing)")
    p.add_argument("--out", required=True, type=Path, help="output folder of this run")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--epochs", type=_positive_int, default=200, help="(default 200)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="global batch, split over processes")
    p.add_argument("--lr", type=float, default=0.1, help="initial learning rate (default 0.1)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="(default 5e-4)")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                   help="cosine annealing (published code, default) or step: lr/5 at 30%%, 60%%, 80%% of the epochs")
    p.add_argument("--cutout", type=int, default=16, help="Cutout hole size, 0 for none (default 16)")
    p.add_argument("--train-subset", type=_positive_int, default=None, help="train on the first N images only")
    p.add_argument("--test-subset", type=_positive_int, default=None, help="test on the first N images only")
    p.add_argument("--seed", type=int, default=0, help="initial weights, batch order, augmentation (default 0)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 autocast on CUDA and on CPUs with AVX512-BF16/AMX, else fp32 (default auto)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep NCHW tensors (channels_last is faster for dense convs, slower for some grouped ones)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a teacher, or a student with attention transfer",
                       description="Train on CIFAR-10 with the paper's recipe; writes config.json, metrics.jsonl, "
                       "checkpoint.pt, best.pt, last.pt and final.json to --out. Works under torchrun.")
    kinds = p.add_subparsers(dest="kind", required=True)
    t = kinds.add_parser("teacher", help="train a network with cross-entropy",
                         description="Train any supported network with plain cross-entropy.")
    arch = t.add_mutually_exclusive_group(required=True)
    arch.add_argument("--model", help="all-Conv network: wrn-D-K (e.g. wrn-40-2) or resnet18/34")
    arch.add_argument("--genotype", help="genotype file (.json, or published .csv as WRN-40-2)")
    _add_train_options(t)
    t.set_defaults(func=_cmd_train)

    s = kinds.add_parser("student", help="train a student (or a baseline) with attention transfer",
                         description="The student is --genotype, a scaled WRN (--model), a single-blocktype network "
                         "(--all TYPE), a random budget-feasible genotype (--random --budget B), or the teacher "
                         "pruned to --budget non-zero parameters (--prune l1|snip). --all and --random use the "
                         "backbone of --model, else the teacher's.")
    arch = s.add_mutually_exclusive_group()
    arch.add_argument("--genotype", help="genotype file, e.g. best.json from blockswap search")
    arch.add_argument("--all", metavar="TYPE", help="every block the same palette type, e.g. G4B2")
    arch.add_argument("--random", action="store_true", help="a random genotype within --budget (seeded by --seed)")
    arch.add_argument("--prune", choices=PRUNE_METHODS,
                      help="prune the teacher to --budget: l1 (magnitude of its trained weights) or snip (at init)")
    s.add_argument("--model", help="student backbone, alone a depth/width baseline (e.g. wrn-16-2)")
    s.add_argument("--budget", type=_budget, help="parameter budget for --random and --prune, e.g. 400k")
    teach = s.add_mutually_exclusive_group(required=True)
    teach.add_argument("--teacher", help="teacher weight file (e.g. last.pt of a teacher run)")
    teach.add_argument("--no-teacher", action="store_true", help="cross-entropy only: what distillation adds")
    s.add_argument("--teacher-model", help="the teacher's architecture (model name or genotype file); "
                   "checked against the checkpoint, needed only for a bare state dict")
    s.add_argument("--beta", type=float, default=1000.0, help="attention-transfer weight (default 1000)")
    s.add_argument("--kd-alpha", type=float, default=0.0, help="Hinton KD weight against CE; 0 = off (default 0)")
    s.add_argument("--kd-temperature", type=float, default=4.0, help="KD temperature (default 4)")
    _add_train_options(s)
    s.set_defaults(func=_cmd_train)


def _teacher_genotype(args: argparse.Namespace) -> Genotype | None:
    """The teacher's genotype from --teacher-model, else as recorded in the --teacher file."""
    if args.teacher_model:
        return _resolve_genotype(args.teacher_model, None, 0)
    if args.teacher is None:
        return None
    recorded = read_checkpoint(args.teacher).get("genotype")
    if recorded is None:
        raise BlockSwapError(f"{args.teacher} does not record its architecture; name it with --teacher-model")
    return Genotype.from_dict(recorded)


def _student_genotype(args: argparse.Namespace, teacher: Genotype | None) -> Genotype:
    """The network `train student` trains, from whichever of its options was given."""
    if args.budget is not None and not (args.random or args.prune):
        raise BlockSwapError("--budget applies to --random and --prune only")
    if (args.random or args.prune) and args.budget is None:
        raise BlockSwapError(f"--{'random' if args.random else 'prune'} needs --budget")
    if args.genotype:
        return _resolve_genotype(args.genotype, args.model, 0)
    if args.prune:
        if args.model:
            raise BlockSwapError("--prune prunes the teacher's own network; --model does not apply")
        if teacher is None:
            raise BlockSwapError("--prune prunes the teacher: give --teacher, or --teacher-model with --no-teacher")
        return teacher
    if args.model and not (args.all or args.random):
        return Genotype.uniform(Backbone.from_name(args.model))
    if args.model is None and teacher is None:
        raise BlockSwapError("name the student: --genotype FILE, --model NAME, or a teacher to derive it from")
    backbone = Backbone.from_name(args.model) if args.model else teacher.backbone
    if args.all:
        return Genotype.uniform(backbone, args.all).validate()
    if args.random:
        return sample_genotypes(backbone, args.budget, 1, seed=args.seed)[0]
    raise BlockSwapError("name the student: --genotype, --model, --all, --random or --prune")


def _cmd_train(args: argparse.Namespace) -> int:
    options = {"data_dir": args.data_dir, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
               "momentum": args.momentum, "weight_decay": args.weight_decay, "schedule": args.schedule,
               "train_subset": args.train_subset, "test_subset": args.test_subset, "seed": args.seed,
               "precision": args.precision, "channels_last": args.channels_last, "cutout": args.cutout}
    if args.kind == "teacher":
        genotype = _resolve_genotype(args.genotype or args.model, None, 0)
        config = TrainConfig(genotype=genotype.to_dict(), **options)
    else:
        teacher = _teacher_genotype(args)
        genotype = _student_genotype(args, teacher)
        config = TrainConfig(
            genotype=genotype.to_dict(), teacher=args.teacher,
            teacher_genotype=teacher.to_dict() if args.teacher and args.teacher_model else None,
            beta=args.beta, kd_alpha=args.kd_alpha, kd_temperature=args.kd_temperature,
            prune=args.prune, prune_budget=args.budget if args.prune else None, **options)
    try:
        final = train(config, args.out, resume=args.resume, device=_device(args.device), progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"blockswap: interrupted; add --resume to the same command to continue from {args.out}/checkpoint.pt",
              file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    print(f"{final['model']}  test error {final['test_error_pct']:.2f}%  params {final['params']:,}  "
          f"MACs {format_count(final['macs'])}  {final['epochs']} epochs in {final['seconds']:.0f} s")
    print(f"wrote {args.out / 'final.json'}, {args.out / 'last.pt'}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="test error, params, MACs and latency of a trained network, as JSON",
                       description="Evaluate a weight file written by `blockswap train` (best.pt, last.pt or "
                       "checkpoint.pt) on the CIFAR-10 test set and time it on the current device.")
    p.add_argument("--checkpoint", required=True, help="weight file")
    p.add_argument("--data-dir", required=True,
                   help="folder holding cifar-10-batches-py (downloaded there, MD5-checked, if missing)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="(default auto)")
    p.add_argument("--test-subset", type=_positive_int, default=None, help="first N test images only")
    p.add_argument("--repeats", type=_positive_int, default=20, help="timed forward passes at batch 1 (default 20)")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    report = evaluate_checkpoint(args.checkpoint, args.data_dir, _device(args.device), args.precision,
                                 test_subset=args.test_subset, repeats=args.repeats)
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blockswap", description="Fisher-guided block substitution (BlockSwap).")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_search(sub)
    _add_info(sub)
    _add_train(sub)
    _add_eval(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BlockSwapError as e:
        print(f"blockswap: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blockswap: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
