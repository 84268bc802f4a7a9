"""Compile time against depth: `logits`, the train step and the decode loop of a tiny-width model
at 4 to 48 layers (CPU), with the layers unrolled and under one scan (`scan_layers=True`).
Unrolled, each grows with depth; scanned, the layer stack is traced and compiled once.

    python -m bench.compile_depth                          # yoco-tiny width, depths 4..48
    python -m bench.compile_depth --config transformer-tiny --depths 4 8 16

Each function is lowered (trace + StableHLO) and compiled from abstract shapes (nothing runs);
both times are reported. Writes bench/results/compile_depth.json and docs/bench-compile-depth.png;
docs/benchmarks.md renders the table from the JSON (bench/report.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

import yoco_jax
from bench.machine import describe
from yoco_jax import sharding
from yoco_jax.inference.decode_loop import DecodeState, decode_loop
from yoco_jax.inference.sampling import row_keys
from yoco_jax.model import build_model, init_cache
from yoco_jax.train.config import TrainConfig
from yoco_jax.train.optim import learning_rate_schedule, make_optimizer
from yoco_jax.train.step import Trainer

ROOT = Path(__file__).resolve().parent.parent
DEPTHS = [4, 8, 16, 32, 48]
BATCH, LENGTH, CACHE, STEPS = 2, 64, 128, 8
FORMS = {"unrolled": False, "scanned": True}  # form -> scan_layers
WHAT = ("logits", "train_step", "decode_loop")


def _timed(jitted, *args) -> dict:
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    lowered.compile()
    return {"lower_s": t1 - t0, "compile_s": time.perf_counter() - t1}


def measure(cfg) -> dict:
    """{what: {lower_s, compile_s}} for logits, train step and decode loop of `cfg`."""
    module = build_model(cfg)
    tokens = jax.ShapeDtypeStruct((BATCH, LENGTH), jnp.int32)
    boxed = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    params = nn.unbox(boxed["params"])
    out = {"logits": _timed(jax.jit(lambda p, t: module.apply({"params": p}, t)), params, tokens)}

    settings = TrainConfig(batch_size=BATCH, seq_len=LENGTH)
    mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
    trainer = Trainer(
        module,
        make_optimizer(settings),
        learning_rate_schedule(settings),
        mesh,
        loss_chunk=settings.loss_chunk,
    )
    batch = {name: tokens for name in ("inputs", "targets", "segment_ids", "loss_mask")}
    with sharding.use_mesh(mesh):
        out["train_step"] = _timed(trainer._train_jit, trainer.abstract_state, batch)

    vector = lambda dtype: jax.ShapeDtypeStruct((BATCH,), dtype)
    state = DecodeState(
        cache=jax.eval_shape(lambda: init_cache(cfg, BATCH, CACHE)),
        logits=jax.ShapeDtypeStruct((BATCH, cfg.vocab_size), jnp.float32),
        tokens=jax.ShapeDtypeStruct((BATCH, STEPS), jnp.int32),
        n_out=vector(jnp.int32),
        max_new=vector(jnp.int32),
        done=vector(jnp.bool_),
        keys=jax.eval_shape(lambda: row_keys(0, BATCH)),
        temperature=vector(jnp.float32),
        top_k=vector(jnp.int32),
        top_p=vector(jnp.float32),
    )
    stop = jax.ShapeDtypeStruct((1,), jnp.int32)
    args = (cfg, params, state, stop, jnp.int32(STEPS))
    out["decode_loop"] = _timed(decode_loop, *args)
    return out


def section(results: dict) -> str:
    """The markdown section of docs/benchmarks.md (rendered by bench/report.py)."""
    m = results["machine"]
    lines = [
        f"## Compile time against depth: {results['config']} width, {m['device']}, "
        f"jax {m['jax']}, {results['date']}\n",
        "`python -m bench.compile_depth`. Seconds to lower (trace + StableHLO) + compile, from"
        " abstract shapes, with the layers unrolled and scanned (`scan_layers=True`); train "
        f"step: AdamW, batch {BATCH} x {LENGTH}; decode loop: {STEPS} steps into a "
        f"{CACHE}-slot cache.\n",
        "| layers | layers are | logits | train step | decode loop |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in results["rows"]:
        for form in FORMS:
            times = row.get(form, {})
            cells = [
                f"{times[w]['lower_s']:.1f} + {times[w]['compile_s']:.1f}"
                if w in times
                else "skipped"
                for w in WHAT
            ]
            lines.append(f"| {row['layers']} | {form} | " + " | ".join(cells) + " |")
    if results.get("note"):
        lines.append(f"\n{results['note']}")
    if results.get("plot"):
        lines.append(f"\n![compile time against depth]({results['plot']})")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for form, style in zip(FORMS, ("-", "--")):
        rows = [r for r in results["rows"] if form in r]
        for what, color in zip(WHAT, ("C0", "C1", "C2")):
            total = [r[form][what]["lower_s"] + r[form][what]["compile_s"] for r in rows]
            ax.plot(
                [r["layers"] for r in rows],
                total,
                style,
                color=color,
                marker="o",
                label=f"{what}, {form}",
            )
    ax.set_xlabel("layers")
    ax.set_ylabel("lower + compile (s)")
    ax.set_title(f"Compile time, {results['config']} width, {results['machine']['device']}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="yoco-tiny")
    ap.add_argument("--depths", type=int, nargs="+", default=DEPTHS)
    ap.add_argument("--budget-s", type=float, default=900.0, help="skip depths after this")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    ap.add_argument("--note", default="", help="conditions of the run, shown under the table")
    args = ap.parse_args(argv)
    results = {
        "config": args.config,
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "note": args.note,
        "rows": [],
    }
    # Warm-up (not recorded): the first compilations of a process also pay one-time setup.
    for scan in FORMS.values():
        measure(yoco_jax.get_config(args.config, n_layers=2, scan_layers=scan))
    deadline = time.perf_counter() + args.budget_s
    print(
        f"{'layers':>6} {'form':>9} {'logits':>12} {'train step':>12} {'decode loop':>12}  "
        "(lower + compile, s)"
    )
    for depth in sorted(args.depths):
        row = {"layers": depth}
        results["rows"].append(row)
        for form, scan in FORMS.items():
            if time.perf_counter() > deadline:
                print(f"{depth:>6} {form:>9} skipped: time budget", flush=True)
                continue
            cfg = yoco_jax.get_config(args.config, n_layers=depth, scan_layers=scan)
            row[form] = measure(cfg)
            cells = [f"{t['lower_s']:5.1f} +{t['compile_s']:5.1f}" for t in row[form].values()]
            print(f"{depth:>6} {form:>9} " + " ".join(f"{c:>12}" for c in cells), flush=True)
    args.docs.mkdir(parents=True, exist_ok=True)
    results["plot"] = "bench-compile-depth.png"
    plot(results, args.docs / results["plot"])
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "compile_depth.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
