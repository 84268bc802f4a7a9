"""Sizes of the three suites: `smoke` (seconds, for tests), `cpu` (< 10 min on 2 cores), `gpu`
(3B models on one 80 GB H100/H200, < 8 min)."""

from __future__ import annotations

import dataclasses

from yoco_jax.config import ModelConfig, get_config

K = 1024


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    yoco: ModelConfig
    prefill_lengths: tuple[int, ...]  # ascending: cases run in order of memory
    yoco_prefill_chunk: int  # tokens per extend call
    transformer_prefill_chunk: int
    decode_lengths: tuple[int, ...]
    decode_steps: int
    memory_budget: int  # bytes of weights + cache for the same-memory decode comparison
    max_batch: int
    retention: dict  # batch, heads, head_dim, chunk, lengths, parallel_max, recurrent_max
    train: ModelConfig
    train_batch: int
    train_length: int
    matmul_n: int
    copy_bytes: int

    @property
    def transformer(self) -> ModelConfig:
        return dataclasses.replace(self.yoco, arch="transformer")


# The CPU model: matmuls wide enough to run near the machine's rate, and few attention layers and
# heads, since the Transformer's XLA attention at 32K moves ~40 bytes per (query, key, head).
_small = dict(dim=128, n_layers=2, hidden_dim=384, n_self_heads=1, n_attn_heads=1)
_small.update(n_attn_kv_heads=1, vocab_size=512, chunk_size=128)
_tiny = dict(dim=32, n_layers=2, hidden_dim=64, n_self_heads=1, n_attn_heads=2)
_tiny.update(n_attn_kv_heads=1, vocab_size=64, chunk_size=16)
_bf16 = dict(dtype="bfloat16", param_dtype="bfloat16")


def get_profile(name: str) -> Profile:
    if name == "smoke":
        return Profile(
            name="smoke",
            yoco=get_config("yoco-tiny", **_tiny),
            prefill_lengths=(128,),
            yoco_prefill_chunk=64,
            transformer_prefill_chunk=64,
            decode_lengths=(128,),
            decode_steps=2,
            memory_budget=2 * 2**20,
            max_batch=8,
            retention=dict(
                batch=1,
                heads=2,
                head_dim=16,
                chunk=16,
                lengths=(64, 128),
                parallel_max=128,
                recurrent_max=64,
            ),
            train=get_config("yoco-tiny", **_tiny),
            train_batch=2,
            train_length=64,
            matmul_n=256,
            copy_bytes=2**22,
        )
    if name == "cpu":
        return Profile(
            name="cpu",
            yoco=get_config("yoco-tiny", **_small),
            prefill_lengths=(2 * K, 4 * K, 8 * K, 16 * K, 32 * K),
            yoco_prefill_chunk=2 * K,
            transformer_prefill_chunk=2 * K,
            decode_lengths=(4 * K, 8 * K, 16 * K, 32 * K),
            decode_steps=8,
            memory_budget=128 * 2**20,
            max_batch=64,
            retention=dict(
                batch=1,
                heads=2,
                head_dim=64,
                chunk=128,
                lengths=(1 * K, 2 * K, 4 * K, 8 * K, 16 * K, 32 * K),
                parallel_max=4 * K,
                recurrent_max=8 * K,
            ),
            train=get_config(
                "yoco-tiny",
                **{
                    **_small,
                    "dim": 256,
                    "n_layers": 4,
                    "hidden_dim": 768,
                    "n_self_heads": 2,
                    "n_attn_heads": 4,
                    "n_attn_kv_heads": 2,
                },
            ),
            train_batch=4,
            train_length=512,
            matmul_n=2048,
            copy_bytes=2**28,
        )
    if name == "gpu":
        return Profile(
            name="gpu",
            yoco=get_config("yoco-3b", **_bf16),
            prefill_lengths=(32 * K, 64 * K, 128 * K, 256 * K, 512 * K, 1024 * K),
            yoco_prefill_chunk=32 * K,
            transformer_prefill_chunk=1024 * K,  # one call: flash attention over the prompt
            decode_lengths=(32 * K, 128 * K, 512 * K, 64 * K, 256 * K),  # most wanted first
            decode_steps=8,
            memory_budget=64 * 10**9,
            max_batch=512,
            retention=dict(
                batch=1,
                heads=24,
                head_dim=128,
                chunk=256,
                lengths=(4 * K, 16 * K, 64 * K, 256 * K),
                parallel_max=8 * K,
                recurrent_max=16 * K,
            ),
            train=get_config("yoco-1.4b", dtype="bfloat16"),
            train_batch=4,
            train_length=2048,
            matmul_n=8192,
            copy_bytes=2**31,
        )
    raise ValueError(f"unknown profile {name!r}: choose smoke, cpu or gpu")


def memory_configs() -> tuple[ModelConfig, ModelConfig]:
    """The paper's memory profile: yoco-3b and transformer-3b in bfloat16."""
    return get_config("yoco-3b", **_bf16), get_config("transformer-3b", **_bf16)


MEMORY_LENGTHS = (32 * K, 64 * K, 128 * K, 256 * K, 512 * K, 1024 * K)

# Paper (3B, H100-80GB): Transformer / YOCO.
PAPER = {
    "memory": {
        32 * K: 1.95,
        64 * K: 2.32,
        128 * K: 3.01,
        256 * K: 4.16,
        512 * K: 6.39,
        1024 * K: 9.38,
    },
    "prefill": {
        32 * K: 2.87,
        64 * K: 5.05,
        128 * K: 8.36,
        256 * K: 15.55,
        512 * K: 30.3,
        1024 * K: 71.82,
    },
    "throughput": {32 * K: 2.72, 64 * K: 2.57, 128 * K: 2.77, 256 * K: 4.37, 512 * K: 9.56},
}
