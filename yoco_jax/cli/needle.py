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
from yoco_jax.cli.common import (
    add_unverified_flag,
    check_output,
    integer,
    one_line_warnings,
    positive_int,
    reported,
)
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
            raise FileNotFoundError(f"--haystack {p} does not exist")
        files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    texts = []
    for f in files:
        data = f.read_bytes()
        try:
            if b"\0" in data:
                raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), 0, "a NUL byte")
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(
                f"--haystack {f} is not UTF-8 text ({e.reason}): give text files"
            ) from None
    return texts


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in re.split(r"[,\s]+", text.strip()) if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,2,4,8")
    return values


def _depths(text: str) -> list[float]:
    """A list of depths in [0, 1], or a count of evenly spaced ones."""
    try:
        if "," in text or "." in text:
            depths = [float(x) for x in text.split(",")]
        else:
            n = int(text)
            depths = [i / max(n - 1, 1) for i in range(n)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a count nor a list") from None
    if not depths or not all(0 <= d <= 1 for d in depths):
        raise argparse.ArgumentTypeError(f"{text!r}: give a count >= 1 or fractions in [0, 1]")
    return depths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="yoco-needle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="training output or official folder")
    parser.add_argument("--tokenizer", help="sentencepiece .model (default: the checkpoint's)")
    parser.add_argument("--lengths", type=_ints, default=[256, 512, 1024, 2048])
    parser.add_argument("--depths", type=_depths, default="5", help="a count or a list")
    parser.add_argument("--needles", type=_ints, default=[1], help="counts, e.g. 1,2,4,8")
    parser.add_argument("--trials", type=positive_int, default=4)
    parser.add_argument("--seed", type=integer, default=0)
    parser.add_argument("--haystack", nargs="*", default=None, help="text files or folders")
    parser.add_argument("--max-new-tokens", type=positive_int, default=20)
    parser.add_argument("--prefill-chunk", type=positive_int, default=None, help=PREFILL_CHUNK_HELP)
    parser.add_argument("--out", default="needle", help="writes <out>.json and <out>.png")
    add_unverified_flag(parser)
    args = parser.parse_args(argv)
    one_line_warnings(parser.prog)
    out = Path(args.out)
    with reported(parser.prog):
        for suffix in (".json", ".png"):  # before the work, not after it
            check_output("--out", out.with_suffix(suffix))
        texts = _read_haystack(args.haystack) if args.haystack else [FILLER]
        model = load_pretrained(args.checkpoint, allow_unverified=args.allow_unverified)
        tokenizer = find_tokenizer(args.checkpoint, model.config.vocab_size, args.tokenizer)
        if tokenizer is None:
            raise ValueError(f"no tokenizer found for {args.checkpoint}: pass --tokenizer PATH")
        haystack = Haystack(texts, tokenizer)
        answer = model_answerer(
            model, tokenizer, args.max_new_tokens, prefill_chunk=args.prefill_chunk
        )
        results = evaluate_needles(
            answer, haystack, args.lengths, args.depths, args.needles, args.trials, args.seed
        )
        results["checkpoint"] = str(args.checkpoint)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
        name = Path(args.checkpoint).name
        if len(args.needles) == 1:  # one count: where in the context it fails
            title = f"{name}, {args.needles[0]} needle(s)"
            plot_heatmap(results["runs"][str(args.needles[0])], out.with_suffix(".png"), title)
        else:
            plot_needles(results, out.with_suffix(".png"), f"{name}, multi-needle retrieval")
    print(f"mean score {results['mean_score']:.3f}; wrote {out}.json and {out}.png")


if __name__ == "__main__":
    main()
