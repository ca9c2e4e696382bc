"""What a ranking study is and where its files live: `StudyConfig` (saved as config.json), the proxy
names it accepts, and the per-candidate folder layout that tells a finished candidate from a missing one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..scoring.scorer import scorer_info, scorer_names
from ..space.backbones import Backbone, get_backbone
from ..space.genotype import Genotype
from ..space.sampling import DEFAULT_TOLERANCE, sample_genotypes
from ..train.training import TrainConfig
from ..util.counts import parse_budget
from ..util.errors import BlockSwapError
from ..util.options import check_fields, comma_separated, each, fraction, from_record, option, positive_int, seed_int
from ..util.recipe import Recipe
from ..util.rundir import read_json

__all__ = ["CohortConfig", "StudyConfig", "parse_proxy", "trained_indices", "DEFAULT_PROXIES"]

DEFAULT_PROXIES = ("fisher", "fisher_convs", "grad_norm", "snip", "grasp", "synflow", "naswot", "jacob_cov", "l2",
                   "params", "macs", "fisher@1", "fisher@10", "grad_norm@1", "grad_norm@10", "l2@1", "l2@10",
                   "accuracy@1", "accuracy@10")


def _at_init_only(proxy: str) -> bool:
    """Whether the registered `proxy` does not depend on the weights (params, macs): never averaged."""
    return not scorer_info(proxy).needs_weights


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in comma_separated(text)]
    except ValueError:
        raise BlockSwapError(f"training seeds must be whole numbers separated by commas, got {text!r}") from None


def parse_proxy(name: str) -> tuple[str, int]:
    """'fisher@10' -> ('fisher', 10); 'fisher' -> ('fisher', 0): a registered scorer and its training steps."""
    base, _, steps = name.partition("@")
    if base not in scorer_names() or base == "trained":
        raise BlockSwapError(f"unknown proxy {name!r}: name a registered scorer ({', '.join(scorer_names())}), "
                             "optionally with @K for the value after K training steps")
    if not steps:
        return base, 0
    if not steps.isdigit() or int(steps) < 1:
        raise BlockSwapError(f"proxy {name!r}: the steps after '@' must be a positive whole number")
    return base, int(steps)


@dataclass(kw_only=True)
class CohortConfig(Recipe):
    """What every study that trains students shares: the data, the teacher network, how each student is trained
    (`Recipe`'s fields, the subsets, the training seeds) and the seed of whatever the study draws at random."""

    data_dir: str = field(metadata=option(
        "CIFAR-10 folder (downloaded there if missing) or an image folder: probe batch and training"))
    model: str = field(default="wrn-16-2", metadata=option("the teacher whose blocks are swapped"))
    seed: int = field(default=0, metadata=option(
        "fixes the pool, the initial weights and the probe batch (of --batch-size images: the training batch, as in "
        "the paper)", check=seed_int))
    tolerance: float = field(default=DEFAULT_TOLERANCE, metadata=option("budget window, as for search",
                                                                        check=fraction))
    train_subset: int | None = field(default=None, metadata=option("train on the first N images only",
                                                                   check=positive_int))
    test_subset: int | None = field(default=None, metadata=option("test on the first N images only",
                                                                  check=positive_int))
    train_seeds: list[int] = field(default_factory=lambda: [0], metadata=option(
        "comma-separated training seeds; each student is trained once per seed, its error is the mean, and two "
        "seeds give the noise ceiling", parse=_seeds, metavar="SEEDS",
        check=each(seed_int, "one or more whole numbers in [0, 2**63)")))
    teacher: str | None = field(default=None, metadata=option(
        "teacher weight file: train every student with attention transfer from it (default: cross-entropy only)"))

    def check_cohort(self) -> None:
        """Refuse settings no student can be trained with, naming the first bad one."""
        check_fields(self)
        self.train_seeds = list(self.train_seeds)
        if len(set(self.train_seeds)) != len(self.train_seeds):
            raise BlockSwapError(f"training seeds must be distinct, got {self.train_seeds}")
        self.train_config(Genotype.uniform(self.backbone()), self.train_seeds[0]).validate()

    def backbone(self) -> Backbone:
        return get_backbone(self.model)

    def train_config(self, genotype: Genotype, seed: int, prune: str | None = None,
                     prune_budget: int | None = None) -> TrainConfig:
        """The training run of one student for one seed (a pruned teacher when `prune` is given)."""
        return TrainConfig(genotype=genotype, data_dir=self.data_dir, teacher=self.teacher,
                           train_subset=self.train_subset, test_subset=self.test_subset, seed=seed,
                           prune=prune, prune_budget=prune_budget, **self.recipe_settings())

    @classmethod
    def from_dict(cls, data: Any) -> CohortConfig:
        """The config a study folder's config.json records."""
        return from_record(cls, data, "study config")


@dataclass(kw_only=True)
class StudyConfig(CohortConfig):
    """Everything that determines a ranking study's pool, scores and training runs; saved as config.json.

    The recipe every candidate is trained with (and the NAME@K proxies' steps take) is `Recipe`'s fields.
    """

    budget: int = field(metadata=option("parameter budget of the pool, e.g. 200k", parse=parse_budget))
    candidates: int = field(default=30, metadata=option("students sampled (seeded) and trained", check=positive_int))
    proxies: list[str] = field(default_factory=lambda: list(DEFAULT_PROXIES), metadata=option(
        "comma-separated proxies: registered scorers, NAME@K for the value after K SGD steps of the recipe "
        "(fp32, lr --lr, batch --batch-size, seeded batches of the whole training set)",
        parse=comma_separated, metavar="NAMES"))
    inits: int = field(default=1, metadata=option(
        "initialisations averaged for the at-initialisation proxies, reported beside the single ones as NAME.meanK",
        check=positive_int))
    average: list[str] | None = field(default=None, metadata=option(
        "comma-separated at-initialisation proxies averaged over --inits (default: all that depend on the weights)",
        parse=comma_separated, metavar="NAMES"))
    contrast: int | None = field(default=None, metadata=option(
        "a contrast study: score all --candidates as a search does, then train only Fisher's top N, N drawn at "
        "random and Fisher's bottom N (and the top N of fisher.meanK with --inits K, and of the screened search, "
        "where they differ); default: train every candidate", check=positive_int))

    def __post_init__(self) -> None:
        """Refuse settings a study cannot run with, naming the first bad one."""
        self.budget = parse_budget(self.budget)
        check_fields(self)
        if self.candidates < 3:
            raise BlockSwapError(f"a ranking study needs at least 3 candidates, got {self.candidates}")
        if self.contrast is not None and (self.contrast < 2 or self.candidates < 2 * self.contrast):
            raise BlockSwapError(f"contrast {self.contrast} needs 2 or more per group and at least twice as many "
                                 f"candidates; got {self.candidates}")
        self.proxies = list(self.proxies)
        if not self.proxies:
            raise BlockSwapError("name at least one proxy")
        if len(set(self.proxies)) != len(self.proxies):
            raise BlockSwapError(f"a proxy is named twice in {self.proxies}")
        for name in self.proxies:
            parse_proxy(name)
        if self.average is not None:
            if self.inits == 1:
                raise BlockSwapError("--average names proxies averaged over --inits initialisations: give --inits 2 "
                                     "or more")
            self.average = list(self.average)
            wrong = [n for n in self.average if n not in self.proxies or parse_proxy(n)[1] or _at_init_only(n)]
            if wrong:
                raise BlockSwapError(f"--average takes at-initialisation proxies of --proxies that depend on the "
                                     f"weights; not {', '.join(wrong)}")
        self.check_cohort()

    def columns(self) -> list[str]:
        """The proxy columns of results.csv: every proxy, then the averaged at-initialisation ones."""
        return self.proxies + [f"{name}.mean{self.inits}" for name in self.averaged()]

    def averaged(self) -> list[str]:
        """The proxies averaged over `inits` initialisations (the at-initialisation ones that depend on weights)."""
        if self.inits == 1:
            return []
        if self.average is not None:
            return list(self.average)
        return [n for n in self.proxies if parse_proxy(n)[1] == 0 and not _at_init_only(n)]

    def genotypes(self) -> list[Genotype]:
        return sample_genotypes(get_backbone(self.model), self.budget, self.candidates, self.tolerance, self.seed)

    @classmethod
    def from_dict(cls, data: Any) -> StudyConfig:
        return from_record(cls, data, "study config")


def require_extra() -> None:
    """Refuse to start a study without scipy and matplotlib (the `study` extra), not hours later at the report."""
    import importlib.util

    missing = [m for m in ("scipy", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise BlockSwapError(f"the studies need {' and '.join(missing)}: pip install 'blockswap[study]'")


def groups_path(out: Path) -> Path:
    """Where a contrast study keeps the candidates it trains, by group (written once the pool is scored)."""
    return out / "groups.json"


def trained_indices(config: StudyConfig, out: Path) -> list[int]:
    """The candidates a study trains: all of them, or a contrast study's groups (none before they are chosen)."""
    if config.contrast is None:
        return list(range(config.candidates))
    if not groups_path(out).exists():
        return []
    groups = read_json(groups_path(out), "contrast groups")
    return sorted({int(i) for members in groups.values() for i in members})


def candidate_dir(out: Path, index: int) -> Path:
    return out / "candidates" / f"{index:04d}"


def candidate_done(config: StudyConfig, out: Path, index: int) -> bool:
    folder = candidate_dir(out, index)
    return (folder / "scores.json").exists() and all(run_finished(folder / f"seed-{s}") for s in config.train_seeds)


def run_finished(run: Path) -> bool:
    """Whether a candidate's training run is over: finished (final.json) or diverged (failed.json)."""
    return (run / "final.json").exists() or (run / "failed.json").exists()


def final_error(run: Path, genotype: Genotype | None = None) -> float:
    """A training run's final test error; NaN for a run that diverged (its failed.json says why). With `genotype`,
    the run's final.json must name that network and hold an error in [0, 100]: an edited or copied record is
    refused."""
    if (run / "failed.json").exists():
        return math.nan
    final = read_json(run / "final.json", "training result")
    error = final.get("test_error_pct") if isinstance(final, dict) else None
    if genotype is not None and (final.get("blocks") != list(genotype.blocks)  # type: ignore[union-attr]
                                 or isinstance(error, bool) or not isinstance(error, (int, float))
                                 or not 0 <= error <= 100):
        raise BlockSwapError(f"{run / 'final.json'} is not the record of the run this study trained there (another "
                             "network, or an error outside 0-100): it was edited or copied; move the folder away "
                             "to train it again")
    return float(error)  # type: ignore[arg-type]
