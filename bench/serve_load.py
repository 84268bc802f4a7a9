"""Serving under load: YOCO against the Transformer at the same cache memory budget.

Each model runs behind the real HTTP server (yoco_jax.serve, uvicorn in a thread) with as many
slots as its cache fits in the budget (`cache_bytes`; the Transformer's --transformer-slots set
the budget). An async client (httpx) sends the same requests to both: Poisson arrivals at each
--rates value, mixed prompt and output lengths, streamed; it measures requests/s, output
tokens/s, latency and time to first token (p50 / p99). Random weights and no tokenizer, so every
request generates exactly its max_tokens (no early EOS): speed does not depend on the weights.

    python -m bench.serve_load                          # yoco-demo, a few minutes on 2 CPUs
    python -m bench.serve_load --model yoco-tiny --requests 24 --rates 4
    python -m bench.serve_load --render bench/results/serve-cpu.json   # docs from saved results

Writes bench/results/serve-<backend>.json, docs/bench-serve-<backend>.png and the "Serving under
load (<backend>)" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import jax
import numpy as np

from bench.docs_section import (
    add_output_flags,
    render_only,
    replace_section,
    save_results,
    shown_flags,
)

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## Serving under load: YOCO vs Transformer"


def title(res: dict) -> str:
    return f"{TITLE} ({res['backend']})"


def workload(n: int, rate: float, prompt: tuple, output: tuple, vocab: int, seed: int):
    """n requests: (arrival second, prompt ids, max_tokens), Poisson arrivals at `rate`/s."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n)) - 1 / rate
    out = []
    for t in arrivals:
        ids = rng.integers(3, vocab, int(rng.integers(prompt[0], prompt[1] + 1))).tolist()
        out.append((float(max(t, 0.0)), ids, int(rng.integers(output[0], output[1] + 1))))
    return out


async def _one(client, url: str, at: float, ids: list, max_tokens: int, t0: float) -> dict:
    await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
    body = {
        "prompt": ids,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"status": r.status_code}
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event["choices"] and first is None:
                first = time.perf_counter()
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {
        "status": 200,
        "sent": sent,
        "end": end,
        "ttft": first - sent,
        "latency": end - sent,
        "tokens": tokens,
    }


async def drive(url: str, requests: list) -> list[dict]:
    import httpx

    limits = httpx.Limits(max_connections=len(requests) + 1)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        t0 = time.perf_counter()
        return await asyncio.gather(*(_one(client, url, *r, t0) for r in requests))


def summarize(results: list[dict]) -> dict:
    ok = [r for r in results if r["status"] == 200]
    span = max(r["end"] for r in ok) - min(r["sent"] for r in ok)
    pct = lambda key, q: float(np.percentile([r[key] for r in ok], q))
    return {
        "ok": len(ok),
        "rejected": len(results) - len(ok),
        "seconds": span,
        "requests_per_s": len(ok) / span,
        "tokens_per_s": sum(r["tokens"] for r in ok) / span,
        "latency_p50": pct("latency", 50),
        "latency_p99": pct("latency", 99),
        "ttft_p50": pct("ttft", 50),
        "ttft_p99": pct("ttft", 99),
    }


def serve_model(config, slots: int, args, loads: dict) -> dict:
    """Starts the server for one model, runs every rate's workload, stops it."""
    import yoco_jax
    from yoco_jax.serve.app import create_app
    from yoco_jax.serve.background import BackgroundServer
    from yoco_jax.serve.engine import Engine

    model = yoco_jax.init(config, seed=0)
    engine = Engine(
        model,
        None,
        slots=slots,
        max_len=args.max_len,
        prefill_chunk=args.chunk,
        queue_limit=args.requests,
        block=args.block,
    )
    t0 = time.perf_counter()
    engine.warmup()
    out = {"slots": slots, "compile_s": time.perf_counter() - t0, "runs": {}}
    server = BackgroundServer(create_app(engine, config.arch))
    try:
        for rate, requests in loads.items():
            out["runs"][rate] = summarize(asyncio.run(drive(server.url, requests)))
            print(f"  {config.arch} rate {rate}/s: {out['runs'][rate]}", flush=True)
    finally:
        server.stop()
    return out


