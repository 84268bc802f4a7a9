"""Needle in a haystack: the paper's city / magic-number retrieval, single and multi-needle.

A prompt is the official template around a haystack of filler text in which `needles`
sentences "The special magic {city} number is: {number}" hide; the question asks for one city's
number, the asked needle sitting at a given depth (0 = start, 1 = end) and the others at random
depths. A case scores 1 when the number appears, as a whole number (not inside a longer one), in
the model's greedy continuation. Prompts
have the asked length in tokens (the haystack is cut token by token, then trimmed until the
whole prompt fits), or the case is refused. Results over a grid of context lengths x depths
(x needle counts) go to JSON and a heatmap PNG.

    yoco-needle --checkpoint runs/demo --lengths 256,512,1024 --depths 5
    yoco-needle --checkpoint runs/demo --needles 1,2,4,8 --out multi
"""

from __future__ import annotations

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
_CITY_LIST = (
    "Chicago, Yangon, Antananarivo, Colombo, Almaty, Sydney, Mexico City, Seattle, Lagos, "
    "Amsterdam, Belgrade, Cairo, Baghdad, Damascus, Kigali, Dakar, Sofia, Victoria, "
    "Tashkent, Mumbai, Barcelona, Amman, Toronto, Bratislava, Johannesburg, Thimphu, "
    "Bangkok, Santiago, San Francisco, Paris, Rabat, Copenhagen, Madrid, Ho Chi Minh City, "
    "Sarajevo, Delhi, Istanbul, Khartoum, Helsinki, Doha, Kuala Lumpur, Budapest, Shanghai, "
    "Moscow, Los Angeles, Oslo, Berlin, Bangalore, Tokyo, Melbourne, Port Louis, Lisbon, "
    "Nairobi, Kampala, Lima, Maputo, Vancouver, Dubai, Jakarta, Yerevan, Beirut, Athens, "
    "Bucharest, Brussels, Tunis, Astana, Seoul, Buenos Aires, Vienna"
)
CITIES = tuple(_CITY_LIST.split(", "))
# The classic passkey filler (one sentence a line: fine-grained lengths), when no text is given.
FILLER = "\n".join(
    ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go."]
    + ["There and back again."]
)

Answerer = Callable[[list[str]], list[str]]


