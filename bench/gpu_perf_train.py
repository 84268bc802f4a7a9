"""The `train` group of bench/gpu_perf.py (issue 14): the yoco-1.4b train step (bf16 compute,
float32 params and AdamW, state donated: yoco_jax.train.step.Trainer) on one GPU, with one lever
at a time changed from a baseline, most telling first: attention path, remat policy, batch x
length, scan over layers, loss chunk.

Each variant compiles its step ahead of time (compile_s), reads XLA's buffer plan (planned_gb:
arguments + outputs - donated + temporaries) and runs only if the plan fits the device, so an
out-of-memory step never eats the donated state; it is then timed (median of 5 steps after one
warm step). Rows: ms/step, tokens/s, model TFLOP/s (bench/flops.train_flops: 6 N per token plus
causal attention and retention, remat recompute not counted), MFU against the nominal bf16 peak
and against the matmul rate measured in the same run, device peak (when the variant set the
process record). A variant whose estimated time would pass the deadline is skipped. Should
the baseline (remat none) not fit, the levers are measured from remat save_all_named instead.

YOCO_PERF_TRAIN changes the baseline, comma-separated key=value, e.g.
    YOCO_PERF_TRAIN=config=yoco-3b,remat=save_all_named,batch=2 python -m bench.gpu_perf ...
(keys: those of BASELINE).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp

from bench import flops
from bench.machine import PeakTracker, device_memory_limit, matmul_rate, nominal_peak, planned_peak
from yoco_jax import get_config, sharding
from yoco_jax.model import build_model
from yoco_jax.model.cache import tree_bytes
from yoco_jax.train.config import TrainConfig
from yoco_jax.train.optim import learning_rate_schedule, make_optimizer
from yoco_jax.train.step import Trainer

BASELINE = {
    "config": "yoco-1.4b",
    "batch": 4,
    "length": 2048,
    "attention_impl": "auto",
    "remat": "none",
    "scan_layers": True,
    "loss_chunk": 1024,
}
# (lever, overrides of the baseline), most telling first: the deadline cuts the tail.
# Scanned layers compile in about the time of one layer, so the baseline scans and unrolling is
# measured once, late. Remat none keeps ~29 GB of activations per 8K tokens at 1.4B (traced
# residuals), so a larger batch is measured under a remat policy: compare it with that policy's
# own 4x2048 row.
LEVERS = [
    ("attention_impl", {"attention_impl": "pallas"}),  # auto: cuDNN (bf16, head dim 128)
    ("remat", {"remat": "save_qkv_and_mixer_out"}),
    ("remat", {"remat": "full"}),
    ("batch x length", {"batch": 8, "remat": "save_qkv_and_mixer_out"}),
    ("batch x length", {"batch": 2, "length": 4096}),
    ("remat", {"remat": "dots_with_no_batch_dims"}),
    ("scan_layers", {"scan_layers": False}),
    ("loss_chunk", {"loss_chunk": 4096}),
    ("remat", {"remat": "save_all_named"}),
    ("batch x length", {"batch": 16, "remat": "full"}),
    ("loss_chunk", {"loss_chunk": 256}),
    ("attention_impl", {"attention_impl": "xla"}),
]
SMOKE = {**BASELINE, "config": "yoco-tiny", "batch": 2, "length": 64, "loss_chunk": 32}
SMOKE_SCALE = 32  # smoke runs divide lengths and loss chunks by this
REPEATS = 5
FIT = 0.95  # a plan above this share of the device memory limit is not run
REBASE_REMAT = "save_all_named"  # the baseline's remat when remat none does not fit


def _baseline(smoke: bool) -> dict:
    base = dict(SMOKE if smoke else BASELINE)
    for item in filter(None, os.environ.get("YOCO_PERF_TRAIN", "").split(",")):
        key, _, value = item.partition("=")
        if key not in base:
            raise ValueError(f"YOCO_PERF_TRAIN: unknown key {key!r}; keys: {', '.join(base)}")
        kind = type(base[key])
        base[key] = value.lower() in ("1", "true") if kind is bool else kind(value)
    return base


def _scaled(overrides: dict, smoke: bool) -> dict:
    """The same lever at the tiny smoke baseline's scale (lengths and loss chunks divided)."""
    if not smoke:
        return overrides
    return {
        k: v // SMOKE_SCALE if k in ("length", "loss_chunk") else v for k, v in overrides.items()
    }


class _State:
    """The train state, kept across variants of one layer layout (it is donated to each step
    and handed back); a variant with the other layout replaces it (two would not fit)."""

    def __init__(self):
        self.state, self.scanned = None, None

    def get(self, trainer: Trainer, scanned: bool):
        alive = self.state is not None and not self.state.step.is_deleted()
        if not alive or self.scanned != scanned:
            self.state = None  # free the old one first
            self.state, self.scanned = trainer.init(0), scanned
        return self.state


