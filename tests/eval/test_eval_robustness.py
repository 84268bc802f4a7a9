"""The evaluation commands under bad input (issues 24-26): every bad flag is an exit-2 message
naming the flag, given before any model loads or any work is done; needle answers are matched as
whole numbers."""

import pytest

from yoco_jax.cli.needle import main as needle_main
from yoco_jax.cli.perplexity import main as perplexity_main
from yoco_jax.data import demo_tokenizer
from yoco_jax.eval import needle


def cli(main, argv, capsys):
    """(exit code, stderr's last line) of an in-process CLI run."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, (err.strip().splitlines() or [""])[-1]


MISSING = "no-such-checkpoint"  # every error below comes before the model is looked for


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--depths", "-1"], ["--depths", "a count >= 1"]),
        (["--depths", "0"], ["--depths", "a count >= 1"]),
        (["--depths", "1.5"], ["--depths", "fractions in [0, 1]"]),
        (["--depths", "x"], ["--depths", "neither a count nor a list"]),
        (["--trials", "0"], ["--trials", "must be a positive integer"]),
        (["--trials", "-1"], ["--trials", "must be a positive integer"]),
        (["--lengths", "0,256"], ["--lengths", "positive integers"]),
        (["--needles", "0"], ["--needles", "positive integers"]),
        (["--max-new-tokens", "0"], ["--max-new-tokens", "must be a positive integer"]),
    ],
)
def test_needle_flags_are_checked(flags, words, capsys):
    code, line = cli(needle_main, ["--checkpoint", MISSING, *flags], capsys)
    assert code == 2 and "error:" in line, line
    for word in words:
        assert word in line, line


def test_a_binary_haystack_is_refused(tmp_path, capsys):
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    code, line = cli(needle_main, ["--checkpoint", MISSING, "--haystack", tmp_path], capsys)
    assert code == 2 and "--haystack" in line and "blob.bin is not UTF-8 text" in line, line


@pytest.mark.parametrize("main", [needle_main, perplexity_main])
def test_an_unwritable_out_is_refused_before_the_work(main, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    argv = ["--checkpoint", MISSING, "--out", tmp_path / "file" / "results"]
    if main is perplexity_main:
        argv += ["--data", tmp_path, "--max-length", 16]
    code, line = cli(main, argv, capsys)
    assert code == 2 and "--out" in line and "is a file, not a folder" in line, line
    code, line = cli(main, [*argv[:2], "--out", "/proc/results", *argv[4:]], capsys)
    assert code == 2 and "--out /proc/results" in line and "cannot write in /proc" in line, line


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--max-docs", "0"], ["--max-docs", "must be a positive integer"]),
        (["--max-docs", "-1"], ["--max-docs", "must be a positive integer"]),
        (["--batch-size", "0"], ["--batch-size", "must be a positive integer"]),
        (["--max-length", "0"], ["--max-length", "must be a positive integer"]),
        (["--data", "nope.txt"], ["--data nope.txt does not exist"]),
    ],
)
def test_perplexity_flags_are_checked(flags, words, tmp_path, capsys):
    argv = ["--checkpoint", MISSING, "--data", tmp_path, "--max-length", 16, *flags]
    code, line = cli(perplexity_main, argv, capsys)
    assert code == 2 and "error:" in line, line
    for word in words:
        assert word in line, line


def test_a_needle_number_counts_only_as_a_whole_number():
    assert needle.found("123", "the number is 123.")
    assert needle.found("123", "123")
    assert not needle.found("123", "the number is 41234")
    assert not needle.found("123", "1234")
    assert not needle.found("123", "0123")

    def glued(prompts):  # the asked number with a digit before it
        return [" 9" + p.rsplit("is: ", 1)[1][:6] for p in prompts]

    haystack = needle.Haystack([needle.FILLER], demo_tokenizer())
    assert needle.evaluate(glued, haystack, [200], [0.5], trials=2)["scores"] == [[0.0]]
