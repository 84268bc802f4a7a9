"""Data pipeline tests: tokenizer, packing against a pure-Python reference, sharding, resume,
official layout mixtures, prepare -> ArrayRecord, and error messages. Tiny corpora in tmp."""

import json
import pickle
import random
import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from yoco_jax.cli import tokenizer as tokenizer_cli
from yoco_jax.cli.prepare import main as prepare_main
from yoco_jax.data import DataConfig, Tokenizer, demo_tokenizer, make_iterator, stdlib_corpus
from yoco_jax.data.documents import DataWarning
from yoco_jax.data.pipeline import held_out, split_indices
from yoco_jax.data.prepare import prepare

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "code", "yoco"]
WORDS += ["naïve", "café", "日本語", "🙂", "\t", "\n", "    ", "x=1;", "0123456789"]


def random_text(rng: random.Random, i: int) -> str:
    n = rng.choice([1, 2, 5, 17, 40, 90, 160])
    return f"doc{i} " + " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def tok():
    return demo_tokenizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder of text files (nested) and a JSONL file, plus files that must be skipped.

    Returns (folder, texts in document order: sorted file paths, JSONL lines in order)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    texts = {}
    for i in range(30):
        path = root / f"sub{i % 3}" / f"file{i:02d}.txt"
        path.parent.mkdir(exist_ok=True)
        texts[str(path)] = random_text(rng, i)
        path.write_text(texts[str(path)])
    lines = [random_text(rng, 100 + i) for i in range(14)]
    jsonl = root / "more.jsonl"
    records = [json.dumps({"text": t}) for t in lines]
    records.insert(5, "   ")  # blank lines are not documents
    jsonl.write_text("\n".join(records) + "\n")
    (root / ".hidden.txt").write_text("never read")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.txt").write_text("never read")
    (root / "blob.bin").write_bytes(b"\x00\x01binary")
    docs = sorted([(p, [t]) for p, t in texts.items()] + [(str(jsonl), lines)])
    ordered = [t for _, ts in docs for t in ts]
    return root, ordered


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """Official layout: source A (weight 3, two shards, absolute paths) and B (weight 1,
    relative path)."""
    root = tmp_path_factory.mktemp("official")
    rng = random.Random(1)
    texts = {"A": [], "B": []}
    for name, word, shards in (("A", "alpha", 2), ("B", "beta", 1)):
        folder = root / "shard" / name
        folder.mkdir(parents=True)
        for k in range(shards):
            docs = [f"{word} " * rng.randint(1, 60) + f"{k}.{j}" for j in range(20)]
            texts[name] += docs
            (folder / f"{k:05d}.jsonl").write_text(
                "".join(json.dumps({"text": d}) + "\n" for d in docs)
            )
    (root / "json").mkdir()
    a_shards = [str(root / "shard" / "A" / f"{k:05d}.jsonl") for k in range(2)]
    (root / "json" / "A.json").write_text(json.dumps(a_shards))
    (root / "json" / "B.json").write_text(json.dumps(["shard/B/00000.jsonl"]))
    entries = [{"name": "A", "weight": 0.6}, {"name": "B", "weight": 0.2}]
    (root / "json" / "train.json").write_text(json.dumps(entries))
    return root, texts


# --- pure-Python reference -------------------------------------------------------------------


def reference_batches(docs, eos, pad, seq_len, batch_size):
    """Concat-and-chunk of the documents (each + EOS) into rows of seq_len + 1, padded."""
    stream = [t for d in docs for t in [*d, eos]]
    rows = [stream[i : i + seq_len + 1] for i in range(0, len(stream), seq_len + 1)]
    while len(rows) % batch_size:
        rows.append([])
    out = {"inputs": [], "targets": [], "segment_ids": [], "loss_mask": []}
    for row in rows:
        segments, segment = [], 1
        for token in row:
            segments.append(segment)
            segment += token == eos
        full = row + [pad] * (seq_len + 1 - len(row))
        segments += [0] * (seq_len + 1 - len(row))
        out["inputs"].append(full[:-1])
        out["targets"].append(full[1:])
        out["segment_ids"].append(segments[:-1])
        out["loss_mask"].append([1.0 if j + 1 < len(row) else 0.0 for j in range(seq_len)])
    return {k: np.asarray(v).reshape(-1, batch_size, seq_len) for k, v in out.items()}


