"""`yoco-needle` (`python -m yoco_jax needle`): needle-in-a-haystack retrieval of a
checkpoint over a grid of context lengths x depths (x needle counts), as JSON and a heatmap
(see yoco_jax/eval/needle.py).

    yoco-needle --checkpoint runs/demo --lengths 256,512,1024 --depths 5
    yoco-needle --checkpoint runs/demo --needles 1,2,4,8 --out multi
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path

from yoco_jax.api import load_pretrained
from yoco_jax.cli.common import one_line_warnings, reported
from yoco_jax.data.tokenizer_resolver import find_tokenizer
from yoco_jax.eval.needle import (
    FILLER,
    Haystack,
    evaluate_needles,
    model_answerer,
    plot_heatmap,
    plot_needles,
)
from yoco_jax.inference.plan import PREFILL_CHUNK_HELP


def _read_haystack(paths: Sequence[str]) -> list[str]:
    files = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"haystack path {p} does not exist")
        files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return [f.read_text(errors="replace") for f in files]


def _ints(text: str) -> list[int]:
    return [int(x) for x in re.split(r"[,\s]+", text.strip()) if x]


def _depths(text: str) -> list[float]:
    """A list of depths in [0, 1], or a count of evenly spaced ones."""
    if "," in text or "." in text:
        return [float(x) for x in text.split(",")]
    n = int(text)
    return [i / max(n - 1, 1) for i in range(n)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="yoco-needle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="training output or official folder")
    parser.add_argument("--tokenizer", help="sentencepiece .model (default: the checkpoint's)")
    parser.add_argument("--lengths", type=_ints, default=[256, 512, 1024, 2048])
    parser.add_argument("--depths", type=_depths, default="5", help="a count or a list")
    parser.add_argument("--needles", type=_ints, default=[1], help="counts, e.g. 1,2,4,8")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--haystack", nargs="*", default=None, help="text files or folders")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--prefill-chunk", type=int, default=None, help=PREFILL_CHUNK_HELP)
    parser.add_argument("--out", default="needle", help="writes <out>.json and <out>.png")
    args = parser.parse_args(argv)
    one_line_warnings(parser.prog)
    with reported(parser.prog):
        if min(args.needles, default=0) < 1:
            raise ValueError(f"--needles {args.needles} must be positive counts, e.g. 1,2,4,8")
        model = load_pretrained(args.checkpoint)
        tokenizer = find_tokenizer(args.checkpoint, model.config.vocab_size, args.tokenizer)
        if tokenizer is None:
            raise ValueError(f"no tokenizer found for {args.checkpoint}: pass --tokenizer PATH")
        texts = _read_haystack(args.haystack) if args.haystack else [FILLER]
        haystack = Haystack(texts, tokenizer)
        answer = model_answerer(
            model, tokenizer, args.max_new_tokens, prefill_chunk=args.prefill_chunk
        )
        results = evaluate_needles(
            answer, haystack, args.lengths, args.depths, args.needles, args.trials, args.seed
        )
    results["checkpoint"] = str(args.checkpoint)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    name = Path(args.checkpoint).name
    if len(args.needles) == 1:  # one count: where in the context it fails
        plot_heatmap(
            results["runs"][str(args.needles[0])],
            out.with_suffix(".png"),
            f"{name}, {args.needles[0]} needle(s)",
        )
    else:
        plot_needles(results, out.with_suffix(".png"), f"{name}, multi-needle retrieval")
    print(f"mean score {results['mean_score']:.3f}; wrote {out}.json and {out}.png")


if __name__ == "__main__":
    main()
