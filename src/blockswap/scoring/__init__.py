"""Scoring candidates before training: the scorer contract and registry, Fisher potential, the other
zero-cost proxies, proxies after training steps, per-weight importance (what pruning ranks by), and the fused
CPU kernels."""
