"""One GPU performance run under a hard time budget (issue 14), for a single H100/H200.

    python -m bench.gpu_perf --out $OUT                  # GPU, --budget-s 420 by default
    python -m bench.gpu_perf --out $OUT/smoke --smoke    # CPU: tiny shapes, Pallas interpreted

Cases in priority order (bench/gpu_perf_cases.py):
  a) causal attention at 8K/32K/128K, batch 1, 24/8 heads, head dim 128, bf16: our Pallas flash,
     cuDNN and XLA, forward and forward+backward, ms and TFLOP/s;
  b) what attention_impl=auto picks for each and its time: whole-sequence causal, a 4096-query
     prefill chunk and one decode query against a full cache (auto vs pallas vs xla; the first
     length also gives each path's relative error against auto);
  c) transformer-3b (random bf16 weights) through `model.prefill` at 32K: chunk 4096 vs one
     chunk, time (first call with compilation, then steady) and device peak memory;
  d) yoco-3b-1m prefill at 256K (1M if the budget allows), chunk 4096 vs 16384;
  mosaic) JAX's Mosaic GPU flash attention vs cuDNN and ours (bench/gpu_perf_mosaic.py);
  train) the yoco-1.4b train step, one lever at a time from a baseline: attention path, remat
     policy, batch x length, scan over layers, loss chunk (bench/gpu_perf_train.py).
  retention) the Pallas retention kernel forward vs XLA's chunkwise form at 32K/128K, and the
     yoco-3b-1m 1M prefill with retention_impl=pallas (bench/gpu_perf_retention.py).
Each group runs in its own process (its device peak is its own; a crash or out-of-memory kill
loses only that group), prints rows as they come and saves them at once. A case whose estimate
would pass the budget is skipped; a group still running at the budget is killed. Results go to
--out as results.json and results.md (never into docs/: copy what you keep by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.docs_section import shown_flags

ROOT = Path(__file__).resolve().parent.parent
# group -> "module:function" yielding rows; imported in the child process only
GROUPS = {
    "attention": "bench.gpu_perf_cases:attention",
    "mosaic": "bench.gpu_perf_mosaic:mosaic",
    "transformer": "bench.gpu_perf_cases:transformer_prefill",
    "yoco": "bench.gpu_perf_cases:yoco_prefill",
    "train": "bench.gpu_perf_train:train_levers",
    "retention": "bench.gpu_perf_retention:retention",
}
ORDER = tuple(GROUPS)
CAP_S = {"attention": 100, "mosaic": 70, "transformer": 100}  # a hung group cannot eat the rest
GRACE_S = 20  # a group may finish its running case this long after the budget


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def allows(self, estimate_s: float) -> bool:
        return self.left() >= estimate_s


def run_group(name: str, budget_s: float, smoke: bool, part: Path) -> None:
    """In the child process: run one group, printing each row and rewriting `part` after it."""
    import importlib

    import jax

    from bench import gpu_perf_cases as cases

    module, function = GROUPS[name].split(":")
    group = getattr(importlib.import_module(module), function)
    cfg = cases.SMOKE if smoke else cases.FULL
    rows = []
    for row in group(cfg, Deadline(budget_s), smoke):
        rows.append(row)
        print(json.dumps(row), flush=True)
        part.write_text(json.dumps({"device": jax.devices()[0].device_kind, "rows": rows}))


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def to_markdown(results: dict) -> str:
    lines = [
        f"# bench/gpu_perf.py: {results['device']}, jax {results['jax']}, {results['date']}",
        "",
        f"`{results['command']}`; budget {results['budget_s']:.0f} s, "
        f"used {results['used_s']:.0f} s.",
    ]
    for group in ORDER:
        rows = results["groups"].get(group, {}).get("rows", [])
        error = results["groups"].get(group, {}).get("error")
        if not rows and not error:
            continue
        lines += ["", f"## {group}", ""]
        if error:
            lines.append(f"group error: {error}\n")
        keys = list(dict.fromkeys(k for row in rows for k in row))
        if rows:
            lines.append("| " + " | ".join(keys) + " |")
            lines.append("|" + "---|" * len(keys))
            lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json/.md")
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU)")
    ap.add_argument("--groups", nargs="+", choices=ORDER, default=list(ORDER))
    ap.add_argument("--child", choices=ORDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if out == ROOT / "docs" or ROOT / "docs" in out.parents:
        ap.error("--out must not be inside docs/: write elsewhere and copy what you keep")
    out.mkdir(parents=True, exist_ok=True)
    if args.child:
        return run_group(args.child, args.budget_s, args.smoke, out / f"part-{args.child}.json")

    import jax

    deadline = Deadline(args.budget_s)
    results = {
        "command": " ".join(["python -m bench.gpu_perf", *shown_flags(argv or sys.argv[1:])]),
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "budget_s": args.budget_s,
        "groups": {},
    }
    for group in (g for g in ORDER if g in args.groups):
        left = deadline.left()
        part = out / f"part-{group}.json"
        part.unlink(missing_ok=True)
        if left < 10:
            results["groups"][group] = {"error": "skipped: time budget", "rows": []}
            continue
        print(f"== {group} ({left:.0f} s left)", flush=True)
        command = [sys.executable, "-m", "bench.gpu_perf", "--child", group, "--out", str(out)]
        left = min(left, CAP_S.get(group, left))
        command += ["--budget-s", f"{left:.0f}"] + (["--smoke"] if args.smoke else [])
        error = None
        try:
            done = subprocess.run(command, cwd=ROOT, env=os.environ, timeout=left + GRACE_S)
            if done.returncode:
                error = f"exit code {done.returncode} (a crash or out-of-memory kill)"
        except subprocess.TimeoutExpired:
            error = "killed at the time budget"
        group_results = json.loads(part.read_text()) if part.exists() else {"rows": []}
        if error:
            group_results["error"] = error
            print(f"== {group}: {error}", flush=True)
        results["groups"][group] = group_results
    devices = [g.get("device") for g in results["groups"].values() if g.get("device")]
    results["device"] = devices[0] if devices else "unknown"
    results["used_s"] = args.budget_s - deadline.left()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(to_markdown(results))
    print(f"== wrote {out / 'results.json'} and results.md in {results['used_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
