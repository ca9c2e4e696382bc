"""BlockSwap: Fisher-guided block substitution for network compression on a budget.

`import blockswap as bs` gives the public API used in the README.
"""

from .blocks import DEFAULT_PALETTE, PALETTE_NAMES, BlockType, ConvSpec, Palette
from .budget import BudgetError, CostTable, parse_budget, sample_genotypes
from .data import DataError, ImageSet, augment, load_cifar10, load_embedded_sample, normalize
from .errors import BlockSwapError
from .genotype import Genotype, GenotypeError, load_genotype
from .networks import Backbone, BlockNetwork, Taps, build_network
from .scoring import SCORERS, FastFisherScorer, FisherScorer, Score, Scorer, make_scorer
from .search import Candidate, SearchConfig, SearchResult, run_search

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
]
