"""The needle-in-a-haystack harness: prompts of the asked length, single and multi-needle grids,
JSON, heatmaps; an oracle scores 1.0 and a first-needle reader scores what it should."""

import json
import random
import re
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import yoco_jax
from yoco_jax.cli import needle as needle_cli
from yoco_jax.data import demo_tokenizer
from yoco_jax.eval import needle

ASSET = Path(yoco_jax.__file__).parent / "assets" / "demo_tokenizer.model"


@pytest.fixture(scope="module")
def tokenizer():
    return demo_tokenizer()


@pytest.fixture(scope="module")
def haystack(tokenizer):
    return needle.Haystack([needle.FILLER], tokenizer)


@pytest.fixture(scope="module")
def count(haystack):
    return haystack.count


def long_lines():
    """Real text whose every line is longer than the contexts asked below."""
    source = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text()
    words = source.split()
    return "\n".join(" ".join(words[i : i + 3000]) for i in range(0, len(words), 3000))


def oracle(prompts):
    """Reads the asked city's number out of the prompt, as a perfect model would."""
    out = []
    for prompt in prompts:
        city = re.search(r"What is the special magic (.+?) number\?", prompt).group(1)
        number = re.search(rf"The special magic {re.escape(city)} number is: (\d+)", prompt)
        out.append(f" {number.group(1)} .")
    return out


@pytest.mark.parametrize("needles", [1, 3])
def test_cases_hold_the_needles_near_the_asked_depth(haystack, count, needles):
    rng = random.Random(0)
    for depth in (0.0, 0.5, 1.0):
        prompt, answer = needle.make_case(haystack, 400, depth, needles, rng)
        assert 400 - 8 <= count(prompt) <= 400
        assert len(re.findall(r"The special magic .+? number is: \d+", prompt)) == needles
        city = re.search(r"What is the special magic (.+?) number\?", prompt).group(1)
        asked = prompt.index(f"The special magic {city} number is: {answer}")
        start = prompt.index("quiz you about the magic number there.")
        end = prompt.index("What is the special magic")
        assert abs((asked - start) / (end - start) - depth) < 0.15


def test_long_haystack_lines_still_give_prompts_of_the_asked_length(tokenizer):
    # Issue #9: whole lines only, so a haystack of long lines gave prompts of the template alone.
    haystack = needle.Haystack([long_lines()], tokenizer)
    assert min(haystack.count(line) for line in long_lines().splitlines()) > 1000
    rng = random.Random(1)
    for length in (300, 700):
        for needles in (1, 4):
            prompt, answer = needle.make_case(haystack, length, 0.3, needles, rng)
            assert length - 8 <= haystack.count(prompt) <= length
            assert f"number is: {answer}" in prompt


def test_grid_json_and_heatmap(haystack, tmp_path):
    lengths, depths = [200, 300, 400], [0.0, 0.5, 1.0, 0.25]
    results = needle.evaluate(oracle, haystack, lengths, depths, needles=2, trials=2)
    assert results["mean_score"] == 1.0
    assert [len(row) for row in results["scores"]] == [4, 4, 4]
    assert len(results["samples"]) == 3 * 4 * 2
    assert set(results["samples"][0]) == {
        "context_length",
        "depth",
        "prompt_tokens",
        "answer",
        "prediction",
        "correct",
    }
    json.loads(json.dumps(results))  # serializable
    never = needle.evaluate(lambda ps: ["no idea"] * len(ps), haystack, [200], [0.5])
    assert never["scores"] == [[0.0]]
    png = needle.plot_heatmap(results, tmp_path / "grid.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_multi_needle_accuracy_per_length_and_count(haystack, tmp_path):
    """A reader that answers with the FIRST needle of the prompt is right exactly when the asked
    needle comes first: the expected accuracy is tallied from the prompts themselves."""
    calls = []

    def first_needle(prompts):
        answers, right = [], []
        for prompt in prompts:
            city = re.search(r"What is the special magic (.+?) number\?", prompt).group(1)
            found = re.findall(r"The special magic (.+?) number is: (\d+)", prompt)
            answers.append(f" {found[0][1]}")
            right.append(found[0][0] == city)
        calls.append(right)
        return answers

    lengths, depths, counts = [300, 400], [0.0, 0.5, 1.0], [1, 2, 4]
    results = needle.evaluate_needles(first_needle, haystack, lengths, depths, counts, trials=3)
    expected = np.array([sum(c) / 3 for c in calls]).reshape(3, 2, 3).mean(axis=2)
    np.testing.assert_allclose(results["accuracy"], expected, atol=1e-12)
    assert results["accuracy"][0] == [1.0, 1.0]  # one needle: always the first
    assert all(a < 1.0 for a in results["accuracy"][2])  # depth 1.0 of 4 is never first
    assert results["mean_score"] == pytest.approx(expected.mean())
    assert sorted(results["runs"]) == ["1", "2", "4"]
    perfect = needle.evaluate_needles(oracle, haystack, lengths, depths, counts, trials=2)
    assert perfect["accuracy"] == [[1.0, 1.0]] * 3
    png = needle.plot_needles(results, tmp_path / "multi.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_too_short_context_is_a_clear_error(haystack):
    with pytest.raises(ValueError, match="longer contexts"):
        needle.make_case(haystack, 60, 0.5, 1, random.Random(0))


def test_command_on_a_tiny_random_model(tmp_path, capsys):
    # One shape bucket for both lengths (256), so it compiles once; vocab = the demo tokenizer.
    config = yoco_jax.get_config("yoco-tiny", vocab_size=2048)
    yoco_jax.init(config).save_official(tmp_path / "ckpt")
    shutil.copy(ASSET, tmp_path / "ckpt" / "tokenizer.model")
    (tmp_path / "hay").mkdir()
    (tmp_path / "hay" / "long.txt").write_text(long_lines())
    out = tmp_path / "results" / "needle"
    needle_cli.main(
        [
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--lengths",
            "150,200",
            "--depths",
            "2",
            "--trials",
            "2",
            "--max-new-tokens",
            "4",
            "--needles",
            "1,2",
            "--out",
            str(out),
            "--haystack",
            str(tmp_path / "hay"),
        ]
    )
    results = json.loads(out.with_suffix(".json").read_text())
    assert results["needles"] == [1, 2] and results["context_lengths"] == [150, 200]
    assert len(results["accuracy"]) == 2 and all(
        0 <= a <= 1 for r in results["accuracy"] for a in r
    )
    for run in results["runs"].values():
        assert run["depths"] == [0.0, 1.0]
        for sample in run["samples"]:  # labelled with the asked length: built at that length
            assert (
                sample["context_length"] - 8 <= sample["prompt_tokens"] <= sample["context_length"]
            )
    assert out.with_suffix(".png").exists()
    assert "mean score" in capsys.readouterr().out