def stream_of(batches):
    """The real tokens of the batches' rows, in order."""
    tokens = []
    for b in batches:
        for inputs, targets, segments, mask in zip(
            b["inputs"], b["targets"], b["segment_ids"], b["loss_mask"]
        ):
            row = [*inputs[segments > 0], *targets[-1:][mask[-1:] > 0]]
            tokens += [int(t) for t in row]
    return tokens


def split_documents(stream, eos):
    docs, current = [], []
    for t in stream:
        if t == eos:
            docs.append(tuple(current))
            current = []
        else:
            current.append(t)
    return docs


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# --- tokenizer --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_tok(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "small"
    tokenizer_cli.main(
        ["train", "--input", str(corpus[0]), "--vocab-size", "320", "--out", str(out)]
    )
    return Tokenizer.load(f"{out}.model")


@pytest.mark.parametrize("which", ["small", "demo"])
def test_tokenizer_round_trip_and_special_ids(which, small_tok, tok):
    t = small_tok if which == "small" else tok
    assert (t.pad_id, t.eos_id, t.bos_id) == (0, 1, 2)
    assert t.vocab_size == (320 if which == "small" else 2048)
    texts = [
        "",
        " ",
        "  lead\ttab\n\n  trail  ",
        "never seen: Ωμέγα ✓ 🚀 ∑",
        "def f(x):\n    return x",
    ]
    for text in texts:
        ids = t.encode(text)
        assert t.decode(ids) == text
        assert all(3 <= i < t.vocab_size for i in ids)  # no specials from text (byte fallback)
        assert t.encode(text, bos=True, eos=True) == [t.bos_id, *ids, t.eos_id]
    clone = pickle.loads(pickle.dumps(t))
    assert clone.encode(texts[2]) == t.encode(texts[2]) and clone.sha256 == t.sha256


def test_demo_tokenizer_is_small_and_encodes_stdlib(tok):
    assert Path(tok.path).stat().st_size < 100_000
    text = Path(stdlib_corpus()[0]).read_text(errors="replace")
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < len(text) / 2  # the merges learned something


def test_tokenizer_trains_from_texts(tmp_path):
    rng = random.Random(3)
    texts = [random_text(rng, i) for i in range(200)]
    t = Tokenizer.train(texts, 400, tmp_path / "texts")
    assert (tmp_path / "texts.model").is_file() and t.vocab_size == 400
    assert t.decode(t.encode(texts[7])) == texts[7]
    with pytest.raises(ValueError, match="could not train with vocab_size=270"):
        Tokenizer.train(texts, 270, tmp_path / "too_small")


def test_stdlib_corpus():
    files = stdlib_corpus()
    assert files == sorted(files) == stdlib_corpus()
    assert len(files) > 500 and all(f.endswith(".py") for f in files)
    assert str(Path(sysconfig.get_paths()["stdlib"]) / "os.py") in files
    assert not any("site-packages" in f for f in files)


# --- packing, splits, sharding ----------------------------------------------------------------


def test_held_out_split_is_a_fixed_fraction():
    mask = held_out(20_000, 0.1)
    assert abs(mask.mean() - 0.1) < 0.01
    assert np.array_equal(mask, held_out(20_000, 0.1))
    assert np.array_equal(held_out(100, 0.1), mask[:100])  # a document's split ignores corpus size
    train, evals = split_indices(500, 0.1, "train"), split_indices(500, 0.1, "eval")
    assert sorted([*train, *evals]) == list(range(500)) and not set(train) & set(evals)


def test_eval_packing_matches_reference(corpus, tok):
    root, texts = corpus
    seq_len, batch_size = 37, 3
    config = DataConfig(path=str(root), eval_fraction=0.4)
    batches = list(make_iterator(config, tok, seq_len=seq_len, batch_size=batch_size, split="eval"))
    docs = [tok.encode(texts[i]) for i in split_indices(len(texts), 0.4, "eval")]
    expected = reference_batches(docs, tok.eos_id, tok.pad_id, seq_len, batch_size)
    assert len(batches) == len(expected["inputs"])
    for k, v in expected.items():
        got = np.stack([b[k] for b in batches])
        assert got.dtype == (np.float32 if k == "loss_mask" else np.int32)
        np.testing.assert_array_equal(got, v, err_msg=k)


