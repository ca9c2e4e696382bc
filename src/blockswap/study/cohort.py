"""Cohorts: named students trained once per seed, resumably, then tabulated; the floor of the paper's studies.

The mixing (Fig. 2), placement (Fig. 4) and comparison (Tables 2 and 6)
studies each decide which students to train (`Student`: a name, a group, a
genotype, optionally a pruning of the teacher) and then share everything else:

- `train_cohort` trains student s for seed k into `students/<name>/seed-<k>/`
  (a training run folder). A finished run (final.json, or failed.json for one
  that diverged) is not trained again, and is checked to hold that student's
  training config; an unfinished one resumes exactly. Runs go to `workers`
  processes of the one `WorkerPool`; under torchrun rank r takes the students
  with index % size == r.
- `cohort_rows` reads the finished runs into one row per student (params,
  MACs, error per seed, mean, SD) and `write_cohort_csv` writes them;
  `cohort_ceiling` is the noise ceiling of the seeds where there are two.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import asdict, dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from tqdm.auto import tqdm

from ..data import check_subsets, probe_images
from ..data.imagefolder import check_classes
from ..search.pool import require_registered, user_modules
from ..space.genotype import Genotype
from ..train.training import ONE_PROCESS, DivergedError, TrainConfig, train
from ..util.errors import BlockSwapError
from ..util.options import command_args, recorded_form
from ..util.rundir import check_recorded, config_changes, read_json, record, write_json_atomic, write_text_atomic
from ..util.system import usable_cores
from ..util.workers import WorkerPool
from .config import CohortConfig, final_error, run_finished

__all__ = ["Student", "student_dir", "claim_out_dir", "train_cohort", "cohort_rows", "write_cohort_csv",
           "cohort_ceiling", "study_command"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class Student:
    """One student of a cohort: `name` (its folder, unique in the cohort), the `group` it is compared in, the
    network, and for a pruned teacher the method and the non-zero parameters it keeps."""

    name: str
    group: str
    genotype: Genotype
    prune: str | None = None
    prune_budget: int | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise BlockSwapError(f"a student's name must be letters, digits and ._+- (a folder name), "
                                 f"got {self.name!r}")

    def train_config(self, config: CohortConfig, seed: int) -> TrainConfig:
        return config.train_config(self.genotype, seed, self.prune, self.prune_budget)

    def macs(self) -> int | None:
        """MACs for one image; None for a pruned network, whose cost depends on its sparse format (as the paper)."""
        return None if self.prune else self.genotype.macs()


def student_dir(out: Path, student: Student) -> Path:
    return out / "students" / student.name


def claim_out_dir(out: Path, config: CohortConfig, what: str) -> None:
    """Record config.json in a new folder, or check that the folder holds this `what` study with these settings.

    The data comes first: a study whose network cannot hold the data's classes (or that finds no data) leaves no
    folder behind to refuse the corrected command."""
    backbone = config.backbone()
    images = probe_images(config.data_dir, backbone.input_size)
    check_classes(backbone, images, config.data_dir)
    check_subsets(images, config.data_dir, backbone.input_size, config.train_subset, config.test_subset)
    if not check_recorded(out, "config.json", asdict(config), partial(recorded_form, type(config)), what,
                          "use a fresh --out directory"):
        record(out, "config.json", asdict(config))


def study_command(kind: str, config: CohortConfig, out: Path) -> str:
    """The command line that rebuilds the study: `blockswap study KIND` with the options off their defaults."""
    return shlex.join(["blockswap", "study", kind, *command_args(config), "--out", str(out)])


def _check_unique(students: list[Student]) -> None:
    seen: set[str] = set()
    for s in students:
        if s.name in seen:
            raise BlockSwapError(f"two students are named {s.name!r}")
        seen.add(s.name)


def _check_finished(run: Path, wanted: TrainConfig) -> None:
    """A finished run must be the one this cohort asks for: refuse a folder that holds another student's run."""
    if (run / "failed.json").exists() and not (run / "config.json").exists():
        return
    saved = TrainConfig.from_dict(read_json(run / "config.json", "training config")).record()
    expected = wanted.record()
    for settings in (saved, expected):
        settings.pop("teacher_sha256", None)  # filled in when the run started; train() checks it on resume
    changes = config_changes(saved, expected)
    if changes:
        raise BlockSwapError(f"{run} holds another training run than this study asks for ({changes}); it was edited "
                             "or made by another study: move it away to train it again")


def _train_job(config: TrainConfig, run: Path, device: str) -> str:
    """Train one student for one seed (resuming the folder); a diverged run is a result, recorded in failed.json."""
    try:
        train(config, run, resume=True, device=torch.device(device), progress=False, group=ONE_PROCESS)
    except DivergedError as e:
        run.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run / "failed.json", {"reason": str(e)})
    return str(run)


