"""Training a network: the recipe and its run folder, attention-transfer distillation, pruning, and the
baseline students the paper compares against."""