class Haystack:
    """Filler text cut to token budgets from one token stream: the non-empty lines of `texts`
    joined by spaces, cycled from any offset (so a long line is cut, never skipped)."""

    def __init__(self, texts: Sequence[str], tokenizer):
        lines = [line.strip() for t in texts for line in t.splitlines() if line.strip()]
        if not lines:
            raise ValueError("the haystack has no text: give files with some non-empty lines")
        self.tokenizer = tokenizer
        self.tokens = tokenizer.encode(" ".join(lines) + " ")

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def text(self, tokens: int, start: int) -> str:
        """`tokens` tokens of filler from stream offset `start` (wrapping around)."""
        if tokens <= 0:
            return ""
        stream = self.tokens * (1 + (start % len(self.tokens) + tokens) // len(self.tokens))
        return self.tokenizer.decode(stream[start % len(self.tokens) :][:tokens])


def make_case(
    haystack: Haystack,
    context_length: int,
    depth: float,
    needles: int,
    rng: random.Random,
    slack: int = 8,
) -> tuple[str, str]:
    """(prompt, answer): a prompt of `context_length - slack` to `context_length` tokens, the
    asked needle at `depth` in [0, 1]. Pieces of filler re-tokenize at their joins, so the
    filler budget is corrected until the prompt fits; a prompt that cannot is refused."""
    cities = rng.sample(CITIES, needles)
    numbers = [str(rng.randint(1, 50000)) for _ in cities]
    sentences = [NEEDLE.format(city=c, number=n) for c, n in zip(cities, numbers)]
    question = QUESTION.format(city=cities[0])
    fixed = haystack.count(INTRO.format(context="") + question)
    budget = context_length - fixed - sum(haystack.count(s) for s in sentences)
    if budget <= needles + 1:
        raise ValueError(
            f"context length {context_length} leaves no room for a haystack around {needles} "
            "needle(s): use longer contexts"
        )
    depths = [depth] + [rng.random() for _ in range(needles - 1)]
    order = sorted(range(needles), key=lambda i: depths[i])
    starts = [rng.randrange(len(haystack.tokens)) for _ in range(needles + 1)]

    def build(budget: int) -> str:
        cuts = [0] + [int(budget * depths[i]) for i in order] + [budget]
        parts = []
        for k, i in enumerate(order):
            parts += [haystack.text(cuts[k + 1] - cuts[k], starts[k]), sentences[i]]
        parts += [haystack.text(cuts[-1] - cuts[-2], starts[-1]), question]
        return INTRO.format(context="\n".join(parts))

    for _ in range(8):
        prompt = build(budget)
        n = haystack.count(prompt)
        if context_length - slack <= n <= context_length:
            return prompt, numbers[0]
        budget += context_length - slack // 2 - n
    raise ValueError(
        f"could not build a prompt of {context_length} tokens (the last had {n}): the "
        "haystack's text re-tokenizes unstably; use plainer haystack text"
    )


def found(number: str, prediction: str) -> bool:
    """Whether `number` appears in `prediction` as a whole number ("123" is not in "41234")."""
    return re.search(rf"(?<!\d){re.escape(number)}(?!\d)", prediction) is not None


def check_grid(lengths, depths, needle_counts, trials) -> None:
    """Raises ValueError naming the first bad setting (the CLI flag of the same name)."""
    problems = [
        ("lengths", lengths, "positive token counts, e.g. 256,512", lambda x: x >= 1),
        ("depths", depths, "fractions in [0, 1], or a count >= 1", lambda x: 0 <= x <= 1),
        ("needles", needle_counts, "positive counts, e.g. 1,2,4,8", lambda x: x >= 1),
    ]
    for name, values, want, ok in problems:
        if not values or not all(ok(v) for v in values):
            raise ValueError(f"--{name} {','.join(map(str, values))}: give {want}")
    if trials < 1:
        raise ValueError(f"--trials {trials}: give a positive count of cases per cell")


def evaluate(
    answer: Answerer,
    haystack: Haystack,
    lengths: Sequence[int],
    depths: Sequence[float],
    needles: int = 1,
    trials: int = 4,
    seed: int = 0,
) -> dict:
    """Scores [len(lengths)][len(depths)] (the fraction of trials answered) and every sample."""
    check_grid(lengths, depths, [needles], trials)
    rng = random.Random(seed)
    scores, samples = [], []
    for length in lengths:
        row = []
        for depth in depths:
            cases = [make_case(haystack, length, depth, needles, rng) for _ in range(trials)]
            predictions = answer([prompt for prompt, _ in cases])
            correct = [found(key, pred) for (_, key), pred in zip(cases, predictions)]
            row.append(sum(correct) / trials)
            samples += [
                {
                    "context_length": length,
                    "depth": depth,
                    "prompt_tokens": haystack.count(p),
                    "answer": key,
                    "prediction": pred,
                    "correct": ok,
                }
                for (p, key), pred, ok in zip(cases, predictions, correct)
            ]
        scores.append(row)
    mean = sum(map(sum, scores)) / (len(lengths) * len(depths))
    return {
        "needles": needles,
        "trials": trials,
        "seed": seed,
        "context_lengths": list(lengths),
        "depths": list(depths),
        "scores": scores,
        "mean_score": mean,
        "samples": samples,
    }


def evaluate_needles(
    answer: Answerer,
    haystack: Haystack,
    lengths: Sequence[int],
    depths: Sequence[float],
    needle_counts: Sequence[int],
    trials: int = 4,
    seed: int = 0,
) -> dict:
    """`evaluate` for each needle count; accuracy[n][l] = mean over depths and trials of
    (needle_counts[n], lengths[l]); runs[str(N)] holds each count's full results."""
    check_grid(lengths, depths, needle_counts, trials)
    runs = {
        str(n): evaluate(answer, haystack, lengths, depths, n, trials, seed + i)
        for i, n in enumerate(needle_counts)
    }
    accuracy = [[sum(row) / len(row) for row in runs[str(n)]["scores"]] for n in needle_counts]
    return {
        "needles": list(needle_counts),
        "context_lengths": list(lengths),
        "depths": list(depths),
        "trials": trials,
        "seed": seed,
        "accuracy": accuracy,
        "mean_score": sum(map(sum, accuracy)) / (len(lengths) * len(needle_counts)),
        "runs": runs,
    }


def _heatmap(matrix, rows: list[str], lengths: Sequence[int], ylabel: str, title: str, path):
    """A [rows x lengths] accuracy grid, green = retrieved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(3 + 0.7 * len(lengths), 2 + 0.4 * len(rows)))
    image = ax.imshow(matrix, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_heatmap(results: dict, path, title: str = "") -> Path:
    """One needle count's depth (rows) x context length (columns) grid."""
    title = title or f"needle in a haystack, {results['needles']} needle(s)"
    rows = [f"{d:.0%}" for d in results["depths"]]
    scores = [list(col) for col in zip(*results["scores"])]
    return _heatmap(scores, rows, results["context_lengths"], "needle depth", title, path)


def plot_needles(results: dict, path, title: str = "") -> Path:
    """Needle count (rows) x context length (columns) accuracy of `evaluate_needles`."""
    rows = [str(n) for n in results["needles"]]
    title = title or "multi-needle retrieval"
    return _heatmap(results["accuracy"], rows, results["context_lengths"], "needles", title, path)


def model_answerer(model, tokenizer, max_new_tokens: int = 20, **generate_kwargs) -> Answerer:
    """Greedy continuations of each prompt, in one batch."""
    from yoco_jax.inference import generate

    def answer(prompts: list[str]) -> list[str]:
        outs = generate(model, prompts, max_new_tokens, tokenizer=tokenizer, **generate_kwargs)
        return [o.text for o in outs]

    return answer
