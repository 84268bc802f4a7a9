"""Pallas attention kernels (GPU: Triton; TPU: Mosaic), each tested against reference.py."""

from yoco_jax.kernels.flash_attention import BlockSizes, flash_attention

__all__ = ["BlockSizes", "flash_attention"]
