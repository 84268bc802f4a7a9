"""Context parallelism: per-device memory of a train step and communication volume per step.

    python -m bench.context_parallel [--lengths 16384,65536] [--contexts 1,2,4,8]

Writes bench/results/context_parallel.json; bench/report.py renders it into docs/benchmarks.md.

Memory: XLA's compiled memory analysis of the whole train step (forward, backward, AdamW) of a
small YOCO on `context` CPU devices (batch 1, mesh {context: n}), nothing executed. Temp is the
activation part; arguments are parameters, optimizer state and the batch (replicated over
`context`). Communication: bytes each device receives per step, from the shapes (forward and
backward), YOCO against a Transformer of the same size.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from yoco_jax import sharding  # noqa: E402
from yoco_jax.config import get_config  # noqa: E402
from yoco_jax.model import build_model  # noqa: E402
from yoco_jax.train.config import TrainConfig  # noqa: E402
from yoco_jax.train.optim import learning_rate_schedule, make_optimizer  # noqa: E402
from yoco_jax.train.step import Trainer  # noqa: E402

GiB = 2**30
RESULTS = Path(__file__).resolve().parent / "results" / "context_parallel.json"
SMALL = dict(n_layers=4, dim=128, hidden_dim=256, vocab_size=2048, chunk_size=256, remat="full")


def step_memory(config, length: int, context: int) -> dict:
    """Per-device bytes of one compiled train step with the sequence split `context` ways."""
    mesh = sharding.make_mesh({"context": context}, devices=jax.devices()[:context])
    settings = TrainConfig(batch_size=1, seq_len=length, loss_chunk=1024)
    trainer = Trainer(build_model(config), make_optimizer(settings),
                      learning_rate_schedule(settings), mesh, loss_chunk=1024)  # fmt: skip
    batch = {
        key: jax.ShapeDtypeStruct((1, length), dtype, sharding=trainer.batch_sharding)
        for key, dtype in (("inputs", jnp.int32), ("targets", jnp.int32),
                           ("segment_ids", jnp.int32), ("loss_mask", jnp.float32))
    }  # fmt: skip
    with sharding.use_mesh(mesh):
        compiled = trainer._train_jit.lower(trainer.abstract_state, batch).compile()
    memory = compiled.memory_analysis()
    return {"temp": memory.temp_size_in_bytes, "arguments": memory.argument_size_in_bytes}


def received_bytes(config, length: int, context: int, item: int = 2) -> int:
    """Bytes one device receives per train step (forward + backward) from the context axis.

    YOCO: gated retention all-gathers each slice's state [H, Dk, Dv] (float32) per self layer
    (a sliding window instead receives its halo of window - 1 keys and values); the cross-decoder
    all-gathers its ONE K/V. A Transformer all-gathers K/V in every layer. The backward pass
    moves the same volume back (reduce-scatter / reverse permutation).
    """
    n = context
    if n == 1:
        return 0
    kv = (n - 1) * (length // n) * 2 * config.n_attn_kv_heads * config.attn_head_dim * item
    if config.arch == "transformer":
        return 2 * config.n_layers * kv
    h, d = config.n_self_heads, config.self_head_dim
    if config.sliding_window is not None:
        halo = min(config.sliding_window - 1, (n - 1) * length // n)
        per_layer = halo * 2 * h * d * item
    else:
        per_layer = (n - 1) * h * d * d * 4
    return 2 * (config.half_layers * per_layer + kv)


def section(results: dict) -> str:
    """The docs/benchmarks.md section (rendered by bench/report.py from the saved results)."""
    out = [
        "## Context parallelism (`python -m bench.context_parallel`)\n",
        f"Train-step memory per device (XLA compiled memory analysis, {results['device']}, "
        f"jax {results['jax']}), small YOCO {results['model']}, batch 1, mesh {{context: n}}. "
        "Temp is the activation part; it falls as 1/n (the last column stays at 1.00). At these "
        "lengths it is dominated by the [T/n, T] scores per head of the XLA attention path, "
        "which the context-parallel ops use (a flash kernel would keep them per tile).\n",
        "| seq_len | context | temp GiB | temp x context / temp(1) | arguments MiB |",
        "|---|---|---|---|---|",
    ]
    base = {}
    for r in results["memory"]:
        base.setdefault(r["length"], r["temp"] * r["context"])
        out.append(
            f"| {r['length']} | {r['context']} | {r['temp'] / GiB:.3f} | "
            f"{r['temp'] * r['context'] / base[r['length']]:.2f} | {r['arguments'] / 2**20:.1f} |"
        )
    out += [
        "",
        "Bytes each device receives per train step (forward + backward) over the context axis, "
        "from the shapes, seq_len 262144, bf16 K/V: YOCO gathers one K/V (plus small retention "
        "states per self layer), the Transformer gathers K/V in every layer.\n",
        "| model | " + " | ".join(f"context {n}" for n in COMM_CONTEXTS) + " |",
        "|---|" + "---|" * len(COMM_CONTEXTS),
    ]
    for name, cells in results["communication"].items():
        out.append(f"| {name} | " + " | ".join(f"{c / GiB:.2f} GiB" for c in cells) + " |")
    return "\n".join(out) + "\n"


COMM_CONTEXTS = (2, 4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16384,65536")
    parser.add_argument("--contexts", default="1,2,4,8")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    config = get_config("yoco-tiny", dtype="float32", **SMALL)
    memory = []
    for length in map(int, args.lengths.split(",")):
        for n in map(int, args.contexts.split(",")):
            memory.append({"length": length, "context": n, **step_memory(config, length, n)})
            print(memory[-1], flush=True)
    communication = {
        name: [received_bytes(get_config(name), 262144, n) for n in COMM_CONTEXTS]
        for name in ("yoco-3b", "transformer-3b")
    }
    results = {"device": f"{jax.device_count()} CPU devices", "jax": jax.__version__,
               "model": SMALL, "memory": memory, "communication": communication}  # fmt: skip
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(section(results))


if __name__ == "__main__":
    main()
