"""Pallas attention kernels (GPU: Triton; TPU: Mosaic), each tested against reference.py.

flash_attention: training / prefill (differentiable). decode_attention: few queries against a long
cache with per-sequence lengths (flash-decoding). chunk_attention: a prefill chunk against a long
cache (flash forward with a per-sequence query offset). retention_forward: chunkwise gated
retention with a state in and out (GPU only: retention_gpu.py; its VJP retention_gpu_backward.py).
Signatures: docs/architecture.md.
"""

from yoco_jax.kernels.chunk_attention import chunk_attention
from yoco_jax.kernels.decode_attention import decode_attention
from yoco_jax.kernels.flash_attention import BlockSizes, flash_attention
from yoco_jax.kernels.retention_gpu import retention_forward

__all__ = [
    "BlockSizes",
    "chunk_attention",
    "decode_attention",
    "flash_attention",
    "retention_forward",
]
