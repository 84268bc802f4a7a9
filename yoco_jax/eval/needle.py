"""Needle in a haystack: the paper's city / magic-number retrieval, single and multi-needle.

A prompt is the official template around a haystack of filler text in which `needles`
sentences "The special magic {city} number is: {number}" hide; the question asks for one city's
number, the asked needle sitting at a given depth (0 = start, 1 = end) and the others at random
depths. A case scores 1 when the number appears in the model's greedy continuation. Results
over a grid of context lengths x depths go to JSON and a heatmap PNG.

    python -m yoco_jax.eval.needle --checkpoint runs/demo --lengths 256,512,1024 --depths 5
    python -m yoco_jax.eval.needle --checkpoint runs/demo --needles 4 --trials 5 --out needle4
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

INTRO = (
    "There is a special magic number inside a lot of irrelevant text. Find it and memorize "
    "them. I will quiz you about the magic number there. {context} "
)
NEEDLE = "The special magic {city} number is: {number}"
QUESTION = "What is the special magic {city} number? The special magic {city} number is "
CITIES = (
    "Chicago", "Yangon", "Antananarivo", "Colombo", "Almaty", "Sydney", "Mexico City", "Seattle",
    "Lagos", "Amsterdam", "Belgrade", "Cairo", "Baghdad", "Damascus", "Kigali", "Dakar", "Sofia",
    "Victoria", "Tashkent", "Mumbai", "Barcelona", "Amman", "Toronto", "Bratislava",
    "Johannesburg", "Thimphu", "Bangkok", "Santiago", "San Francisco", "Paris", "Rabat",
    "Copenhagen", "Madrid", "Ho Chi Minh City", "Sarajevo", "Delhi", "Istanbul", "Khartoum",
    "Helsinki", "Doha", "Kuala Lumpur", "Budapest", "Shanghai", "Moscow", "Los Angeles", "Oslo",
    "Berlin", "Bangalore", "Tokyo", "Melbourne", "Port Louis", "Lisbon", "Nairobi", "Kampala",
    "Lima", "Maputo", "Vancouver", "Dubai", "Jakarta", "Yerevan", "Beirut", "Athens", "Bucharest",
    "Brussels", "Tunis", "Astana", "Seoul", "Buenos Aires", "Vienna",
)  # fmt: skip
# The classic passkey filler (one sentence a line: fine-grained lengths), when no text is given.
FILLER = "\n".join(
    ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go."]
    + ["There and back again."]
)

Answerer = Callable[[list[str]], list[str]]


class Haystack:
    """Filler text cut to token budgets: whole lines, cycling through `texts` from a random one."""

    def __init__(self, texts: Sequence[str], count_tokens: Callable[[str], int]):
        self.lines = [line for t in texts for line in t.splitlines() if line.strip()]
        if not self.lines:
            raise ValueError("the haystack has no text: give files with some non-empty lines")
        self.sizes = [count_tokens(line + " ") for line in self.lines]

    def text(self, tokens: int, rng: random.Random) -> str:
        """At most `tokens` tokens of filler (counted line by line)."""
        out, used, i = [], 0, rng.randrange(len(self.lines))
        while used + self.sizes[i] <= tokens:
            out.append(self.lines[i] + " ")
            used += self.sizes[i]
            i = (i + 1) % len(self.lines)
        return "".join(out)


def make_case(
    haystack: Haystack,
    count_tokens: Callable[[str], int],
    context_length: int,
    depth: float,
    needles: int,
    rng: random.Random,
) -> tuple[str, str]:
    """(prompt, answer): about `context_length` tokens, the asked needle at `depth` in [0, 1]."""
    cities = rng.sample(CITIES, needles)
    numbers = [str(rng.randint(1, 50000)) for _ in cities]
    sentences = [NEEDLE.format(city=c, number=n) for c, n in zip(cities, numbers)]
    fixed = INTRO.format(context="") + QUESTION.format(city=cities[0])
    budget = context_length - count_tokens(fixed) - sum(count_tokens(s) for s in sentences)
    budget -= 2 * (needles + 2)  # the joining newlines and token-boundary effects
    if budget <= 0:
        raise ValueError(
            f"context length {context_length} leaves no room for a haystack around {needles} "
            "needle(s): use longer contexts"
        )
    depths = [depth] + [rng.random() for _ in range(needles - 1)]
    order = sorted(range(needles), key=lambda i: depths[i])
    cuts = [0] + [int(budget * depths[i]) for i in order] + [budget]
    parts = []
    for k, i in enumerate(order):
        parts += [haystack.text(cuts[k + 1] - cuts[k], rng), sentences[i]]
    parts += [haystack.text(cuts[-1] - cuts[-2], rng), QUESTION.format(city=cities[0])]
    return INTRO.format(context="\n".join(parts)), numbers[0]


def evaluate(
    answer: Answerer,
    haystack: Haystack,
    count_tokens: Callable[[str], int],
    lengths: Sequence[int],
    depths: Sequence[float],
    needles: int = 1,
    trials: int = 4,
    seed: int = 0,
) -> dict:
    """Scores [len(lengths)][len(depths)] (the fraction of trials answered) and every sample."""
    rng = random.Random(seed)
    scores, samples = [], []
    for length in lengths:
        row = []
        for depth in depths:
            cases = [
                make_case(haystack, count_tokens, length, depth, needles, rng)
                for _ in range(trials)
            ]
            predictions = answer([prompt for prompt, _ in cases])
            correct = [key in pred for (_, key), pred in zip(cases, predictions)]
            row.append(sum(correct) / trials)
            samples += [
                {"context_length": length, "depth": depth, "prompt_tokens": count_tokens(p),
                 "answer": key, "prediction": pred, "correct": ok}
                for (p, key), pred, ok in zip(cases, predictions, correct)
            ]  # fmt: skip
        scores.append(row)
    mean = sum(map(sum, scores)) / (len(lengths) * len(depths))
    return {
        "needles": needles, "trials": trials, "seed": seed, "context_lengths": list(lengths),
        "depths": list(depths), "scores": scores, "mean_score": mean, "samples": samples,
    }  # fmt: skip


def plot_heatmap(results: dict, path, title: str = "") -> Path:
    """Depth (rows) x context length (columns), green = retrieved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    scores = np.asarray(results["scores"]).T
    lengths, depths = results["context_lengths"], results["depths"]
    fig, ax = plt.subplots(figsize=(3 + 0.7 * len(lengths), 2 + 0.4 * len(depths)))
    image = ax.imshow(scores, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for (row, col), value in np.ndenumerate(scores):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45)
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title or f"needle in a haystack, {results['needles']} needle(s)")
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def model_answerer(model, tokenizer, max_new_tokens: int = 20, **generate_kwargs) -> Answerer:
    """Greedy continuations of each prompt, in one batch."""
    from yoco_jax.inference import generate

    def answer(prompts: list[str]) -> list[str]:
        outs = generate(model, prompts, max_new_tokens, tokenizer=tokenizer, **generate_kwargs)
        return [o.text for o in outs]

    return answer


