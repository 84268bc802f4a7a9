"""Benchmark the Pallas attention kernels against XLA and cuDNN.

Training/prefill: causal forward and forward+backward TFLOP/s at head_dim 128, 24 query heads and
8 kv heads (GQA 3), Tk in {4K, 32K, 128K}. Decode: one query per sequence against a full cache of
128K and 1M tokens: latency and achieved bandwidth (K/V bytes read / time), next to the card's copy
bandwidth measured in the same run. Every case that fails (cuDNN missing, out of memory, ...) is
reported in the table instead of stopping the run; the XLA reference is skipped where it would
materialize a too large score matrix. The first size of each part also checks the kernels against
the XLA reference (relative max error of out, and of dq/dk/dv), so one run proves correctness on
the device too.

    python bench/attention.py                 # GPU only: whole run < 5 min
    python bench/attention.py --smoke         # CPU: tiny sizes, Pallas in interpret mode
A full run writes a markdown table to --out (default docs/benchmarks-attention.md, the committed
GPU results) and a PNG beside it; it refuses to run without a GPU. A smoke run prints its table
and writes only to an --out given explicitly.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from yoco_jax.kernels import decode_attention, flash_attention
from yoco_jax.kernels.reference import attention_reference, decode_attention_reference

FULL = {
    "heads": 24,
    "kv_heads": 8,
    "head_dim": 128,
    "train_lengths": [4096, 32768, 131072],
    "cache_lengths": [131072, 1048576],
    "copy_bytes": 2 << 30,
}
SMOKE = {
    "heads": 6,
    "kv_heads": 2,
    "head_dim": 32,
    "train_lengths": [128, 256],
    "cache_lengths": [1024, 4096],
    "copy_bytes": 16 << 20,
}
XLA_SCORE_BYTES_LIMIT = 8 << 30  # the reference materializes float32 [heads, Tq, Tk] scores
TIME_BUDGET_S = 270.0
DEFAULT_OUT = "docs/benchmarks-attention.md"  # committed GPU results: full runs only


def _run_timed(fn, args, target_s=0.3, max_repeats=50):
    """Seconds per call of jitted `fn(*args)`: compile and warm up, then a back-to-back burst."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    single = time.perf_counter() - start
    repeats = int(min(max_repeats, max(1, target_s / max(single, 1e-6))))
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def _relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def _error_text(error):
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line[:110]}"


def _try(fn, *args):
    """fn(*args), or None if it fails (the reference may not fit in memory)."""
    try:
        return jax.block_until_ready(fn(*args))
    except Exception:  # noqa: BLE001 - the rows then simply carry no error check
        return None


