"""Side by side with flash-linear-attention's YOCO (issue 14), ours (JAX) and theirs (PyTorch +
Triton), in one GPU run.

    python -m bench.peer_fla --out $OUT/peer --budget-s 330   # GPU (refuses without one)
    python -m bench.peer_fla --out $OUT/peer --budget-s 200 --cases kernel_fwd check prefill decode
    python -m bench.peer_fla --out $OUT/smoke --smoke        # CPU: tiny shapes, ours only, plus
                                                              # fla's torch reference in the check

The peer: `flash-linear-attention` 0.6.0 + `fla-core` 0.6.0 (`fla.models.YOCOForCausalLM`: a
gated-retention self-decoder, then cross-decoder layers reading one shared K/V). A bench-only
dependency, NOT in pyproject.toml: put its two pure-Python wheels on PYTHONPATH (they need torch,
triton, einops and transformers 5.x), e.g. `pip install --no-deps --target /tmp/site .whl/*.whl`.

What is compared, on the same GPU in one run:
- kernel: gated retention alone at yoco-3b's self-decoder shape (B=1, 24 heads, head dim 128,
  bf16 q/k/v, float32 log gates): our `chunkwise_retention` (XLA, chunks of 256, the model's)
  vs fla's `chunk_simple_gla` (Triton, chunks of 64); forward, and forward + backward (the
  gradients of q, k, v and the gates for a given output gradient).
- check: both on the same bf16-exact inputs (T a multiple of neither chunk) against a float64
  recurrence S_t = g_t S_{t-1} + k_t^T v_t / sqrt(d), o_t = q_t S_t: relative max error of the
  outputs and final states (fla scales q where we scale k, so its state is ours * sqrt(d)).
- model: yoco-3b with random bf16 weights vs fla's YOCOForCausalLM of the same architecture
  (parameter counts checked equal, in the info rows): prefill tokens/s (ours: 32K chunks into one
  cache, the cross-decoder at the last token only; fla: one forward with skip_cross_decoder=True,
  its prefill); decode ms/token at batch 1 after a context of the first prefill length (ours: the
  jitted decode loop; fla: eager forward with past_key_values, as its generate runs); train step =
  forward + backward of the mean next-token cross-entropy, bf16 weights, no optimizer update
  (ours: the project's chunked cross-entropy; fla: its fused linear cross-entropy).
Timing: wall clock around device-synchronized calls, the median of up to 3 runs after one warm-up
call, whose time (compilation, Triton autotuning) is kept as first_s. Each side runs in its own
process (JAX with preallocation off) under its share of --budget-s, cases in priority order
(--cases picks kinds); a case whose estimate would overrun is skipped, a failing case is
reported, not raised. Results:
--out/results.json and results.md (`ahead` = our speed / theirs: above 1, ours is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import peer_fla_report as report
from bench.docs_section import shown_flags
from bench.gpu_perf import Deadline

ROOT = Path(__file__).resolve().parent.parent
K = 1024
FULL = {
    "model": "yoco-3b",
    "kernel_lengths": [32 * K, 128 * K],
    "check_length": 1000,
    "prefill_lengths": [32 * K, 128 * K, 256 * K],
    "prefill_chunk": 32 * K,
    "decode_steps": 32,
    "train_batch": 1,
    "train_length": 8 * K,
}
SMOKE = {
    "model": "yoco-tiny",
    "kernel_lengths": [256, 512],
    "check_length": 100,
    "prefill_lengths": [128, 256],
    "prefill_chunk": 64,
    "decode_steps": 4,
    "train_batch": 2,
    "train_length": 64,
}
CASES = ("kernel_fwd", "check", "prefill", "decode", "train", "kernel_bwd")
SIDES = {"ours": "bench.peer_fla_jax", "fla": "bench.peer_fla_torch"}
OURS_SHARE = 0.5  # of the budget; fla gets the rest (its first calls autotune Triton kernels)
GRACE_S = 30  # a side may finish its running case this long after its share


def plan(sizes: dict, only=CASES) -> list[tuple[str, int]]:
    """(case, T) in priority order, the same for both sides; only the kinds in `only`."""
    first, *more = sizes["kernel_lengths"]
    cases = [("kernel_fwd", first), ("check", sizes["check_length"])]
    cases += [("prefill", t) for t in sizes["prefill_lengths"]]
    cases += [("decode", sizes["prefill_lengths"][0]), ("train", sizes["train_length"])]
    cases.append(("kernel_bwd", first))
    for t in more:
        cases += [("kernel_fwd", t), ("kernel_bwd", t)]
    return [(case, t) for case, t in cases if case in only]


def time_runs(run, repeats: int = 3, max_s: float = 8.0) -> dict:
    """`run()` returns the seconds of one synchronized call: one warm-up call (first_s), then up
    to `repeats` timed ones (fewer once `max_s` is spent); the median is `seconds`."""
    first = run()
    times = []
    while len(times) < repeats and sum(times) < max_s:
        times.append(run())
    return {"seconds": float(np.median(times)), "first_s": first, "runs": len(times)}


def error_text(error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:200]}"


def run_child(side: str, spec: dict, budget_s: float, part: Path) -> None:
    """In a child process: the side's info row, then every case of the plan that fits."""
    import importlib

    deadline = Deadline(budget_s)
    rows = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        part.write_text(json.dumps(rows))

    try:
        bench = importlib.import_module(SIDES[side]).Side(spec)
        emit({"case": "info", **bench.info()})
    except Exception as error:  # noqa: BLE001 - reported in the results
        emit({"case": "info", "error": error_text(error)})
        return
    for case, t in plan(spec["sizes"], spec["cases"]):
        row = {"case": case, "T": t}
        estimate = bench.estimate(case, t)
        if not deadline.allows(estimate):
            emit({**row, "skipped": f"time budget (needs ~{estimate:.0f} s)"})
            continue
        try:
            row.update(bench.run(case, t))
        except Exception as error:  # noqa: BLE001 - a failing case is reported, not raised
            row["error"] = error_text(error)
            bench.recover()
        emit(row)


