"""The docs/benchmarks.md section of a bench/gpu_perf.py run (bench/results/gpu_perf-*.json):
the rows as measured, plus the ratios the performance issue asks about, computed here from them
(chunked against one-chunk prefill, long prefill against its FLOP floor, train-step MFU).
"""

from __future__ import annotations

from bench import flops
from bench.gpu_perf import to_markdown
from yoco_jax import get_config

MATMUL_TFLOPS = {"H100": 798.0, "H200": 790.0}  # measured bf16 8192^3 products (device README)


def _rows(results: dict, group: str) -> list[dict]:
    return [r for r in results["groups"].get(group, {}).get("rows", []) if "steady_s" in r]


def _matmul_rate(device: str) -> float | None:
    return next((v * 1e12 for k, v in MATMUL_TFLOPS.items() if k in device), None)


def findings(results: dict) -> list[str]:
    """One line per derived ratio that the rows allow."""
    lines = []
    prefill = _rows(results, "transformer")
    if len(prefill) == 2:
        chunked, whole = sorted(prefill, key=lambda r: r["chunk"])
        lines.append(
            f"- {chunked['case']} at {chunked['T']} tokens: chunks of {chunked['chunk']} take "
            f"{chunked['steady_s']:.3f} s against {whole['steady_s']:.3f} s in one chunk "
            f"(**{chunked['steady_s'] / whole['steady_s']:.2f}x**, goal <= 1.2x); peak "
            f"{chunked['peak_gb']:.1f} GB against {whole['peak_gb']:.1f} GB."
        )
    rate = _matmul_rate(results["device"])
    for row in _rows(results, "yoco"):
        name = row["case"].split()[0]
        floor = flops.prefill_flops(get_config(name), row["T"], row["chunk"], executed=False)
        line = (
            f"- {name}, {row['T']:,} tokens, prefill chunk {row['chunk']}: "
            f"{row['steady_s']:.2f} s ({row['tokens_per_s']:,.0f} tokens/s), peak "
            f"{row['peak_gb']:.1f} GB; FLOP floor {floor / 1e15:.2f} PFLOP"
        )
        if rate:
            line += f" = {floor / rate:.2f} s at {rate / 1e12:.0f} TFLOP/s: **"
            line += f"{row['steady_s'] * rate / floor:.2f}x the floor** (goal <= 1.5x)"
        lines.append(line + ".")
    trained = [r for r in results["groups"].get("train", {}).get("rows", []) if "mfu_nominal" in r]
    if trained:
        best = max(trained, key=lambda r: r["mfu_nominal"])
        lines.append(
            f"- Training, {best['case'].split()[-1]}: the best step measured is `{best['value']}` "
            f"({best['BxT']}): {best['ms_per_step']:.0f} ms, {best['tokens_per_s']:,.0f} tokens/s, "
            f"**{best['mfu_nominal']:.1%} of nominal bf16 peak** (goal >= 50%), "
            f"{best['mfu_matmul']:.1%} of the matmul rate measured in the same run."
        )
    return lines


def section(results: dict) -> str:
    title = (
        f"## Performance run (issue 14): {results['device']}, jax {results['jax']}, "
        f"{results['date']}"
    )
    body = to_markdown(results).split("\n", 1)[1]  # its own title goes
    note = [results["note"], ""] if results.get("note") else []
    return "\n".join([title, "", *note, *findings(results), body.replace("\n## ", "\n### ")])