def _read_haystack(paths: Sequence[str]) -> list[str]:
    files = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"haystack path {p} does not exist")
        files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return [f.read_text(errors="replace") for f in files]


def _ints(text: str) -> list[int]:
    return [int(x) for x in re.split(r"[,\s]+", text.strip()) if x]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m yoco_jax.eval.needle", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--checkpoint", required=True, help="training output or official folder")
    parser.add_argument("--tokenizer", help="sentencepiece .model (default: the checkpoint's)")
    parser.add_argument("--lengths", type=_ints, default=[256, 512, 1024, 2048])
    parser.add_argument("--depths", default="5", help="a count (evenly spaced) or a list")
    parser.add_argument("--needles", type=int, default=1)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--haystack", nargs="*", default=None, help="text files or folders")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--prefill-chunk", type=int, default=4096)
    parser.add_argument("--out", default="needle", help="writes <out>.json and <out>.png")
    args = parser.parse_args(argv)

    from yoco_jax.api import load_pretrained
    from yoco_jax.inference.tokenizer import find_tokenizer

    model = load_pretrained(args.checkpoint)
    tokenizer = find_tokenizer(args.checkpoint, model.config.vocab_size, args.tokenizer)
    if tokenizer is None:
        parser.error(f"no tokenizer found for {args.checkpoint}: pass --tokenizer PATH")
    if "," in args.depths or "." in args.depths:
        depths = [float(x) for x in args.depths.split(",")]
    else:
        n = int(args.depths)
        depths = [i / max(n - 1, 1) for i in range(n)]
    count = lambda text: len(tokenizer.encode(text))
    haystack = Haystack(_read_haystack(args.haystack) if args.haystack else [FILLER], count)
    answer = model_answerer(model, tokenizer, args.max_new_tokens, prefill_chunk=args.prefill_chunk)
    try:
        results = evaluate(
            answer, haystack, count, args.lengths, depths, args.needles, args.trials, args.seed
        )
    except ValueError as e:
        parser.error(str(e))
    results["checkpoint"] = str(args.checkpoint)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    plot_heatmap(results, out.with_suffix(".png"), f"{Path(args.checkpoint).name}, "
                 f"{args.needles} needle(s)")  # fmt: skip
    print(f"mean score {results['mean_score']:.3f}; wrote {out}.json and {out}.png")


if __name__ == "__main__":
    main()