def test_train_epochs_are_reshuffled_permutations(corpus, tok):
    root, texts = corpus
    config = DataConfig(path=str(root), eval_fraction=0.2, shuffle_window=0)
    train = [tuple(tok.encode(texts[i])) for i in split_indices(len(texts), 0.2, "train")]
    n_tokens = sum(len(d) + 1 for d in train)
    batches = take(make_iterator(config, tok, seq_len=29, batch_size=4, seed=5), n_tokens // 40)
    assert all(b["loss_mask"].all() and (b["segment_ids"] > 0).all() for b in batches)
    docs = split_documents(stream_of(batches), tok.eos_id)
    k = len(train)
    epoch1, epoch2 = docs[:k], docs[k : 2 * k]
    assert Counter(epoch1) == Counter(train) == Counter(epoch2)
    assert epoch1 != epoch2 and epoch1 != train


def test_shuffle_window_permutes_rows_within_windows(corpus, tok):
    root, _ = corpus
    rows = {}
    for window in (0, 8):
        config = DataConfig(path=str(root), shuffle_window=window)
        batches = take(make_iterator(config, tok, seq_len=16, batch_size=4, seed=2), 8)
        rows[window] = [tuple(r) for b in batches for r in b["inputs"]]
    for start in range(0, 32, 8):
        assert sorted(rows[0][start : start + 8]) == sorted(rows[8][start : start + 8])
    assert rows[0] != rows[8]


def test_seed_determinism(corpus, tok):
    config = DataConfig(path=str(corpus[0]))
    make = lambda seed: take(make_iterator(config, tok, seq_len=24, batch_size=2, seed=seed), 6)
    assert_same_batches(make(1), make(1))
    assert not np.array_equal(make(1)[0]["inputs"], make(2)[0]["inputs"])


@pytest.mark.parametrize("split", ["train", "eval"])
def test_process_slices_are_disjoint_and_cover(corpus, tok, split):
    root, texts = corpus
    config = DataConfig(path=str(root), eval_fraction=0.3, shuffle_window=0)
    expected = [tuple(tok.encode(texts[i])) for i in split_indices(len(texts), 0.3, split)]
    count = 3
    seen = []
    for p in range(count):
        it = make_iterator(
            config, tok, seq_len=19, batch_size=2, split=split, process_index=p, process_count=count
        )
        batches = list(it) if split == "eval" else take(it, 80)
        share = len(range(p, len(expected), count))  # this process's documents in one epoch
        seen.append(split_documents(stream_of(batches), tok.eos_id)[:share])
        assert len(seen[-1]) == share
    assert Counter(d for docs in seen for d in docs) == Counter(expected)


# --- resume -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source,split,at",
    [("text", "train", [0, 3, 61]), ("official", "train", [5, 40]), ("text", "eval", [2])],
)
def test_resume_gives_the_uninterrupted_batches(corpus, official, tok, source, split, at):
    path = corpus[0] if source == "text" else official[0]
    config = DataConfig(path=str(path), eval_fraction=0.3, shuffle_window=6)
    make = lambda: make_iterator(config, tok, seq_len=21, batch_size=3, split=split, seed=9)
    for n in at:
        it = make()
        take(it, n)
        state = json.loads(json.dumps(it.get_state()))
        expected = take(it, 7)
        resumed = make()
        resumed.set_state(state)
        assert_same_batches(take(resumed, 7), expected)


def test_resume_rejects_a_different_pipeline(corpus, tok):
    config = DataConfig(path=str(corpus[0]))
    state = make_iterator(config, tok, seq_len=8, batch_size=2).get_state()
    other = make_iterator(config, tok, seq_len=8, batch_size=4)
    with pytest.raises(ValueError, match="same data settings"):
        other.set_state(state)


# --- official layout, prepare -----------------------------------------------------------------


def test_official_mixture_follows_weights(official, tok):
    root, _ = official
    config = DataConfig(path=str(root), eval_fraction=0.0)
    batches = take(make_iterator(config, tok, seq_len=16, batch_size=8, seed=0), 50)
    rows = [tok.decode(r) for b in batches for r in b["inputs"]]
    from_a = [("alpha" in r) for r in rows]
    assert all(("beta" in r) != a for r, a in zip(rows, from_a))  # each row from one source
    assert abs(np.mean(from_a) - 0.75) < 0.03


def test_official_reads_every_document_once_in_eval(official, tok):
    root, texts = official
    config = DataConfig(path=str(root), eval_fraction=0.5)
    batches = list(make_iterator(config, tok, seq_len=16, batch_size=2, split="eval"))
    expected = [
        tuple(tok.encode(t[i]))
        for name in ("A", "B")
        for t in [texts[name]]
        for i in split_indices(len(t), 0.5, "eval")
    ]
    assert split_documents(stream_of(batches), tok.eos_id) == expected


