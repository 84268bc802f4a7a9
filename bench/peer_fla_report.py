"""The checks and tables of bench/peer_fla.py: the float64 retention reference both sides are
judged against, the check inputs, the side-by-side rows and their markdown."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIDES = ("ours", "fla")

# case -> (metric, higher is better)
METRICS = {
    "kernel_fwd": ("ms", False),
    "kernel_bwd": ("ms", False),
    "prefill": ("tokens_per_s", True),
    "decode": ("ms_per_token", False),
    "train": ("tokens_per_s", True),
}


def reference_retention(q, k, v, g):
    """float64 recurrence: S_t = exp(g_t) S_{t-1} + k_t^T v_t / sqrt(d), o_t = q_t S_t.
    q, k `[B, T, H, Dk]`, v `[B, T, H, Dv]`, g `[B, T, H]`; returns (o `[B, T, H, Dv]`,
    S `[B, H, Dk, Dv]`)."""
    q, k, v, g = (np.asarray(x, np.float64) for x in (q, k, v, g))
    b, t, h, dk = q.shape
    k = k * dk**-0.5
    state = np.zeros((b, h, dk, v.shape[-1]))
    out = np.empty((b, t, h, v.shape[-1]))
    for i in range(t):
        state = np.exp(g[:, i])[..., None, None] * state + k[:, i, :, :, None] * v[:, i, :, None]
        out[:, i] = np.einsum("bhk,bhkv->bhv", q[:, i], state)
    return out, state


def check_inputs(path: Path, sizes: dict, arch: dict, seed: int = 0) -> None:
    """Random q, k, v rounded to bfloat16 (so both sides read exactly these values) and log
    gates log_sigmoid(x) / 16 as the model makes them, saved to `path` (.npz)."""
    import ml_dtypes

    rng = np.random.default_rng(seed)
    h = arch["n_self_heads"]
    shape = (1, sizes["check_length"], h, arch["dim"] // h)
    qkv = [rng.standard_normal(shape).astype(ml_dtypes.bfloat16).astype(np.float32)]
    qkv += [rng.standard_normal(shape).astype(ml_dtypes.bfloat16).astype(np.float32)]
    qkv += [rng.standard_normal(shape).astype(ml_dtypes.bfloat16).astype(np.float32)]
    x = rng.standard_normal(shape[:3])
    g = (-np.logaddexp(0.0, -x) / 16).astype(np.float32)
    np.savez(path, q=qkv[0], k=qkv[1], v=qkv[2], g=g)


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def check_errors(inputs: Path, folder: Path) -> dict:
    """Relative max errors of each side's output and final state against the float64
    recurrence, and of ours against fla's."""
    data = np.load(inputs)
    ref_out, ref_state = reference_retention(data["q"], data["k"], data["v"], data["g"])
    sides = {s: np.load(folder / f"{s}.npz") for s in SIDES if (folder / f"{s}.npz").exists()}
    row = {}
    for name, got in sides.items():
        row[f"out_err_{name}"] = rel_err(got["out"], ref_out)
        row[f"state_err_{name}"] = rel_err(got["state"], ref_state)
    if len(sides) == 2:
        row["out_err_ours_vs_fla"] = rel_err(sides["ours"]["out"], sides["fla"]["out"])
        row["state_err_ours_vs_fla"] = rel_err(sides["ours"]["state"], sides["fla"]["state"])
    return row


def combine(cases: list[tuple[str, int]], parts: dict, check: dict) -> list[dict]:
    """One row per case of the plan: both sides' metric and `ahead` (our speed / theirs)."""
    rows = []
    for case, t in cases:
        got = {
            s: next((r for r in parts[s] if (r["case"], r.get("T")) == (case, t)), {})
            for s in SIDES
        }
        row = {"case": case, "T": t}
        if case == "check":
            row.update(check)
        else:
            metric, higher = METRICS[case]
            for side, r in got.items():
                row[side] = r.get(metric)
                row[f"{side}_first_s"] = r.get("first_s")
            if row["ours"] and row["fla"]:
                ratio = row["ours"] / row["fla"]
                row["ahead"] = ratio if higher else 1 / ratio
            row["metric"] = metric
        notes = [f"{s}: {r.get('error') or r.get('skipped')}" for s, r in got.items()]
        notes = [n for n, r in zip(notes, got.values()) if r.get("error") or r.get("skipped")]
        notes += [f"{s}: not run" for s, r in got.items() if not r]
        row["notes"] = "; ".join(notes)
        rows.append(row)
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def section(results: dict) -> str:
    """docs/benchmarks.md's section of a saved run: the table under its own heading."""
    body = to_markdown(results).split("\n", 1)[1]
    device = results["info"]["ours"]["device"]
    title = f"## Peer: flash-linear-attention's YOCO, {device}, {results['date']}"
    note = f"\n{results['note']}\n" if results.get("note") else ""
    return f"{title}\n{note}{body}"


def to_markdown(results: dict) -> str:
    info = results["info"]
    lines = [f"# bench/peer_fla.py: ours vs flash-linear-attention YOCO, {results['date']}", ""]
    for side in SIDES:
        lines.append(f"- {side}: " + ", ".join(f"{k} {_cell(v)}" for k, v in info[side].items()))
    lines += [
        f"- `{results['command']}`: budget {results['budget_s']:.0f} s, used "
        f"{results['used_s']:.0f} s; ahead = our speed / theirs",
        "",
    ]
    keys = ["case", "T", "metric", "ours", "fla", "ahead", "ours_first_s", "fla_first_s", "notes"]
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in results["rows"]:
        if row["case"] == "check":
            errs = ", ".join(
                f"{k} {v:.2e}" for k, v in row.items() if k.endswith(("_fla", "_ours"))
            )
            cells = [
                "check",
                str(row["T"]),
                "rel max err",
                errs or "-",
                "",
                "",
                "",
                "",
                row["notes"],
            ]
        else:
            cells = [_cell(row.get(k)) for k in keys[:-1]] + [row["notes"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