def _attention_impls():
    def cudnn(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")

    return {
        "pallas": flash_attention,
        "xla": attention_reference,
        "cudnn": cudnn,
    }


def _decode_impls():
    def cudnn(q, k, v, lengths):
        # One query at the end of each sequence: the length mask is the whole causal mask.
        return jax.nn.dot_product_attention(
            q, k, v, key_value_seq_lengths=lengths, implementation="cudnn"
        )

    return {"pallas": decode_attention, "xla": decode_attention_reference, "cudnn": cudnn}


def measure_copy(cfg):
    x = jnp.ones((cfg["copy_bytes"] // 4,), jnp.float32)
    seconds = _run_timed(jax.jit(lambda x: x * 2.0), (x,))
    return {"bytes": 2 * x.nbytes, "ms": seconds * 1e3, "gbs": 2 * x.nbytes / seconds / 1e9}


def bench_training(cfg, deadline):
    """Rows: Tk, impl, fwd ms/TFLOPs, fwd+bwd ms/TFLOPs, error vs xla (first length only)."""
    rows = []
    heads, kv_heads, head_dim = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    for index, length in enumerate(cfg["train_lengths"]):
        keys = jax.random.split(jax.random.key(index), 4)
        q = jax.random.normal(keys[0], (1, length, heads, head_dim), jnp.bfloat16)
        k = jax.random.normal(keys[1], (1, length, kv_heads, head_dim), jnp.bfloat16)
        v = jax.random.normal(keys[2], (1, length, kv_heads, head_dim), jnp.bfloat16)
        d_out = jax.random.normal(keys[3], q.shape, jnp.bfloat16)
        flops_fwd = 4 * heads * length * length * head_dim / 2  # causal: half the score matrix
        reference = (
            _try(_forward_backward(attention_reference), q, k, v, d_out) if index == 0 else None
        )
        for name, attention in _attention_impls().items():
            row = {"Tk": length, "impl": name}
            rows.append(row)
            if time.perf_counter() > deadline:
                row["note"] = "skipped: time budget"
                continue
            if name == "xla" and 4 * heads * length * length > XLA_SCORE_BYTES_LIMIT:
                row["note"] = f"skipped: {heads}x{length}x{length} f32 scores"
                continue
            try:
                forward = jax.jit(attention)
                row["fwd_ms"] = _run_timed(forward, (q, k, v)) * 1e3
                row["fwd_tflops"] = flops_fwd / row["fwd_ms"] / 1e9
                both = _forward_backward(attention)
                row["fwdbwd_ms"] = _run_timed(both, (q, k, v, d_out)) * 1e3
                row["fwdbwd_tflops"] = 3.5 * flops_fwd / row["fwdbwd_ms"] / 1e9
                if reference is not None and name != "xla":
                    errors = [
                        _relative_error(a, b) for a, b in zip(both(q, k, v, d_out), reference)
                    ]
                    row["note"] = "rel err out/dq/dk/dv vs xla: " + " / ".join(
                        f"{e:.1e}" for e in errors
                    )
            except Exception as error:  # noqa: BLE001 - report every failure, keep benchmarking
                row["note"] = _error_text(error)
    return rows


def _forward_backward(attention):
    def run(q, k, v, d_out):
        out, vjp = jax.vjp(attention, q, k, v)
        return (out, *vjp(d_out))

    return jax.jit(run)


def bench_decode(cfg, deadline, copy_gbs):
    """Rows: cache length, impl, latency, K/V bandwidth, fraction of copy bandwidth, error."""
    rows = []
    heads, kv_heads, head_dim = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    for index, length in enumerate(cfg["cache_lengths"]):
        keys = jax.random.split(jax.random.key(100 + index), 3)
        q = jax.random.normal(keys[0], (1, 1, heads, head_dim), jnp.bfloat16)
        k = jax.random.normal(keys[1], (1, length, kv_heads, head_dim), jnp.bfloat16)
        v = jax.random.normal(keys[2], (1, length, kv_heads, head_dim), jnp.bfloat16)
        lengths = jnp.full((1,), length, jnp.int32)
        kv_bytes = k.nbytes + v.nbytes
        reference = _try(jax.jit(decode_attention_reference), q, k, v, lengths)
        for name, attention in _decode_impls().items():
            row = {"S": length, "impl": name}
            rows.append(row)
            if time.perf_counter() > deadline:
                row["note"] = "skipped: time budget"
                continue
            try:
                fn = jax.jit(attention)
                seconds = _run_timed(fn, (q, k, v, lengths), target_s=0.2)
                row["us"] = seconds * 1e6
                row["gbs"] = kv_bytes / seconds / 1e9
                row["of_copy"] = row["gbs"] / copy_gbs
                if reference is not None and name != "xla":
                    error = _relative_error(fn(q, k, v, lengths), reference)
                    row["note"] = f"rel err vs xla: {error:.1e}"
            except Exception as error:  # noqa: BLE001 - report every failure, keep benchmarking
                row["note"] = _error_text(error)
    return rows


def _cell(row, key, fmt):
    return format(row[key], fmt) if key in row else "-"


def to_markdown(header, copy, training, decode, cfg):
    lines = [
        "# Attention benchmarks",
        "",
        header,
        "",
        f"Copy bandwidth (read + write of {copy['bytes'] / 2**30:.2f} GiB): "
        f"**{copy['gbs']:.0f} GB/s** ({copy['ms']:.2f} ms).",
        "",
        f"## Causal attention, B=1, {cfg['heads']} query heads, {cfg['kv_heads']} kv heads, "
        f"head_dim {cfg['head_dim']}, bf16",
        "",
        "FLOPs: 4·H·T²·D/2 forward (causal), 3.5x that for forward+backward.",
        "",
        "| Tk | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | note |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for row in training:
        lines.append(
            f"| {row['Tk']} | {row['impl']} | {_cell(row, 'fwd_ms', '.2f')} | "
            f"{_cell(row, 'fwd_tflops', '.1f')} | {_cell(row, 'fwdbwd_ms', '.2f')} | "
            f"{_cell(row, 'fwdbwd_tflops', '.1f')} | {row.get('note', '')} |"
        )
    lines += [
        "",
        f"## Decode: 1 query, full cache, B=1, {cfg['heads']}/{cfg['kv_heads']} heads, bf16",
        "",
        "Bandwidth = bytes of K and V read / time.",
        "",
        "| S | impl | latency µs | K/V GB/s | of copy bw | note |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for row in decode:
        lines.append(
            f"| {row['S']} | {row['impl']} | {_cell(row, 'us', '.0f')} | "
            f"{_cell(row, 'gbs', '.0f')} | {_cell(row, 'of_copy', '.0%')} | "
            f"{row.get('note', '')} |"
        )
    return "\n".join(lines) + "\n"


def _length_axis(ax, lengths):
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths])
    ax.minorticks_off()


def plot(path, training, decode, copy_gbs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_decode) = plt.subplots(1, 2, figsize=(11, 4))
    for impl in sorted({row["impl"] for row in training}):
        for key, style in (("fwd_tflops", "-o"), ("fwdbwd_tflops", "--s")):
            points = [(r["Tk"], r[key]) for r in training if r["impl"] == impl and key in r]
            if points:
                label = f"{impl} {'fwd' if key == 'fwd_tflops' else 'fwd+bwd'}"
                ax_train.plot(*zip(*points), style, label=label)
    _length_axis(ax_train, sorted({row["Tk"] for row in training}))
    ax_train.set(xlabel="Tk", ylabel="TFLOP/s", title="causal attention")
    ax_train.legend(fontsize=7)
    for impl in sorted({row["impl"] for row in decode}):
        points = [(r["S"], r["gbs"]) for r in decode if r["impl"] == impl and "gbs" in r]
        if points:
            ax_decode.plot(*zip(*points), "-o", label=impl)
    ax_decode.axhline(copy_gbs, color="gray", linestyle=":", label="copy bandwidth")
    _length_axis(ax_decode, sorted({row["S"] for row in decode}))
    ax_decode.set(xlabel="cache length", ylabel="GB/s", title="decode")
    ax_decode.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def output_path(smoke: bool, out: str | None) -> Path | None:
    """Where the table goes: --out, else the committed results for a full (GPU) run only."""
    return Path(out) if out else None if smoke else Path(DEFAULT_OUT)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, interpret mode)")
    parser.add_argument("--out", default=None, help=f"default: {DEFAULT_OUT} (full runs only)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=TIME_BUDGET_S,
        help="start no new case after this many seconds",
    )
    args = parser.parse_args(argv)
    if not args.smoke and jax.default_backend() != "gpu":
        parser.exit(
            2,
            f"{parser.prog}: error: no GPU found (JAX backend {jax.default_backend()!r}); this "
            "benchmark measures GPU kernels: run it on a GPU, or --smoke for a tiny CPU check "
            f"({DEFAULT_OUT} is left as it is)\n",
        )
    out = output_path(args.smoke, args.out)
    cfg = SMOKE if args.smoke else FULL
    deadline = time.perf_counter() + args.budget_s
    device = jax.devices()[0]
    header = (
        f"Device: {getattr(device, 'device_kind', device.platform)} ({jax.default_backend()}), "
        f"jax {jax.__version__}, {time.strftime('%Y-%m-%d %H:%M')}"
        + (" - smoke run (tiny sizes, Pallas interpreted)" if args.smoke else "")
    )
    print(header, flush=True)
    copy = measure_copy(cfg)
    decode = bench_decode(cfg, deadline, copy["gbs"])
    training = bench_training(cfg, deadline)
    table = to_markdown(header, copy, training, decode, cfg)
    print(table)
    if out is None:
        print("smoke run: nothing written (pass --out to keep the table)")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    plot(out.with_suffix(".png"), training, decode, copy["gbs"])
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