def _measure(row: dict, s: dict, holder: _State, rates: dict) -> None:
    cfg = get_config(
        s["config"],
        dtype="bfloat16",
        attention_impl=s["attention_impl"],
        remat=s["remat"],
        scan_layers=s["scan_layers"],
    )
    batch, length = s["batch"], s["length"]
    settings = TrainConfig(batch_size=batch, seq_len=length)
    mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
    trainer = Trainer(
        build_model(cfg),
        make_optimizer(settings),
        learning_rate_schedule(settings),
        mesh,
        loss_chunk=s["loss_chunk"],
    )
    tokens = jax.random.randint(jax.random.key(3), (batch, length + 1), 0, cfg.vocab_size)
    ones = jnp.ones((batch, length), jnp.int32)
    data = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": ones}
    data["loss_mask"] = ones

    t0 = time.perf_counter()
    with sharding.ensure_mesh(mesh):  # the step's own jit, compiled ahead of time
        compiled = trainer._train_jit.lower(trainer.abstract_state, data).compile()
    row["compile_s"] = time.perf_counter() - t0
    planned, limit = planned_peak(compiled), device_memory_limit()
    row["planned_gb"] = None if planned is None else planned / 1e9
    if planned and limit and planned > FIT * limit:
        row["skipped"] = f"planned {planned / 1e9:.1f} GB > {FIT:.0%} of {limit / 1e9:.1f} GB"
        return
    state = [holder.get(trainer, cfg.scan_layers)]
    tracker = PeakTracker(owned_before=tree_bytes(state[0]))

    def step():
        state[0], metrics = compiled(state[0], data)
        holder.state = state[0]
        return metrics["loss"]

    jax.block_until_ready(step())  # warm
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        jax.block_until_ready(step())
        times.append(time.perf_counter() - t0)
    seconds = sorted(times)[REPEATS // 2]
    model_flops = flops.train_flops(cfg, batch, length)
    row["ms_per_step"] = 1e3 * seconds
    row["tokens_per_s"] = batch * length / seconds
    row["model_tflops"] = model_flops / seconds / 1e12
    if rates.get("nominal"):
        row["mfu_nominal"] = model_flops / seconds / rates["nominal"]
    if rates.get("matmul"):
        row["mfu_matmul"] = model_flops / seconds / rates["matmul"]
    peak = tracker.peak()
    row["peak_gb"] = None if peak is None else peak / 1e9


def _row(lever: str, overrides: dict, s: dict) -> dict:
    value = " ".join(f"{k}={v}" for k, v in overrides.items()) or "-"
    shape = f"{s['batch']}x{s['length']}"
    return {"case": f"train {s['config']}", "lever": lever, "value": value, "BxT": shape}


def _rebased_baseline(base: dict, holder: _State, rates: dict, deadline, estimate: float):
    row = _row("baseline", {"remat": base["remat"]}, base)
    if not deadline.allows(estimate):
        yield {**row, "skipped": "time budget"}
        return
    yield _attempt(row, base, holder, rates)


def _attempt(row: dict, s: dict, holder: _State, rates: dict) -> dict:
    try:
        _measure(row, s, holder, rates)
    except Exception as error:  # noqa: BLE001 - report every failure, keep benchmarking
        first = (str(error).strip().splitlines() or [""])[0]
        row["error"] = f"{type(error).__name__}: {first[:160]}"
    return row


def train_levers(cfg, deadline, smoke):
    """Rows of the baseline and of each lever (`cfg`, the gpu_perf shapes, is not used)."""
    del cfg
    # JAX takes 75% of GPU memory by default; remat none at 1.4B, 4x2048 needs ~65 GB. This
    # process's backend starts below (row "matmul" gives the limit it got).
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    base = _baseline(smoke)
    n = 256 if smoke else 8192
    rates = {"nominal": nominal_peak(jax.devices()[0].device_kind)}
    rates["matmul"] = matmul_rate(n, jnp.bfloat16)
    limit = device_memory_limit()
    yield {
        "case": "matmul",
        "lever": "-",
        "value": f"{n}^3 bf16",
        "model_tflops": rates["matmul"] / 1e12,
        "limit_gb": None if limit is None else limit / 1e9,
    }
    holder = _State()
    estimate = 10 if smoke else 90  # the first compile (and init), until one is measured
    for lever, overrides in [("baseline", {}), *LEVERS]:
        overrides = _scaled(overrides, smoke)
        s = {**base, **overrides}
        row = _row(lever, overrides, s)
        if lever != "baseline" and s == base:
            continue  # the baseline already has this value (YOCO_PERF_TRAIN)
        unrolled = not s["scan_layers"] and not smoke
        if not deadline.allows(2 * estimate if unrolled else estimate):
            yield {**row, "skipped": "time budget"}
            continue
        _attempt(row, s, holder, rates)
        if row.get("compile_s") and s["scan_layers"]:
            estimate = 1.3 * row["compile_s"] + (5 if smoke else 10)
        yield row
        if lever == "baseline" and "planned" in row.get("skipped", ""):
            # every lever but remat would not fit either: rebase them on the named policy
            # that keeps the most (its own row comes next, as the new baseline)
            base = {**base, "remat": REBASE_REMAT}
            yield from _rebased_baseline(base, holder, rates, deadline, estimate)
