"""Runs the benchmark suite and writes bench/results/<profile>.json, docs/benchmarks.md and plots.

    python -m bench.suite --device cpu            # small model, contexts to 32K, < 10 min
    python -m bench.suite --device gpu --budget-s 330   # yoco-3b vs transformer-3b on one GPU
    python -m bench.suite --device cpu --smoke    # tiniest sizes, seconds (tests)

Sections run in order (calibration, memory, prefill, decode, retention, train), each within its
share of --budget-s; a case that would overrun, does not fit or fails is written into its table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARES = {"memory": 0.02, "prefill": 0.38, "decode": 0.32, "retention": 0.08, "train": 0.2}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "gpu"), required=True)
    ap.add_argument("--smoke", action="store_true", help="tiniest sizes (seconds; for tests)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-clock budget; later cases are skipped (default 540 cpu, 330 gpu)",
    )
    ap.add_argument("--sections", default=",".join(SHARES), help="comma-separated subset")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--docs-dir", type=Path, default=ROOT / "docs")
    ap.add_argument(
        "--compile-cache",
        type=Path,
        default=None,
        help="persistent XLA compilation cache (a rerun on the same machine skips most compiles)",
    )
    return ap.parse_args(argv)


def _jsonable(x):
    if dataclasses.is_dataclass(x):
        return {k: v for k, v in dataclasses.asdict(x).items()}
    raise TypeError(f"cannot serialize {type(x).__name__}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device == "gpu":  # the 3B decode cases need most of the card, not XLA's default 75%
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    import jax

    from bench import decode, machine, memory, prefill, report, retention, train
    from bench.profiles import get_profile
    from bench.runner import Budget, Context

    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", str(args.compile_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    backend = jax.default_backend()
    if (args.device == "gpu") != (backend == "gpu"):
        sys.exit(f"--device {args.device} asked for, but JAX's default backend is {backend}")
    profile = get_profile("smoke" if args.smoke else args.device)
    sections = [s for s in SHARES if s in args.sections.split(",")]
    unknown = set(args.sections.split(",")) - set(SHARES)
    if unknown:
        sys.exit(f"unknown sections {sorted(unknown)}; choose from {', '.join(SHARES)}")
    budget_s = args.budget_s or (300 if args.smoke else 540 if args.device == "cpu" else 330)
    budget = Budget(budget_s, {s: SHARES[s] for s in sections})

    info = machine.describe()
    print(
        f"bench: {profile.name} suite on {info['device']} (jax {info['jax']}), budget "
        f"{budget_s:.0f} s",
        flush=True,
    )
    dtype = jax.numpy.bfloat16 if backend != "cpu" else jax.numpy.float32
    calibration = {
        "matmul_rate": machine.matmul_rate(profile.matmul_n, dtype),
        "matmul_dtype": jax.numpy.dtype(dtype).name,
    }
    calibration.update(
        {f"{k}_bandwidth": v for k, v in machine.bandwidths(profile.copy_bytes).items()}
    )
    ctx = Context(
        profile,
        budget,
        calibration["matmul_rate"],
        calibration["floor_bandwidth"],
        info["device_memory"],
        compile_s=1.0 if backend == "cpu" else 20.0,
    )
    ctx.log(
        f"calibration: matmul {calibration['matmul_rate'] / 1e12:.3f} TFLOP/s "
        f"({calibration['matmul_dtype']}), copy {calibration['copy_bandwidth'] / 1e9:.1f} GB/s, "
        f"read {calibration['read_bandwidth'] / 1e9:.1f} GB/s"
    )

    modules = {"memory": memory, "prefill": prefill, "decode": decode}
    modules.update(retention=retention, train=train)
    results = {
        "profile": profile.name,
        "machine": info,
        "calibration": calibration,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "config": {"yoco": profile.yoco, "transformer": profile.transformer},
        "profile_sizes": profile,
        "sections": {},
    }
    for name in sections:
        results["sections"][name] = modules[name].run(ctx)
    results["wall_s"] = budget.elapsed()
    results = json.loads(json.dumps(results, default=_jsonable))

    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{profile.name}.json"
    if path.exists() and len(sections) < len(SHARES):  # a partial run updates its sections only
        previous = json.loads(path.read_text())
        results["sections"] = {**previous["sections"], **results["sections"]}
    path.write_text(json.dumps(results, indent=1) + "\n")
    ctx.log(f"wrote {path} and {report.write(args.results_dir, args.docs_dir)}")
    return results


if __name__ == "__main__":
    main()