@pytest.mark.parametrize("source", ["text", "official"])
def test_prepare_then_arrayrecord_equals_on_the_fly(corpus, official, tok, tmp_path, source):
    root = corpus[0] if source == "text" else official[0]
    out = tmp_path / "tokens"
    if source == "text":
        prepare_main(["--input", str(root), "--tokenizer", tok.path, "--out", str(out)])
        texts = corpus[1]
    else:
        prepare(str(root), tok, out, progress=False)
        texts = official[1]["A"] + official[1]["B"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["sha256"] == tok.sha256
    assert manifest["num_documents"] == len(texts)
    assert manifest["num_tokens"] == sum(len(tok.encode(t)) for t in texts)
    for split, n in (("train", 12), ("eval", None)):
        batches = []
        for path in (root, out):
            config = DataConfig(path=str(path), eval_fraction=0.3)
            it = make_iterator(config, tok, seq_len=23, batch_size=2, split=split, seed=4)
            batches.append(list(it) if n is None else take(it, n))
        assert_same_batches(*batches)
    with pytest.raises(FileExistsError, match="not empty"):
        prepare(str(root), tok, out, progress=False)


def test_arrayrecord_rejects_another_tokenizer(corpus, tok, small_tok, tmp_path):
    prepare(str(corpus[0]), tok, tmp_path / "tokens", progress=False)
    config = DataConfig(path=str(tmp_path / "tokens"), kind="arrayrecord")
    with pytest.raises(ValueError, match="tokenized with"):
        make_iterator(config, small_tok, seq_len=8, batch_size=2)


# --- errors -----------------------------------------------------------------------------------


def test_data_errors(tmp_path, tok):
    def build(path, **kw):
        return make_iterator(DataConfig(path=str(path), **kw), tok, seq_len=8, batch_size=2)

    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        build(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="matches no files"):
        build(tmp_path / "*.nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty corpus"):
        build(tmp_path / "empty")
    (tmp_path / "empty" / "a.txt").write_text("")
    with pytest.raises(ValueError, match="empty corpus"):
        build(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="json/train.json"):
        build(tmp_path / "empty", kind="official")
    with pytest.raises(FileNotFoundError, match="prepare"):
        build(tmp_path / "empty", kind="arrayrecord")

    official = tmp_path / "official"
    (official / "json").mkdir(parents=True)
    (official / "json" / "train.json").write_text(json.dumps([{"name": "C", "weight": 1}]))
    (official / "json" / "C.json").write_text(json.dumps(["shard/C/0.jsonl"]))
    with pytest.raises(FileNotFoundError, match="shard/C/0.jsonl"):
        build(official)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "no text field"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1.*fields"):
        next(build(bad))

    small = tmp_path / "one.txt"
    small.write_text("one document")
    with pytest.raises(ValueError, match="eval_fraction > 0"):
        make_iterator(
            DataConfig(path=str(small), eval_fraction=0.0),
            tok,
            seq_len=8,
            batch_size=1,
            split="eval",
        )
    with pytest.raises(ValueError, match="no train documents for data stream 1 of 2"):
        make_iterator(
            DataConfig(path=str(small)),
            tok,
            seq_len=8,
            batch_size=1,
            process_index=1,
            process_count=2,
        )
    for kwargs, message in (
        (dict(split="test"), "split"),
        (dict(seq_len=0), "seq_len"),
        (dict(process_index=2, process_count=2), "process_index"),
    ):
        args = dict(seq_len=8, batch_size=1) | kwargs
        with pytest.raises(ValueError, match=message):
            make_iterator(DataConfig(path=str(small)), tok, **args)


def test_config_and_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        DataConfig(path="x", kind="parquet")
    with pytest.raises(ValueError, match="eval_fraction"):
        DataConfig(path="x", eval_fraction=1.0)
    with pytest.raises(ValueError, match="shuffle_window"):
        DataConfig(path="x", shuffle_window=-1)
    with pytest.raises(ValueError, match=r"unknown DataConfig keys \['shufle'\]"):
        DataConfig.from_dict({"path": "x", "shufle": 3})
    assert DataConfig(path=["a", "b"]).path == ("a", "b")
    with pytest.raises(FileNotFoundError, match="missing.model.*does not exist"):
        Tokenizer.load(tmp_path / "missing.model")
    (tmp_path / "corrupt.model").write_bytes(b"definitely not a protobuf")
    with pytest.raises(ValueError, match="corrupt.model is not a valid sentencepiece model"):
        Tokenizer.load(tmp_path / "corrupt.model")


# --- bad data is found before training (issue 9: defects 6, 7, 10, 12) ------------------------


def test_bad_text_files_are_refused_by_name_or_skipped_in_folders(tmp_path, tok):
    build = lambda path: make_iterator(DataConfig(path=str(path)), tok, seq_len=8, batch_size=2)
    (tmp_path / "blob.dat").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"blob.dat looks binary \(a NUL byte at offset 0\)"):
        build(tmp_path / "blob.dat")
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "latin1.txt").write_bytes("café crème\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8 \(byte 0xe9 at offset 3"):
        build(folder / "latin1.txt")
    for i in range(3):
        (folder / f"ok{i}.txt").write_text(f"good text {i} " * 20)
    with pytest.warns(DataWarning, match=r"skipped 1 file\(s\) that are not UTF-8.*latin1.txt"):
        batches = build(folder)
    text = tok.decode(next(batches)["inputs"].reshape(-1).tolist())
    assert "good text" in text and "caf" not in text


