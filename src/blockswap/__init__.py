"""BlockSwap: Fisher-guided block substitution for network compression on a budget.

`import blockswap as bs` gives the public API used in the README. The three
registries (`register_backbone`, `register_block_type`, `register_scorer`)
are how a user extends the tool without editing it.
"""

from .backbones import Backbone, BlockShape, backbone_names, get_backbone, models_with_blocks, register_backbone
from .baselines import random_student, scaled, single_type, student_genotype
from .blocks import (
    DEFAULT_PALETTE,
    PALETTE_NAMES,
    BlockType,
    ConvSpec,
    Palette,
    block_type,
    register_block_type,
    registered_block_types,
)
from .candidates import Candidate, read_candidates
from .checkpoint import CheckpointError, load_network
from .counts import BudgetError, format_count, parse_budget
from .data import DataError, ImageSet, augment, load_cifar10, load_embedded_sample, load_split, normalize
from .distill import DistillConfig, attention_loss, attention_map, student_loss
from .distributed import Distributed, setup_distributed
from .errors import BlockSwapError
from .evaluate import EvalReport, evaluate_checkpoint
from .export import ExportReport, export_checkpoint, export_network
from .folders import FolderSplit, open_image_folder
from .genotype import Genotype, GenotypeError, load_genotype
from .networks import BlockNetwork, Taps, build_network, fixed_costs
from .proxies import RecipeSteps, TrainedScorer, average_scores
from .pruning import Pruner, nonzero_params
from .resnet_import import (
    backbone_from_module,
    backbone_from_state_dict,
    is_weight_file,
    genotype_of_weights,
    load_resnet,
    model_backbone,
    normalize_state_dict,
)
from .latency import LatencyTable, check_latency_table, latency_table, measure_latency_table
from .sampling import CostTable, sample_genotypes, uniform_genotypes
from .scoring import FastFisherScorer, FisherScorer, Score, Scorer, make_scorer, register_scorer, scorer_names
from .search import SearchConfig, SearchResult, run_search
from .training import RECIPES, DivergedError, TrainConfig, TrainingError, train

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PALETTE",
    "PALETTE_NAMES",
    "Backbone",
    "BlockNetwork",
    "BlockShape",
    "BlockSwapError",
    "BlockType",
    "BudgetError",
    "Candidate",
    "CheckpointError",
    "ConvSpec",
    "CostTable",
    "DataError",
    "DistillConfig",
    "Distributed",
    "EvalReport",
    "FastFisherScorer",
    "FisherScorer",
    "RecipeSteps",
    "TrainedScorer",
    "average_scores",
    "Genotype",
    "GenotypeError",
    "ImageSet",
    "Palette",
    "Pruner",
    "Score",
    "Scorer",
    "SearchConfig",
    "SearchResult",
    "Taps",
    "TrainConfig",
    "TrainingError",
    "DivergedError",
    "attention_loss",
    "attention_map",
    "augment",
    "backbone_from_module",
    "backbone_from_state_dict",
    "backbone_names",
    "block_type",
    "build_network",
    "evaluate_checkpoint",
    "fixed_costs",
    "format_count",
    "get_backbone",
    "is_weight_file",
    "load_cifar10",
    "load_embedded_sample",
    "load_genotype",
    "load_network",
    "load_resnet",
    "make_scorer",
    "nonzero_params",
    "normalize",
    "normalize_state_dict",
    "parse_budget",
    "random_student",
    "read_candidates",
    "register_backbone",
    "register_block_type",
    "register_scorer",
    "registered_block_types",
    "run_search",
    "sample_genotypes",
    "uniform_genotypes",
    "LatencyTable",
    "latency_table",
    "measure_latency_table",
    "check_latency_table",
    "scaled",
    "scorer_names",
    "setup_distributed",
    "single_type",
    "student_genotype",
    "student_loss",
    "train",
    "RECIPES",
    "FolderSplit",
    "open_image_folder",
    "load_split",
    "models_with_blocks",
    "model_backbone",
    "genotype_of_weights",
    "ExportReport",
    "export_checkpoint",
    "export_network",
]