def section(res: dict) -> str:
    """The docs/benchmarks.md section of a results JSON."""
    rows = []
    for arch in ("yoco", "transformer"):
        m = res[arch]
        for rate, r in m["runs"].items():
            rows.append(
                f"| {'YOCO' if arch == 'yoco' else 'Transformer'} | {m['slots']} "
                f"({m['cache_bytes'] / 2**20:.1f} MiB) | {rate} | {r['requests_per_s']:.2f} | "
                f"{r['tokens_per_s']:.0f} | {r['latency_p50']:.2f} / {r['latency_p99']:.2f} | "
                f"{r['ttft_p50']:.2f} / {r['ttft_p99']:.2f} |"
            )
    return "\n".join(
        [
            title(res),
            "",
            f"`{res['command']}` on {res['device']} ({res['date']}): `{res['model']}` "
            f"({res['params'] / 1e6:.2f}M parameters) and the Transformer of its width, depth and "
            "heads (FFN widened to the same parameter count), each behind `yoco-serve` "
            f"(max-len {res['max_len']}, decode blocks "
            f"of {res['block']}) with as many slots as its cache fits in the Transformer's "
            f"{res['transformer']['slots']} slots' bytes; {res['requests']} streamed requests per "
            f"rate, Poisson arrivals, prompts of {res['prompt'][0]}-{res['prompt'][1]} tokens, "
            f"outputs of {res['output'][0]}-{res['output'][1]}. Latency and time to first token in "
            "seconds, p50 / p99." + (f" Note: {res['note']}" if res.get("note") else ""),
            "",
            "| model | slots (cache) | offered req/s | served req/s | output tok/s | latency s | "
            "first token s |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"![serving under load](bench-serve-{res['backend']}.png)",
            "",
        ]
    )


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for arch, label in (("yoco", "YOCO"), ("transformer", "Transformer")):
        runs = res[arch]["runs"]
        rates = [float(r) for r in runs]
        name = f"{label} ({res[arch]['slots']} slots)"
        axes[0].plot(rates, [r["tokens_per_s"] for r in runs.values()], "o-", label=name)
        axes[1].plot(rates, [r["latency_p50"] for r in runs.values()], "o-", label=name)
    for ax, what in zip(axes, ("output tokens/s", "p50 latency (s)")):
        ax.set(xlabel="offered requests/s", ylabel=what)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Serving at the same cache memory ({res['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_docs(res: dict, docs: Path) -> None:
    """The plot, and this result's section of docs/benchmarks.md replaced (or appended)."""
    plot(res, docs / f"bench-serve-{res['backend']}.png")
    replace_section(docs / "benchmarks.md", title(res), section(res))


def _pair(text: str) -> tuple[int, int]:
    lo, hi = (int(x) for x in text.split(","))
    return lo, hi


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__)
    p.add_argument("--model", default="yoco-demo", help="the YOCO config (vocab 2048)")
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--transformer-slots", type=int, default=4, help="sets the memory budget")
    p.add_argument("--max-slots", type=int, default=64)
    p.add_argument("--requests", type=int, default=48, help="per rate")
    p.add_argument("--rates", default="4,16", help="offered requests/s, comma-separated")
    p.add_argument("--prompt", type=_pair, default=(16, 256), help="min,max prompt tokens")
    p.add_argument("--output", type=_pair, default=(16, 64), help="min,max output tokens")
    p.add_argument("--chunk", type=int, default=256, help="prefill chunk")
    p.add_argument("--block", type=int, default=4, help="decode block")
    p.add_argument("--seed", type=int, default=0)
    add_output_flags(p, "serve-<backend>.json", ROOT)
    args = p.parse_args(argv)
    if render_only(args, write_docs):
        return {}

    from bench.quality import matched_transformer, n_params
    from yoco_jax.config import get_config
    from yoco_jax.model.cache import cache_bytes

    yoco = get_config(args.model, vocab_size=2048)
    transformer = matched_transformer(yoco)
    budget = cache_bytes(transformer, args.transformer_slots, args.max_len)
    yoco_slots = min(args.max_slots, budget // cache_bytes(yoco, 1, args.max_len))
    rates = [float(r) for r in args.rates.split(",")]
    loads = {
        str(r): workload(args.requests, r, args.prompt, args.output, 2048, args.seed) for r in rates
    }
    res = {
        "command": " ".join(["python -m bench.serve_load", *shown_flags(argv or [])]).strip(),
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "date": time.strftime("%Y-%m-%d"),
        "model": args.model,
        "params": n_params(yoco),
        "max_len": args.max_len,
        "block": args.block,
        "requests": args.requests,
        "prompt": list(args.prompt),
        "output": list(args.output),
        "note": args.note,
    }
    for arch, config, slots in (
        ("yoco", yoco, yoco_slots),
        ("transformer", transformer, args.transformer_slots),
    ):
        print(f"{arch}: {slots} slots", flush=True)
        res[arch] = serve_model(config, slots, args, loads)
        res[arch]["cache_bytes"] = cache_bytes(config, slots, args.max_len)
    print("\n" + section(res))
    save_results(res, args, "serve", ROOT, write_docs)
    return res


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
