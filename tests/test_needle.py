"""The needle-in-a-haystack harness: prompts, grid, JSON, heatmap; an oracle scores 1.0."""

import json
import random
import re

import pytest

import yoco_jax
from yoco_jax.data import demo_tokenizer
from yoco_jax.eval import needle


@pytest.fixture(scope="module")
def tokenizer():
    return demo_tokenizer()


@pytest.fixture(scope="module")
def count(tokenizer):
    return lambda text: len(tokenizer.encode(text))


@pytest.fixture(scope="module")
def haystack(count):
    return needle.Haystack([needle.FILLER], count)


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
        prompt, answer = needle.make_case(haystack, count, 400, depth, needles, rng)
        assert 0.8 * 400 <= count(prompt) <= 400
        assert len(re.findall(r"The special magic .+? number is: \d+", prompt)) == needles
        city = re.search(r"What is the special magic (.+?) number\?", prompt).group(1)
        asked = prompt.index(f"The special magic {city} number is: {answer}")
        start = prompt.index("quiz you about the magic number there.")
        end = prompt.index("What is the special magic")
        assert abs((asked - start) / (end - start) - depth) < 0.15


def test_grid_json_and_heatmap(haystack, count, tmp_path):
    lengths, depths = [200, 300, 400], [0.0, 0.5, 1.0, 0.25]
    results = needle.evaluate(oracle, haystack, count, lengths, depths, needles=2, trials=2)
    assert results["mean_score"] == 1.0
    assert [len(row) for row in results["scores"]] == [4, 4, 4]
    assert len(results["samples"]) == 3 * 4 * 2
    assert set(results["samples"][0]) == {
        "context_length", "depth", "prompt_tokens", "answer", "prediction", "correct",
    }  # fmt: skip
    json.loads(json.dumps(results))  # serializable
    never = needle.evaluate(lambda ps: ["no idea"] * len(ps), haystack, count, [200], [0.5])
    assert never["scores"] == [[0.0]]
    png = needle.plot_heatmap(results, tmp_path / "grid.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_too_short_context_is_a_clear_error(haystack, count):
    with pytest.raises(ValueError, match="longer contexts"):
        needle.make_case(haystack, count, 60, 0.5, 1, random.Random(0))


def test_command_on_a_tiny_random_model(tmp_path, capsys):
    # One shape bucket for both lengths (256), so it compiles once; vocab = the demo tokenizer.
    config = yoco_jax.get_config("yoco-tiny", vocab_size=2048)
    model = yoco_jax.init(config)
    model.tokenizer = demo_tokenizer()  # an export carries its tokenizer
    model.save_official(tmp_path / "ckpt")
    out = tmp_path / "results" / "needle"
    needle.main([
        "--checkpoint", str(tmp_path / "ckpt"), "--lengths", "150,200", "--depths", "2",
        "--trials", "2", "--max-new-tokens", "4", "--out", str(out),
    ])  # fmt: skip
    results = json.loads(out.with_suffix(".json").read_text())
    assert results["depths"] == [0.0, 1.0] and results["context_lengths"] == [150, 200]
    assert all(0.0 <= s <= 1.0 for row in results["scores"] for s in row)
    assert out.with_suffix(".png").exists()
    assert "mean score" in capsys.readouterr().out
