"""Our side of bench/peer_fla.py (JAX): the retention kernel, the check outputs, and the model's
prefill, decode and train step, each timed as bench/peer_fla.py describes. Runs in its own process.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench.models import decode as decode_loop
from bench.models import empty_cache, extend, param_shapes, random_params
from bench.peer_fla import time_runs
from yoco_jax.config import get_config
from yoco_jax.model import build_model
from yoco_jax.ops.retention import chunkwise_retention
from yoco_jax.train.loss import cross_entropy_sums

# Rough seconds per case on an H100 (first calls compile), for the budget's skip decisions.
ESTIMATES = {"kernel_fwd": 8, "kernel_bwd": 12, "check": 4, "decode": 25, "train": 50}


def _synced(fn, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


class Side:
    def __init__(self, spec: dict):
        self.spec, self.sizes, self.smoke = spec, spec["sizes"], spec["smoke"]
        if jax.default_backend() != "gpu" and not self.smoke:
            raise RuntimeError(f"no GPU found (JAX backend {jax.default_backend()!r})")
        self.cfg = get_config(self.sizes["model"], dtype="bfloat16", param_dtype="bfloat16")
        self.params = None
        self.prefilled = False

    def info(self) -> dict:
        leaves = jax.tree.leaves(param_shapes(self.cfg))
        return {
            "device": jax.devices()[0].device_kind,
            "framework": f"jax {jax.__version__}",
            "params": sum(int(np.prod(x.shape)) for x in leaves),
            "chunk": self.cfg.chunk_size,
        }

    def estimate(self, case: str, t: int) -> float:
        if self.smoke:
            return 1.0
        if case == "prefill":  # the first length compiles the chunk function (and draws weights)
            return (3 + 4 * t / 2**17) + (0 if self.prefilled else 40)
        return ESTIMATES[case] * (1 + t / 2**18 if case.startswith("kernel") else 1)

    def recover(self) -> None:
        """Nothing to release: a failed case's arrays die with its frame."""

    def run(self, case: str, t: int) -> dict:
        if case.startswith("kernel"):
            return self.kernel(t, backward=case == "kernel_bwd")
        return getattr(self, case)(t)

    def _model(self):
        if self.params is None:
            self.params = random_params(self.cfg)
        return self.params

    def kernel(self, t: int, backward: bool) -> dict:
        h, d = self.cfg.n_self_heads, self.cfg.self_head_dim
        keys = jax.random.split(jax.random.key(t), 5)
        q, k, v, do = (jax.random.normal(keys[i], (1, t, h, d), jnp.bfloat16) for i in range(4))
        g = jax.nn.log_sigmoid(jax.random.normal(keys[4], (1, t, h))) / 16
        forward = functools.partial(_retention, chunk=self.cfg.chunk_size)
        if backward:  # the gradients for a given output gradient, as torch's o.backward(do)
            fn = jax.jit(lambda q, k, v, g, do: jax.vjp(forward, q, k, v, g)[1](do))
            args = (q, k, v, g, do)
        else:
            fn, args = jax.jit(forward), (q, k, v, g)
        timing = time_runs(lambda: _synced(fn, *args))
        return {**timing, "ms": 1e3 * timing["seconds"], "tokens_per_s": t / timing["seconds"]}

    def check(self, t: int) -> dict:
        data = np.load(self.spec["check_inputs"])
        q, k, v = (jnp.asarray(data[n], jnp.bfloat16) for n in "qkv")
        fn = jax.jit(functools.partial(chunkwise_retention, chunk_size=self.cfg.chunk_size))
        out, state = fn(q, k, v, jnp.asarray(data["g"], jnp.float32))
        path = Path(self.spec["check_dir"]) / "ours.npz"
        np.savez(path, out=np.asarray(out, np.float32), state=np.asarray(state, np.float32))
        return {"saved": path.name}

    def prefill(self, t: int) -> dict:
        """Chunks into one cache of the longest prefill length: one compiled chunk function
        serves every length (the cross-decoder reads only the filled part)."""
        cfg, params = self.cfg, self._model()
        chunk, cap = min(self.sizes["prefill_chunk"], t), max(self.sizes["prefill_lengths"])
        tokens = jax.random.randint(jax.random.key(1), (1, t), 0, cfg.vocab_size)
        chunks = [tokens[:, i : i + chunk] for i in range(0, t, chunk)]

        def run() -> float:
            cache = jax.block_until_ready(empty_cache(cfg, 1, cap, 0))
            t0 = time.perf_counter()
            for c in chunks:
                logits, cache = extend(cfg, params, c, cache, fresh=False)
            jax.block_until_ready((logits, cache))
            return time.perf_counter() - t0

        timing = time_runs(run, repeats=3 if t <= 2**17 else 2)
        self.prefilled = True
        return {**timing, "tokens_per_s": t / timing["seconds"], "chunk": chunk}

    def decode(self, t: int) -> dict:
        """`decode_steps` greedy steps in one jitted loop, from a cache holding t tokens."""
        cfg, params, steps = self.cfg, self._model(), self.sizes["decode_steps"]
        token = jnp.zeros((1, 1), jnp.int32)

        def run() -> float:
            cache = jax.block_until_ready(empty_cache(cfg, 1, t + steps, t))
            return _synced(decode_loop, cfg, params, cache, token, steps)

        timing = time_runs(run)
        step_s = timing["seconds"] / steps
        return {**timing, "ms_per_token": 1e3 * step_s, "tokens_per_s": 1 / step_s, "batch": 1}

    def train(self, t: int) -> dict:
        """Forward + backward of the mean next-token cross-entropy (as the Trainer's loss)."""
        cfg, params, batch = self.cfg, self._model(), self.sizes["train_batch"]
        module = build_model(cfg)

        def loss(p, inputs, targets):
            hidden = module.apply({"params": p}, inputs, method="hidden")
            mask = jnp.ones(targets.shape, jnp.float32)
            total, count = cross_entropy_sums(
                hidden, p["output_projection"]["kernel"], targets, mask
            )
            return total / count

        step = jax.jit(jax.value_and_grad(loss))
        tokens = jax.random.randint(jax.random.key(3), (batch, t + 1), 0, cfg.vocab_size)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        timing = time_runs(lambda: _synced(step, params, inputs, targets))
        return {**timing, "tokens_per_s": batch * t / timing["seconds"], "batch": batch}


def _retention(q, k, v, g, chunk):
    return chunkwise_retention(q, k, v, g, chunk)[0]