def test_jsonl_is_checked_up_front_and_null_texts_are_skipped_and_counted(tmp_path, tok):
    build = lambda path: make_iterator(DataConfig(path=str(path)), tok, seq_len=8, batch_size=2)
    lines = [json.dumps({"text": f"line {i}"}) for i in range(3000)]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([*lines[:-1], '{"text": "cut of']) + "\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:3000: not a JSON line"):
        build(broken)  # at construction, before any batch is read
    for bad, message in (
        ({"text": 123}, "field 'text' holds a int, expected a string"),
        ({"raw_content_lines": ["a", 1]}, "expected a list of strings"),
        (["text"], "must be a JSON object"),
    ):
        path = tmp_path / "bad.jsonl"
        path.write_text("\n".join([*lines[:5], json.dumps(bad)]) + "\n")
        with pytest.raises(ValueError, match=r"bad.jsonl:6: .*" + message):
            build(path)
    nulls = tmp_path / "nulls.jsonl"
    records = [{"text": None} if i in (2, 5, 9) else {"text": f"kept {i}"} for i in range(12)]
    nulls.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.warns(DataWarning, match=r"skipped 3 JSONL line\(s\) whose text is null: "
                      r".*nulls.jsonl:3, .*nulls.jsonl:6, .*nulls.jsonl:10"):  # fmt: skip
        batches = make_iterator(
            DataConfig(path=str(nulls), eval_fraction=0), tok, seq_len=200, batch_size=1
        )
    text = tok.decode(next(batches)["inputs"][0].tolist())
    assert "None" not in text and "kept 0" in text


def test_small_corpora_hold_out_one_document_and_single_ones_say_which_key(tmp_path, tok):
    assert held_out(5, 0.01).sum() == 1 and held_out(1, 0.01).sum() == 0
    assert held_out(5, 0.0).sum() == 0
    np.testing.assert_array_equal(held_out(5, 0.01), held_out(5, 0.01))
    for i in range(5):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i} " * 30)
    config = DataConfig(path=str(tmp_path))  # the default eval_fraction, 0.01
    streams = [
        list(
            make_iterator(
                config,
                tok,
                seq_len=16,
                batch_size=2,
                split="eval",
                process_index=k,
                process_count=2,
            )
        )  # fmt: skip
        for k in range(2)
    ]
    assert sorted(len(s) for s in streams)[0] == 0 and sum(len(s) for s in streams) > 0
    train = make_iterator(config, tok, seq_len=16, batch_size=2)
    held = int(np.flatnonzero(held_out(5, 0.01))[0])
    seen = tok.decode(np.concatenate([next(train)["inputs"].reshape(-1) for _ in range(20)]))
    assert f"document {held} " not in seen and all(
        f"document {i} " in seen for i in range(5) if i != held
    )
    single = tmp_path / "doc0.txt"
    with pytest.raises(ValueError, match=r"data.eval_fraction=0.01 holds out no document"):
        make_iterator(DataConfig(path=str(single)), tok, seq_len=8, batch_size=1, split="eval")


def test_official_layout_rejects_a_weight_that_is_not_a_positive_number(official, tmp_path, tok):
    root, _ = official
    for weight in (None, "3", -1, True):
        copy = tmp_path / f"copy{weight}"
        (copy / "json").mkdir(parents=True)
        (copy / "json" / "A.json").write_text((root / "json" / "A.json").read_text())
        (copy / "json" / "train.json").write_text(json.dumps([{"name": "A", "weight": weight}]))
        with pytest.raises(ValueError, match=rf"source 'A' has weight {weight!r}.*positive number"):
            make_iterator(DataConfig(path=str(copy)), tok, seq_len=8, batch_size=1)
