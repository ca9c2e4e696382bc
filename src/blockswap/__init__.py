"""BlockSwap: Fisher-guided block substitution for network compression on a budget.

`import blockswap as bs` gives the public API used in the README.
"""

from .blocks import DEFAULT_PALETTE, PALETTE_NAMES, BlockType, ConvSpec, Palette
from .budget import BudgetError, CostTable, parse_budget, sample_genotypes
from .checkpoint import CheckpointError, load_network
from .data import DataError, ImageSet, augment, load_cifar10, load_embedded_sample, normalize
from .distill import DistillConfig, attention_loss, attention_map, student_loss
from .errors import BlockSwapError
from .evaluate import EvalReport, evaluate_checkpoint
from .genotype import Genotype, GenotypeError, load_genotype
from .networks import Backbone, BlockNetwork, Taps, build_network
from .pruning import Pruner, nonzero_params
from .scoring import SCORERS, FastFisherScorer, FisherScorer, Score, Scorer, make_scorer
from .search import Candidate, SearchConfig, SearchResult, run_search
from .training import TrainConfig, TrainingError, train

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PALETTE",
    "PALETTE_NAMES",
    "BlockType",
    "ConvSpec",
    "Palette",
    "BudgetError",
    "CostTable",
    "parse_budget",
    "sample_genotypes",
    "DataError",
    "ImageSet",
    "augment",
    "load_cifar10",
    "load_embedded_sample",
    "normalize",
    "BlockSwapError",
    "Genotype",
    "GenotypeError",
    "load_genotype",
    "Backbone",
    "BlockNetwork",
    "Taps",
    "build_network",
    "SCORERS",
    "FisherScorer",
    "FastFisherScorer",
    "Score",
    "Scorer",
    "make_scorer",
    "Candidate",
    "SearchConfig",
    "SearchResult",
    "run_search",
    "CheckpointError",
    "load_network",
    "DistillConfig",
    "attention_loss",
    "attention_map",
    "student_loss",
    "EvalReport",
    "evaluate_checkpoint",
    "Pruner",
    "nonzero_params",
    "TrainConfig",
    "TrainingError",
    "train",
]
