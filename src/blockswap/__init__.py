"""BlockSwap: Fisher-guided block substitution for network compression on a budget.

`import blockswap as bs` gives the public API (docs/python-api.md). The three
registries (`register_backbone`, `register_block_type`, `register_scorer`)
are how a user extends the tool without editing it.
"""

from .data import load_split
from .data.cifar import DataError, ImageSet, augment, load_cifar10, load_embedded_sample, normalize
from .data.imagefolder import FolderSplit, open_image_folder
from .deploy.evaluate import EvalConfig, EvalReport, evaluate_checkpoint
from .deploy.export import ExportReport, export_checkpoint, export_network
from .scoring.fisher import FastFisherScorer, FisherScorer
from .scoring.importance import Importance, MagnitudeImportance, SnipImportance
from .scoring.scorer import (
    Score,
    Scorer,
    ScorerInfo,
    average_scores,
    make_scorer,
    model_state,
    register_scorer,
    scorer_info,
    scorer_names,
)
from .scoring.trained import RecipeSteps, TrainedScorer
from .search.candidates import Candidate, read_candidates
from .search.run import SearchConfig, SearchResult, run_search
from .space.backbones import Backbone, BlockShape, backbone_names, get_backbone, models_with_blocks, register_backbone
from .space.blocks import (
    DEFAULT_PALETTE,
    PALETTE_NAMES,
    BlockType,
    ConvSpec,
    Palette,
    block_type,
    register_block_type,
    registered_block_types,
)
from .space.drawing import GenotypePlot, plot_genotype
from .space.genotype import Genotype, GenotypeError, load_genotype
from .space.latency import LatencyTable, check_latency_table, latency_table, measure_latency_table
from .space.networks import BlockNetwork, Taps, build_network, fixed_costs
from .space.sampling import CostTable, sample_genotypes, uniform_genotypes
from .train.baselines import random_student, scaled, single_type, student_genotype
from .train.distill import DistillConfig, attention_loss, attention_map, student_loss
from .train.pruning import Pruner, nonzero_params
from .train.training import RECIPES, DivergedError, TrainConfig, TrainingError, train
from .util.counts import BudgetError, format_count, parse_budget
from .util.distributed import Distributed, setup_distributed
from .util.errors import BlockSwapError
from .util.recipe import Recipe
from .weights.checkpoint import CheckpointError
from .weights.resnet_import import backbone_from_module, backbone_from_state_dict, is_weight_file, normalize_state_dict
from .weights.teachers import genotype_of_weights, load_network, load_resnet, model_backbone

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
    "EvalConfig",
    "EvalReport",
    "GenotypePlot",
    "FastFisherScorer",
    "FisherScorer",
    "Recipe",
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
    "ScorerInfo",
    "Importance",
    "MagnitudeImportance",
    "SnipImportance",
    "model_state",
    "scorer_info",
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
    "plot_genotype",
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
