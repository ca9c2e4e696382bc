"""The search space: block types, backbones, networks built from genotypes, parameter/MAC counts, the
exact budget sampler and latency tables."""
