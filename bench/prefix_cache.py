"""The server's automatic prefix cache: time to first token for prompts that share a long prefix
(a system prompt, a document) and end in short distinct suffixes, cold (no prefix cache) against
warm (the prefix cached by the first request), and the memory the cache entries take.

Runs the serving engine itself (serve/engine.py: the same prefill, insert and decode blocks as
`yoco-serve`, without HTTP), one request at a time so each first token is timed alone.

    python -m bench.prefix_cache               # yoco-demo, a 4K prefix: minutes on 2 CPUs
    python -m bench.prefix_cache --model yoco-tiny --prefix 512 --requests 4   # a smoke run
    python -m bench.prefix_cache --render bench/results/prefix-cache-cpu.json

Writes bench/results/prefix-cache-<backend>.json and the "Prefix cache" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
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
TITLE = "## Prefix cache: time to first token, cold vs warm"


def title(res: dict) -> str:
    return f"{TITLE} ({res['backend']})"


def first_tokens(engine, prompts: list[list[int]]) -> list[tuple[float, int]]:
    """(seconds to the first token, prompt tokens taken from the prefix cache) per prompt, each
    run alone to its first token (then to its one-token budget)."""
    from yoco_jax.serve.engine import Request

    out = []
    for prompt in prompts:
        done: dict = {}
        req = Request(prompt, 1, on_event=lambda kind, data, done=done: done.setdefault(kind, data))
        start = time.perf_counter()
        engine.submit(req)
        engine.run_until_idle()
        out.append((time.perf_counter() - start, done["done"].cached_tokens))
    return out


def measure(args) -> dict:
    from yoco_jax.api import init
    from yoco_jax.config import get_config
    from yoco_jax.serve.engine import Engine

    model = init(get_config(args.model, vocab_size=2048), seed=0)
    rng = np.random.default_rng(args.seed)
    shared = rng.integers(3, 2048, args.prefix).tolist()
    prompts = [shared + rng.integers(3, 2048, args.suffix).tolist() for _ in range(args.requests)]
    max_len = 1 << (args.prefix + args.suffix).bit_length()

    def engine(budget):
        e = Engine(
            model,
            None,
            slots=1,
            max_len=max_len,
            prefill_chunk=args.chunk,
            prefix_cache_bytes=budget,
        )
        first_tokens(e, [rng.integers(3, 2048, args.prefix + args.suffix).tolist()])  # compile
        return e

    cold = first_tokens(engine(0), prompts)
    warm_engine = engine(int(args.budget_mb * 2**20))
    warm = first_tokens(warm_engine, prompts)
    cache = warm_engine.prefix_cache
    return {
        "cold_s": [t for t, _ in cold],
        "warm_s": [t for t, _ in warm],
        "warm_cached": [c for _, c in warm],
        "entries": len(cache),
        "entry_bytes": cache.bytes,
        "params": sum(x.size for x in jax.tree.leaves(model.params)),
    }


def section(res: dict) -> str:
    cold, warm = np.median(res["cold_s"]), np.median(res["warm_s"][1:])  # the first one primes
    kv = res["entry_bytes"] / max(res["entries"], 1)
    return "\n".join(
        [
            title(res),
            "",
            f"`{res['command']}` on {res['device']} ({res['date']}): `{res['model']}` "
            f"({res['params'] / 1e6:.2f}M parameters), {res['requests']} prompts of a shared "
            f"{res['prefix']}-token prefix + {res['suffix']} distinct tokens, prefill chunk "
            f"{res['chunk']}, one request at a time. The first warm request fills the cache; the "
            "others start from its entry at the last chunk boundary inside the prefix."
            + (f" Note: {res['note']}" if res.get("note") else ""),
            "",
            "| | first token, median s | prompt tokens from the cache |",
            "|---|---|---|",
            f"| cold (--prefix-cache-mb 0) | {cold:.3f} | 0 |",
            f"| warm | {warm:.3f} | {int(np.median(res['warm_cached'][1:]))} |",
            "",
            f"Speed-up {cold / warm:.1f}x. The cache held {res['entries']} entries in "
            f"{res['entry_bytes'] / 2**20:.2f} MiB ({kv / 2**20:.2f} MiB each on average: one "
            "global K/V strip of the entry's length plus the self-decoder's states, no per-layer "
            "K/V).",
            "",
        ]
    )


def write_docs(res: dict, docs: Path) -> None:
    replace_section(docs / "benchmarks.md", title(res), section(res))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.prefix_cache", description=__doc__)
    p.add_argument("--model", default="yoco-demo", help="a YOCO config (vocab 2048)")
    p.add_argument("--prefix", type=int, default=4096, help="shared prefix tokens")
    p.add_argument("--suffix", type=int, default=16, help="distinct tokens after it")
    p.add_argument("--requests", type=int, default=6)
    p.add_argument("--chunk", type=int, default=512, help="prefill chunk")
    p.add_argument("--budget-mb", type=float, default=512.0, help="--prefix-cache-mb")
    p.add_argument("--seed", type=int, default=0)
    add_output_flags(p, "prefix-cache-<backend>.json", ROOT)
    flags = sys.argv[1:] if argv is None else argv
    args = p.parse_args(flags)
    if render_only(args, write_docs):
        return {}
    res = {
        "command": " ".join(["python -m bench.prefix_cache", *shown_flags(flags)]).strip(),
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "date": time.strftime("%Y-%m-%d"),
        **{k: getattr(args, k) for k in ("model", "prefix", "suffix", "requests", "chunk")},
        "note": args.note,
        **measure(args),
    }
    print("\n" + section(res))
    save_results(res, args, "prefix-cache", ROOT, write_docs)
    return res


if __name__ == "__main__":
    main()
