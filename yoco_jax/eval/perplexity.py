"""Long-context perplexity by position (the paper's Fig. 5): the cumulative average negative
log-likelihood of tokens 1..P, for P = 1K, 2K, 4K ... N, over documents of N tokens.

Every token is scored exactly with chunked prefill (`yoco_jax.eval.scoring`): activations stay
O(chunk) whatever N; the cache grows with N (YOCO: one K/V for the whole cross-decoder).

    yoco-perplexity --checkpoint runs/yoco --data books/ --max-length 65536
    yoco-perplexity --checkpoint runs/yoco --compare runs/transformer \\
        --data corpus.jsonl --max-length 8192 --concat --out results/ppl
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from yoco_jax.eval.scoring import score_rows


def sequences(
    texts: Iterable[str],
    tokenizer,
    max_length: int,
    *,
    concat: bool = False,
    max_docs: int | None = None,
) -> list[list[int]]:
    """Rows of EOS + `max_length` tokens: the start of every document that long, or (`concat`)
    consecutive pieces of all documents joined by EOS. At most `max_docs` rows."""
    if max_length < 1:
        raise ValueError(f"--max-length {max_length} must be a positive number of tokens")
    if max_docs is not None and max_docs < 1:
        raise ValueError(f"--max-docs {max_docs} must be a positive number of rows")
    eos, rows, stream, longest = tokenizer.eos_id, [], [], 0
    for text in texts:
        tokens = tokenizer.encode(text)
        longest = max(longest, len(tokens))
        if concat:
            stream += tokens + [eos]
            while len(stream) >= max_length:
                rows.append([eos] + stream[:max_length])
                stream = stream[max_length:]
        elif len(tokens) >= max_length:
            rows.append([eos] + tokens[:max_length])
        if max_docs is not None and len(rows) >= max_docs:
            return rows[:max_docs]
    if not rows:
        fix = "lower --max-length" + ("" if concat else " or pass --concat to join documents")
        raise ValueError(
            f"no document holds --max-length {max_length} tokens (the longest has {longest}"
            f"{', all together fewer' if concat else ''}): {fix}"
        )
    return rows


def positions(max_length: int, first: int = 1024) -> list[int]:
    """first, 2 first, 4 first ... below max_length, then max_length."""
    if first < 1:
        raise ValueError(f"--first {first} must be a positive position")
    points, p = [], first
    while p < max_length:
        points.append(p)
        p *= 2
    return points + [max_length]


def nll_by_position(
    model,
    rows: Sequence[Sequence[int]],
    points: Sequence[int],
    *,
    batch_size: int = 1,
    prefill_chunk: int | None = None,
) -> list[float]:
    """Mean over rows of the average NLL (nats) of tokens 1..P of each row, for each P
    (`prefill_chunk`: the prefill chunk, default the platform's)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size} must be a positive number of rows")
    scored = score_rows(model, rows, batch_size=batch_size, prefill_chunk=prefill_chunk)
    nll = -np.stack([logp for logp, _ in scored]).astype(np.float64)  # [rows, N]
    cumulative = np.cumsum(nll, axis=1) / np.arange(1, nll.shape[1] + 1)
    return [float(cumulative[:, p - 1].mean()) for p in points]


def plot(curves: dict[str, dict], path) -> Path:
    """Cumulative average NLL against position (log2 axis), one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(curve["positions"], curve["nll"], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position (tokens)")
    ax.set_ylabel("cumulative average NLL (nats)")
    ax.set_title("perplexity by position")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
