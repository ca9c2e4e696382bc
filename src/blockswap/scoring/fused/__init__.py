"""The CPU fused batch-norm scoring path: Numba kernels and the module swaps that use them.

While `fused_batch_norms(model)` is active, every `nn.BatchNorm2d` of the
model runs as one fused kernel on NHWC float32 CPU batches, and a ReLU that
is the only reader of a BN's output is folded into it (`bn_relu_pairs` finds
those pairs by tracing each module's forward with torch.fx, so the networks
carry no annotations for it). `fisher_potential` sums a block's Fisher
potential in float64. Only the fast scorer uses this package; Numba is
imported when a kernel is first needed.
"""

from __future__ import annotations

from .batchnorm import FusedBatchNorm, bn_relu_pairs, fisher_potential, fused_batch_norms

__all__ = ["FusedBatchNorm", "bn_relu_pairs", "fisher_potential", "fused_batch_norms"]
