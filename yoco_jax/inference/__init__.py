"""Inference: sampling, chunked prefill, the jitted decode loop, generate, cache files."""

from yoco_jax.inference.cache_io import load_cache, save_cache
from yoco_jax.inference.chunked_prefill import prefill
from yoco_jax.inference.decode_loop import DecodeState, decode, start_decode
from yoco_jax.inference.generate import Completion, generate
from yoco_jax.inference.plan import Buckets
from yoco_jax.inference.sampling import Sampling
from yoco_jax.model.cache import resize_cache

__all__ = [
    "Buckets",
    "Completion",
    "DecodeState",
    "Sampling",
    "decode",
    "generate",
    "resize_cache",
    "load_cache",
    "prefill",
    "save_cache",
    "start_decode",
]
