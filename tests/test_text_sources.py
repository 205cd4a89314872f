"""Tests for kvproj.data.text: local files, datasets builders offline, the sampled corpus."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import kvproj.models
from kvproj.data import text as text_module
from kvproj.data.text import (
    DEFAULT_PROMPTS,
    iter_hf_dataset,
    iter_local_texts,
    lm_example,
    meta_path,
    sample_corpus,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models generate ~100x faster single-threaded on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("first line\n\n   \nsecond line  \nthird\n", encoding="utf-8")
    _write_jsonl(tmp_path / "b" / "c.jsonl", [{"text": "json one", "n": 1}, {"text": "json two"}])
    (tmp_path / "z.txt").write_text("last", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a text source", encoding="utf-8")
    return tmp_path


def test_lm_example_cuts_at_the_last_space_before_the_fraction():
    text = "alpha beta gamma delta"  # 22 characters: half is 11, the last space before it at 10
    assert lm_example(text, 0.5, "lm-3") == {
        "id": "lm-3", "context": "alpha beta", "question": "", "answer": "gamma delta",
    }  # fmt: skip
    assert lm_example(text, 0.8, "x")["context"] == "alpha beta gamma"
    no_space = lm_example("abcdefgh", 0.5, "x")  # a hard cut
    assert (no_space["context"], no_space["answer"]) == ("abcd", "efgh")


# ---------------------------------------------------------------------------------------------------------------
# Local files


def test_txt_one_document_per_non_empty_line(corpus_dir):
    assert list(iter_local_texts(corpus_dir / "a.txt")) == ["first line", "second line  ", "third"]
    assert list(iter_local_texts(corpus_dir / "a.txt", start=2)) == ["third"]
    assert list(iter_local_texts(corpus_dir / "a.txt", start=5)) == []


def test_jsonl_field(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "body": "A"}, {"text": "b", "body": "B"}])
    assert list(iter_local_texts(path)) == ["a", "b"]
    assert list(iter_local_texts(path, field="body")) == ["A", "B"]
    assert list(iter_local_texts(str(path), field="body", start=1)) == ["B"]


def test_directory_reads_sorted_files_recursively(corpus_dir):
    expected = ["first line", "second line  ", "third", "json one", "json two", "last"]
    assert list(iter_local_texts(corpus_dir)) == expected
    assert list(iter_local_texts(corpus_dir, start=4)) == expected[4:]


def test_local_errors_name_path_line_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}, {"body": "b"}])
    with pytest.raises(
        ValueError, match=re.escape(f"{path}:2: missing field 'text' (set `field=` to one of ['body'])")
    ):
        list(iter_local_texts(path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": 5}\n[1]\n{oops\n')
    with pytest.raises(ValueError, match=re.escape(f"{bad}:2: field 'text' must be a string, got int")):
        list(iter_local_texts(bad))
    with pytest.raises(ValueError, match=re.escape(f"{bad.with_name('only.jsonl')}:4: invalid JSON")):
        list(iter_local_texts(_only_line(bad, 4)))
    with pytest.raises(FileNotFoundError, match=re.escape(f"text source {str(tmp_path / 'nope.txt')!r} does not")):
        list(iter_local_texts(tmp_path / "nope.txt"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'; valid: \.txt, \.jsonl"):
        list(iter_local_texts(tmp_path / "data.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="folder has no .txt or .jsonl files"):
        list(iter_local_texts(tmp_path / "empty"))


def _only_line(path: Path, lineno: int) -> Path:
    """A copy of `path` where every line but `lineno` is blank, so the error must report that line number."""
    lines = path.read_text().splitlines()
    out = path.with_name("only.jsonl")
    out.write_text("\n".join(line if i == lineno else "" for i, line in enumerate(lines, 1)) + "\n")
    return out


# ---------------------------------------------------------------------------------------------------------------
# datasets builders, offline


def test_hf_json_builder_with_local_data_files(tmp_path):
    rows = [{"text": f"document {i}", "other": i} for i in range(7)] + [{"text": "", "other": 7}]
    path = _write_jsonl(tmp_path / "corpus.jsonl", rows)
    expected = [f"document {i}" for i in range(7)]  # empty texts are skipped
    assert list(iter_hf_dataset("json", data_files=str(path))) == expected
    assert list(iter_hf_dataset("json", data_files=str(path), streaming=False)) == expected
    with pytest.raises(
        ValueError, match=r"dataset 'json' record 0: missing field 'body' \(available: \['other', 'text'\]\)"
    ):
        next(iter_hf_dataset("json", data_files=str(path), field="body"))


def test_hf_missing_data_files_is_not_reported_as_offline(tmp_path):
    missing = str(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match=re.escape(f"dataset 'json': data_files {missing!r} not found")):
        next(iter_hf_dataset("json", data_files=missing))


def test_hf_text_builder(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("line one\nline two\n\nline three\n")
    assert list(iter_hf_dataset("text", data_files=str(path))) == ["line one", "line two", "line three"]


def test_hf_unreachable_dataset_error_names_it_and_suggests_local(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError) as info:
        next(iter_hf_dataset("some-org/surely-not-cached-dataset"))
    message = str(info.value)
    assert "'some-org/surely-not-cached-dataset'" in message
    assert "iter_local_texts" in message and "data_files" in message


# ---------------------------------------------------------------------------------------------------------------
# Sampled corpus

TINY = dict(n_texts=6, max_new_tokens=6, batch_size=4)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_default_prompts_are_many_and_distinct():
    assert len(DEFAULT_PROMPTS) >= 100
    assert len({p.lower() for p in DEFAULT_PROMPTS}) == len(DEFAULT_PROMPTS)


def test_sample_corpus_tiny_model_deterministic_by_seed(tmp_path):
    a = sample_corpus("tiny:llama", seed=0, out_path=tmp_path / "a.jsonl", **TINY)
    b = sample_corpus("tiny:llama", seed=0, out_path=tmp_path / "b.jsonl", **TINY)
    c = sample_corpus("tiny:llama", seed=1, out_path=tmp_path / "c.jsonl", **TINY)
    assert a.read_bytes() == b.read_bytes()
    rows = _rows(a)
    assert len(rows) == 6
    for row in rows:
        assert set(row) == {"text", "prompt", "seed"} and row["seed"] == 0
        assert row["prompt"] in DEFAULT_PROMPTS
        assert row["text"].startswith(row["prompt"]) and len(row["text"]) > len(row["prompt"])
    assert len({text_module._normalize(r["text"]) for r in rows}) == 6
    assert [r["text"] for r in _rows(c)] != [r["text"] for r in rows]
    meta = json.loads(meta_path(a).read_text())
    assert meta["complete"] is True and meta["count"] == 6
    assert meta["key"]["model"] == "tiny:llama" and meta["key"]["seed"] == 0 and meta["key"]["max_new_tokens"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.jsonl",
        "a.jsonl.meta.json",
        "b.jsonl",
        "b.jsonl.meta.json",
        "c.jsonl",
        "c.jsonl.meta.json",
    ]  # no temp files left


def test_sample_corpus_reuses_complete_file_and_regenerates_otherwise(tmp_path, monkeypatch):
    out = sample_corpus("tiny:llama", seed=0, out_path=tmp_path / "c.jsonl", **TINY)
    content = out.read_bytes()
    real_load = kvproj.models.load_model
    calls = []

    def counting_load(name):
        calls.append(name)
        return real_load(name)

    monkeypatch.setattr(kvproj.models, "load_model", counting_load)
    assert sample_corpus("tiny:llama", seed=0, out_path=out, **TINY) == out
    assert calls == [] and out.read_bytes() == content  # reused without loading the model

    sample_corpus("tiny:llama", seed=0, out_path=out, **{**TINY, "max_new_tokens": 5})  # different key
    assert calls == ["tiny:llama"] and out.read_bytes() != content
    assert json.loads(meta_path(out).read_text())["key"]["max_new_tokens"] == 5

    out.write_bytes(out.read_bytes()[:-20])  # truncated file (e.g. edited or copied half-way): regenerate
    sample_corpus("tiny:llama", seed=0, out_path=out, **{**TINY, "max_new_tokens": 5})
    assert len(calls) == 2 and len(_rows(out)) == 6


class _FixedContinuation:
    """Stands in for a model: every prompt gets the same continuation, so only dedup can tell texts apart."""

    def __init__(self, loaded, continuation: str):
        self.model = loaded.model
        self.ids = loaded.tokenizer(continuation, return_tensors="pt")["input_ids"][0]

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def generate(self, input_ids, attention_mask=None, **kwargs):
        tail = self.ids.expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, tail], dim=1)  # [B, T_prompt + T_new]


_REAL_LOAD = kvproj.models.load_model


def _fake_loader(continuation: str):
    def load(name):
        loaded = _REAL_LOAD(name)
        loaded.model = _FixedContinuation(loaded, continuation)
        return loaded

    return load


def test_sample_corpus_deduplicates_normalized_text(tmp_path, monkeypatch):
    monkeypatch.setattr(kvproj.models, "load_model", _fake_loader(" the sea"))
    prompts = ["Beyond", "beyond", "BEYOND ", "Under"]  # the first three normalize to the same text
    out = sample_corpus(
        "tiny:llama", n_texts=2, seed=0, out_path=tmp_path / "d.jsonl", max_new_tokens=4, prompts=prompts
    )
    texts = sorted(text_module._normalize(r["text"]) for r in _rows(out))
    assert texts == ["beyond the sea", "under the sea"]
    with pytest.raises(ValueError, match=r"only 2 distinct texts of n_texts=3"):
        sample_corpus(
            "tiny:llama", n_texts=3, seed=0, out_path=tmp_path / "e.jsonl", max_new_tokens=4, prompts=prompts
        )
    assert not (tmp_path / "e.jsonl").exists()


def test_sample_corpus_write_is_atomic(tmp_path, monkeypatch):
    out = sample_corpus("tiny:llama", seed=0, out_path=tmp_path / "c.jsonl", **TINY)
    before = out.read_bytes(), meta_path(out).read_bytes()

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr("kvproj.atomic.os.fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        sample_corpus("tiny:llama", seed=1, out_path=out, **TINY)
    assert (out.read_bytes(), meta_path(out).read_bytes()) == before  # the old complete file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "c.jsonl.meta.json"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_texts": 0}, "sample_corpus n_texts must be >= 1, got 0"),
        ({"max_new_tokens": 0}, "sample_corpus max_new_tokens and batch_size must be >= 1, got 0 and 8"),
        ({"prompts": []}, "sample_corpus prompts must be a non-empty list of non-empty strings"),
    ],
)
def test_sample_corpus_validates_arguments(tmp_path, kwargs, message):
    args = {"n_texts": 2, "seed": 0, "out_path": tmp_path / "x.jsonl", **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        sample_corpus("tiny:llama", **args)
