"""The plumbing floor: errors, counts, options, run folders, the machine, distributed runs and precision.
Imports nothing else of blockswap."""
