"""The plumbing floor: errors, counts, options and the recipe, run folders, registries, the machine, plugins,
the worker pool, distributed runs and precision. Imports nothing else of blockswap."""
