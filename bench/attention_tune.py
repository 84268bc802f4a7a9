"""Tile and pipelining sweep for the Triton flash-attention kernels at yoco-3b's shape (32K).

    PYTHONPATH=. python bench/attention_tune.py
Prints forward and forward+backward TFLOP/s for each (rows, keys, warps, stages) choice; the
winners become DEFAULT_BLOCK_SIZES / the compiler parameters in yoco_jax/kernels.
"""

import itertools
import time

import jax
import jax.numpy as jnp
from jax.experimental.pallas import triton as plgpu

import yoco_jax.kernels.flash_attention_gpu as gpu
from yoco_jax.kernels import BlockSizes, flash_attention

B, T, H, HKV, D = 1, 32768, 24, 8, 128
FWD_FLOPS = 4 * H * T * T * D / 2


def timed(fn, *args, reps=5):
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(reps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / reps


def main():
    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (B, T, H, D), jnp.bfloat16)
    k = jax.random.normal(ks[1], (B, T, HKV, D), jnp.bfloat16)
    v = jax.random.normal(ks[2], (B, T, HKV, D), jnp.bfloat16)
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, T={T}, {H}/{HKV} heads, D={D}")
    for rows, keys, warps, stages in itertools.product((64, 128), (64, 128), (4, 8), (2, 3)):
        gpu.compiler_params = lambda w=warps, s=stages: plgpu.CompilerParams(
            num_warps=w, num_stages=s
        )
        blocks = BlockSizes(rows=rows, keys=keys, rows_bwd=rows, keys_bwd=keys)
        attend = lambda q, k, v, blocks=blocks: flash_attention(q, k, v, block_sizes=blocks)
        loss = lambda q, k, v, attend=attend: attend(q, k, v).astype(jnp.float32).sum()
        try:
            fwd = timed(jax.jit(attend), q, k, v)
            both = timed(jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))), q, k, v)
            result = (
                f"fwd {FWD_FLOPS / fwd / 1e12:6.1f}  fwd+bwd {3.5 * FWD_FLOPS / both / 1e12:6.1f}"
            )
        except Exception as e:  # a tile that does not compile is a row, not a crash
            result = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        print(f"rows {rows:3d} keys {keys:3d} warps {warps} stages {stages}: {result}", flush=True)


if __name__ == "__main__":
    main()