def _init_cohort(block_names: list[str]) -> None:
    """Runs once in each cohort worker, after the plugins: the students' block types must resolve by name."""
    require_registered(block_names)


def train_cohort(config: CohortConfig, students: list[Student], out: Path, workers: int = 1,
                 device: str | torch.device = "cpu", progress: bool = True,
                 group: torch_dist.ProcessGroup | None = None, desc: str = "students") -> None:
    """Train every student once per training seed into `out/students/`, skipping the finished runs.

    `workers` runs at once in spawned processes with an equal share of the CPU
    threads. With a `torch.distributed` `group`, rank r trains the students with
    index % size == r, and every rank returns once all are done.
    """
    _check_unique(students)
    rank, world = (torch_dist.get_rank(group), torch_dist.get_world_size(group)) if group is not None else (0, 1)
    waiting = torch_dist.new_group(backend="gloo", timeout=timedelta(days=30)) if group is not None else None
    jobs: list[tuple[TrainConfig, Path, str]] = []
    mine = [s for i, s in enumerate(students) if i % world == rank]
    for student in mine:
        for seed in config.train_seeds:
            run, wanted = student_dir(out, student) / f"seed-{seed}", student.train_config(config, seed)
            if run_finished(run):
                _check_finished(run, wanted)
            else:
                jobs.append((wanted, run, str(device)))
    total = len(mine) * len(config.train_seeds)
    with tqdm(total=total, initial=total - len(jobs), desc=desc, unit="run", disable=not progress or rank != 0,
              dynamic_ncols=True) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                _train_job(*job)
                bar.update(1)
        else:
            names = sorted({name for s in mine for name in s.genotype.blocks})
            threads = max(1, usable_cores() // workers)
            with WorkerPool(min(workers, len(jobs)), threads, _init_cohort, (names,), user_modules(names)) as pool:
                for _ in pool.run(_train_job, jobs):
                    bar.update(1)
    if waiting is not None:
        torch_dist.barrier(group=waiting)


def _params(student: Student, runs: list[Path]) -> int:
    """The student's parameters: its genotype's count, or for a pruned network the non-zero ones it kept."""
    if not student.prune:
        return student.genotype.params()
    for run in runs:
        if (run / "final.json").exists():
            return int(read_json(run / "final.json", "training result")["params"])
    return int(student.prune_budget)  # type: ignore[arg-type]  # every run diverged: the budget it was pruned to


def cohort_rows(config: CohortConfig, students: list[Student], out: Path) -> list[dict[str, Any]]:
    """One row per student: name, group, genotype, params, MACs (None when pruned), the final test error of each
    training seed (NaN for a diverged run), their mean and SD. Refuses a cohort with an unfinished run."""
    rows = []
    for student in students:
        runs = [student_dir(out, student) / f"seed-{s}" for s in config.train_seeds]
        missing = [r for r in runs if not run_finished(r)]
        if missing:
            raise BlockSwapError(f"{missing[0]} is not finished; rerun the study to complete it")
        errors = [final_error(r, student.genotype) for r in runs]
        row: dict[str, Any] = {"name": student.name, "group": student.group,
                               "genotype": " ".join(student.genotype.blocks), "prune": student.prune or "",
                               "params": _params(student, runs), "macs": student.macs()}
        for seed, error in zip(config.train_seeds, errors):
            row[f"test_error_pct_seed{seed}"] = error
        finite = [e for e in errors if math.isfinite(e)]
        row["test_error_pct"] = float(np.mean(finite)) if finite else math.nan
        row["test_error_sd_pct"] = float(np.std(finite, ddof=1)) if len(finite) >= 2 else math.nan
        rows.append(row)
    return rows


def write_cohort_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The rows as CSV, the columns of the first row; NaN and None as empty cells."""
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return ""
        text = repr(value) if isinstance(value, float) else str(value)
        return f'"{text}"' if "," in text else text

    lines = [",".join(rows[0])] + [",".join(cell(v) for v in row.values()) for row in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def cohort_ceiling(config: CohortConfig, rows: list[dict[str, Any]], resamples: int = 2000) -> dict[str, Any] | None:
    """The noise ceiling (`ranking.noise_ceiling`) of the students' errors under the training seeds; None with one
    seed."""
    from .ranking import noise_ceiling

    if len(config.train_seeds) < 2:
        return None
    runs = np.array([[row[f"test_error_pct_seed{s}"] for s in config.train_seeds] for row in rows], float)
    return {"seeds": config.train_seeds[:2], **noise_ceiling(runs, resamples, config.seed)}