def _info(rows: list[dict]) -> dict:
    row = next((r for r in rows if r["case"] == "info"), {"error": "no info row"})
    return {k: v for k, v in row.items() if k != "case"}


def has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    done = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return done.returncode == 0 and "GPU" in done.stdout


def _spawn(side: str, spec_path: Path, out: Path, share: float, smoke: bool) -> str | None:
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    command = [sys.executable, "-m", "bench.peer_fla", "--child", side, "--spec", str(spec_path)]
    command += ["--out", str(out), "--budget-s", f"{share:.0f}"] + (["--smoke"] * smoke)
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, timeout=share + GRACE_S)
    except subprocess.TimeoutExpired:
        return "killed at the time budget"
    return (
        f"exit code {done.returncode} (a crash or out-of-memory kill)" if done.returncode else None
    )


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(prog="bench.peer_fla", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json/.md")
    ap.add_argument("--budget-s", type=float, default=330.0, help="both sides together")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU)")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="kinds to run")
    ap.add_argument("--child", choices=list(SIDES), help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if out == ROOT / "docs" or ROOT / "docs" in out.parents:
        ap.error("--out must not be inside docs/: write elsewhere and copy what you keep")
    if args.child:
        spec = json.loads(args.spec.read_text())
        return run_child(args.child, spec, args.budget_s, out / f"part-{args.child}.json")
    if not args.smoke and not has_gpu():
        message = "no GPU found (nvidia-smi -L lists none); this benchmark times CUDA kernels"
        ap.exit(
            2, f"{ap.prog}: error: {message}: run it on a GPU, or --smoke for a tiny CPU check\n"
        )
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # this process keeps no GPU
    from yoco_jax.config import get_config  # the one source of the architecture, for both sides

    out.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(args.budget_s)
    sizes = SMOKE if args.smoke else FULL
    arch = dataclasses.asdict(get_config(sizes["model"]).architecture)
    scratch = Path(tempfile.mkdtemp(prefix="peer_fla_"))
    spec = {"sizes": sizes, "arch": arch, "smoke": args.smoke, "cases": args.cases}
    spec["check_dir"] = str(scratch)
    spec["check_inputs"] = str(scratch / "check_inputs.npz")
    if "check" in args.cases:
        report.check_inputs(Path(spec["check_inputs"]), sizes, arch)
    (scratch / "spec.json").write_text(json.dumps(spec))
    parts, errors = {}, {}
    for side in SIDES:
        share = deadline.left() * (OURS_SHARE if side == "ours" else 1.0)
        part = out / f"part-{side}.json"
        part.unlink(missing_ok=True)
        print(f"== {side} ({share:.0f} s of {deadline.left():.0f} s left)", flush=True)
        errors[side] = _spawn(side, scratch / "spec.json", out, share, args.smoke)
        parts[side] = json.loads(part.read_text()) if part.exists() else []
    check = {}
    if "check" in args.cases:
        check = report.check_errors(Path(spec["check_inputs"]), scratch)
    results = {
        "command": " ".join(["python -m bench.peer_fla", *shown_flags(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "budget_s": args.budget_s,
        "sizes": sizes,
        "info": {s: _info(parts[s]) for s in SIDES},
        "side_errors": {s: e for s, e in errors.items() if e},
        "rows": report.combine(plan(sizes, args.cases), parts, check),
        "parts": parts,
    }
    results["used_s"] = args.budget_s - deadline.left()
    shutil.rmtree(scratch, ignore_errors=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(report.to_markdown(results))
    print(report.to_markdown(results), flush=True)
    return results


if __name__ == "__main__":
    main()
