"""The harness command under bad input (issues 24 and 25): bad flags, tasks lm-eval cannot build
and an output path that cannot take results are exit-2 errors before the model loads; a
temperature without do_sample decodes greedily, as lm-eval's Hugging Face model does."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets is imported: no hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

import yoco_jax  # noqa: E402
from yoco_jax.cli import harness as harness_cli  # noqa: E402
from yoco_jax.data import demo_tokenizer  # noqa: E402
from yoco_jax.eval.lm_eval_model import YocoLM  # noqa: E402

MISSING = "no-such-checkpoint"  # each error below comes before the model is looked for
MULTIPLE_CHOICE = {
    "output_type": "multiple_choice",
    "target_delimiter": "",
    "doc_to_text": "{{question}}",
    "doc_to_choice": "{{choices}}",
    "doc_to_target": "{{label}}",
    "metric_list": [{"metric": "acc"}],
}


def write_task(folder, name, rows):
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "task": name,
        "dataset_path": "json",
        "test_split": "test",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        **MULTIPLE_CHOICE,
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task))


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        harness_cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return exit_info.value.code, err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--num_fewshot", "-1"], ["--num_fewshot", "must be 0 or more"]),
        (["--prefill-chunk", "0"], ["--prefill-chunk", "must be a positive integer"]),
        (["--batch_size", "0"], ["--batch_size", "must be a positive integer"]),
        (["--max-gen-toks", "-5"], ["--max-gen-toks", "must be a positive integer"]),
    ],
)
def test_bad_flags_exit_2(flags, words, capsys):
    code, line = run(["--checkpoint", MISSING, "--tasks", "x", *flags], capsys)
    assert code == 2 and "error:" in line, line
    for word in words:
        assert word in line, line


@pytest.mark.parametrize(
    ("rows", "cause"),
    [([], "StopIteration"), ([{"question": "", "choices": ["", "x"], "label": 0}], "IndexError")],
)
def test_a_task_lm_eval_cannot_build_exits_2_before_the_model_loads(rows, cause, tmp_path, capsys):
    write_task(tmp_path, "bad_task", rows)
    argv = ["--checkpoint", MISSING, "--tasks", "bad_task", "--include_path", tmp_path]
    code, line = run(argv, capsys)
    assert code == 2 and f"lm-eval cannot build the task(s) bad_task ({cause}" in line, line


def test_an_output_path_naming_a_file_is_refused_before_evaluating(tmp_path, capsys):
    write_task(tmp_path, "ok_task", [{"question": "a", "choices": ["b", "c"], "label": 0}])
    (tmp_path / "results").write_text("mine\n")
    argv = [
        "--checkpoint",
        MISSING,
        "--tasks",
        "ok_task",
        "--include_path",
        tmp_path,
        "--output_path",
        tmp_path / "results",
    ]
    code, line = run(argv, capsys)
    assert code == 2 and "--output_path" in line and "is a file: give a folder" in line, line
    assert (tmp_path / "results").read_text() == "mine\n"


def test_a_temperature_without_do_sample_decodes_greedily():
    config = yoco_jax.get_config("yoco-tiny", vocab_size=2048)
    lm = YocoLM(model=yoco_jax.init(config), tokenizer=demo_tokenizer())
    assert lm._settings({"temperature": 0.8, "until": ["\n"]})[2] == 0.0
    assert lm._settings({"temperature": 0.8, "do_sample": False})[2] == 0.0
    assert lm._settings({"temperature": 0.8, "do_sample": True})[2] == 0.8
    assert lm._settings({"do_sample": True})[2] == 1.0
