"""The training stream and its held-out splits: sharding over DataLoader workers and DDP ranks, disjoint text
splits, settings refused at the boundary, and shipped configs found from an install."""

from __future__ import annotations

import pytest
import torch
from test_training import ROOT, _ckpt, _dm, run_cli

from kvproj.cli import packaged_config, resolve_configs
from kvproj.data.datamodule import shard_indices
from kvproj.data.pairs import context_after
from kvproj.module import KVProjectorModule


def test_dataloader_workers_split_the_stream_without_repeats():
    dm = _dm(num_workers=2)  # batch_size 4
    loader = dm.train_dataloader()
    got = []
    for batch, _ in zip(loader, range(5)):
        got.append(batch["stream_index"].tolist())
    assert got == [list(range(4 * b, 4 * b + 4)) for b in range(5)]  # in order, each example once


def test_shards_cover_the_stream_once_for_ranks_and_workers():
    start, batch, world, workers = 7, 3, 2, 3
    seen = []
    for rank in range(world):
        for worker in range(workers):
            it = shard_indices(start, batch, rank, world, worker, workers)
            seen += [next(it) for _ in range(batch * 4)]  # 4 global batches each
    assert sorted(seen) == list(range(start, start + batch * world * workers * 4))


def test_fit_with_workers_records_the_consumed_position(tmp_path):
    proc = run_cli(
        "fit", "--config", "configs/smoke.yaml", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.max_steps", "5", "--trainer.callbacks", "[]", "--data.num_workers", "2",
        "--trainer.limit_val_batches", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = _ckpt(tmp_path / "checkpoints" / "smoke" / "last.ckpt")
    assert state["global_step"] == 5 and state["KVPairDataModule"]["consumed"] == 5 * 8


def test_text_validation_and_test_never_train(tmp_path):
    corpus = tmp_path / "c.txt"
    lines = [f"Document {i} says the river carried {i * 7} boats past the mill at dawn." for i in range(60)]
    corpus.write_text("\n".join(lines + lines[:5]))  # duplicates must not leak across splits
    dm = _dm(dataset="text", text={"files": [str(corpus)]})  # val_examples 8
    splits = dm.text_splits
    assert len(splits["val"]) == len(splits["test"]) == 8
    assert not set(splits["val"]) & set(splits["train"])
    assert not set(splits["test"]) & set(splits["train"])
    assert not set(splits["val"]) & set(splits["test"])
    assert len(splits["train"]) == 60 - 16
    train_contexts = {dm.example_at(i)["context"] for i in range(200)}
    for e in dm.val_raw() + [dm.text_example(i, "test") for i in range(8)]:
        assert e["context"] not in train_contexts
    again = _dm(dataset="text", text={"files": [str(corpus)]})
    assert again.text_splits == splits  # seeded: the same split in every process


def test_text_corpus_too_small_for_held_out_splits(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"text number {i} is here" for i in range(10)))
    dm = _dm(dataset="text", text={"files": [str(corpus)]})
    with pytest.raises(ValueError, match="data.text: 10 distinct texts.*data.val_examples=8"):
        _ = dm.text_splits


@pytest.mark.parametrize(
    "setting, value",
    [("max_context_tokens", 0), ("max_context_tokens", -5), ("num_workers", -1), ("val_examples", 0)],
)
def test_datamodule_settings_refused(setting, value):
    with pytest.raises(ValueError, match=f"data.{setting}: must be"):
        _dm(**{setting: value})


def test_answer_end_is_scored_in_training_only():
    dm = _dm(answer_end="\n")
    example = next(dm.iter_examples(0))
    end = dm.pair.target.tokenizer("\n", add_special_tokens=False).input_ids
    plain = _dm().encode(example)
    trained = dm.encode(example)
    scored = [t for t in trained.labels if t != -100]
    assert scored == [t for t in plain.labels if t != -100] + end  # the answer's own tokens are unchanged
    assert trained.continuation_ids == plain.continuation_ids + end
    # evaluation scores the answer alone: the evaluation codec never carries the end
    assert dm.pair.codec(dm.answer_template, dm.max_context_tokens).encode(example).labels == plain.labels
    # language-modelling examples (no question) are not given an end
    lm = {"context": "The river", "question": "", "answer": " runs north."}
    assert dm.encode(lm).labels == _dm().encode(lm).labels


def test_answer_follow_scores_what_follows_the_answer_in_the_context_in_training_only():
    dm = _dm(answer_follow=12)
    tok = dm.pair.target.tokenizer
    examples = [e for e, _ in zip(dm.iter_examples(0), range(8))]
    for example in examples:
        after = context_after(example["context"], example["answer"], 12)
        assert after and example["context"].count(example["answer"] + after) >= 1
        plain, trained = _dm().encode(example), dm.encode(example)
        extra = tok(after, add_special_tokens=False).input_ids
        # the answer's own tokens are unchanged; what follows it in the text is scored after them
        assert [t for t in trained.labels if t != -100] == [t for t in plain.labels if t != -100] + extra
        # evaluation (FactsEvalCallback, as `kvproj evaluate`) scores the answer alone
        assert dm.eval_codec.encode(example).labels == plain.labels
    lm = {"context": "The river", "question": "", "answer": " runs north."}
    assert dm.encode(lm).labels == _dm().encode(lm).labels


def test_context_after_reads_through_the_first_line_break_and_whole_words_only():
    assert context_after("sample DEW-6716 turned blue", "DEW-6716", 10) == " turned bl"
    assert context_after("sample DEW-6716\nnext line", "DEW-6716", 10) == "\n"
    assert context_after("DEW-67165 and DEW-6716. ok", "DEW-6716", 4) == ". ok"  # not inside DEW-67165
    assert context_after("no answer here", "DEW-6716", 4) == ""
    assert context_after("ends with DEW-6716", "DEW-6716", 4) == ""


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"answer_follow": -1}, r"data.answer_follow: got -1; valid: an int >= 0"),
        ({"answer_follow": 2.5}, r"data.answer_follow: got 2.5; valid: an int >= 0"),
        (
            {"answer_follow": 8, "answer_end": "\n"},
            r"data.answer_end \('\\n'\) and data.answer_follow \(8\): valid: one",
        ),
    ],
)
def test_bad_answer_follow_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _dm(**kwargs)


def test_negative_reconstruction_weight_refused():
    dm = _dm()
    with pytest.raises(ValueError, match="model.reconstruction_weight: must be >= 0, got -0.5"):
        KVProjectorModule(pair=dm.pair, reconstruction_weight=-0.5)


def test_module_makes_the_target_cache_itself_when_a_loss_needs_it():
    dm = _dm()
    module = KVProjectorModule(pair=dm.pair, answer_weight=1.0, reconstruction_weight=1.0)
    stream = dm.iter_examples(0)
    batch = dm.pair.add_caches(dm.collate([dm.encode(next(stream)) for _ in range(4)]), with_target_cache=False)
    assert "target_cache" not in batch
    out, _, _ = module.losses(batch)
    assert torch.isfinite(out["reconstruction"]) and out["reconstruction"] > 0
    expected = dm.pair.target_cache(batch)
    assert torch.equal(batch["target_cache"].keys[0], expected.keys[0])


def test_datamodule_leaves_the_target_cache_to_the_module():
    dm = _dm(protocol="shared")
    stream = dm.iter_examples(0)
    batch = dm.add_caches(dm.collate([dm.encode(next(stream)) for _ in range(4)]))
    assert "source_cache" in batch and "target_cache" not in batch
    module = KVProjectorModule(pair=dm.pair)
    own = module.target_cache(batch)
    assert module.target_cache(batch) is own  # made once per batch
    assert torch.equal(own.keys[0], dm.pair.target_cache(batch).keys[0])


def test_validation_runs_the_oracle_and_the_reconstruction_once(monkeypatch):
    import kvproj.module as module_file

    dm = _dm()
    module = KVProjectorModule(pair=dm.pair, kl_weight=0.5, reconstruction_weight=1.0)
    stream = dm.iter_examples(0)
    batch = dm.add_caches(dm.collate([dm.encode(next(stream)) for _ in range(4)]))
    prefixes, reconstructions = [], []
    hidden, rec = module.continuation_hidden, module_file.reconstruction
    monkeypatch.setattr(
        module, "continuation_hidden", lambda prefix, b: prefixes.append(prefix) or hidden(prefix, b)
    )
    monkeypatch.setattr(module_file, "reconstruction", lambda *a: reconstructions.append(1) or rec(*a))
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    module._eval_step(batch, "val")
    assert sum(p is batch["target_cache"] for p in prefixes) == 1  # the oracle forward: KL and loss_text share it
    assert len(reconstructions) == 1  # the loss and the logged cosines share it


def test_text_corpus_is_loaded_before_the_train_loader_forks_workers(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"Document {i} says the mill ground {i * 3} sacks." for i in range(40)))
    dm = _dm(text={"files": [str(corpus)], "share": 0.3}, num_workers=2)
    assert dm._text_splits is None
    dm.train_dataloader()
    assert dm._text_splits is not None  # workers inherit it instead of each loading the corpus
    assert _dm()._text_splits is None and _dm().train_dataloader() is not None  # no text: nothing loaded


def test_shipped_configs_resolve_by_name_and_default():
    assert packaged_config("smoke") == packaged_config("smoke.yaml")
    assert packaged_config("smoke").read_text() == (ROOT / "configs" / "smoke.yaml").read_text()
    assert resolve_configs(["fit"]) == ["fit", "--config", str(packaged_config("default"))]
    assert resolve_configs(["fit", "--config", "smoke"])[2] == str(packaged_config("smoke"))
    with pytest.raises(FileNotFoundError, match="--config nope.yaml: no such file.*smoke"):
        resolve_configs(["fit", "--config", "nope.yaml"])


def _smoke_fit(tmp_path, *args: str, log: str = "WARNING"):
    return run_cli(
        "fit", "--config", "configs/smoke.yaml", "--trainer.default_root_dir", str(tmp_path), *args, log=log
    )


def test_fuse_without_shared_context_refused(tmp_path):
    proc = _smoke_fit(tmp_path, "--model.mode", "fuse")
    assert proc.returncode != 0
    assert "model.mode 'fuse' needs data.protocol 'shared'" in proc.stderr


def test_fuse_with_a_ridge_start_refused(tmp_path):
    # the ridge map predicts the target's own cache; fuse adds the projection to that cache
    proc = _smoke_fit(tmp_path, "--model.mode", "fuse", "--data.protocol", "shared", "--model.ridge_init", "true")
    assert proc.returncode != 0
    assert "model.ridge_init: got true with model.mode 'fuse'; valid: false" in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from kvproj.atomic import atomic_directory, atomic_open, atomic_write

    target = atomic_write(tmp_path / "r.json", "old\n")
    with pytest.raises(RuntimeError, match="boom"), atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left
    folder = tmp_path / "proj"
    with atomic_directory(folder) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(folder) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("boom")
    assert (folder / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["proj", "r.json"]


def test_dataset_options_are_checked_before_models_load(tmp_path):
    # a model that does not exist: the option's error comes first, so nothing was loaded before it
    proc = _smoke_fit(tmp_path, "--data.passages.lexicon", "faker", "--pair.source.name", "no-such-model")
    assert proc.returncode != 0
    assert "data.passages.lexicon: got 'faker'; valid: builtin, broad" in proc.stderr
    assert "no-such-model" not in proc.stderr
    proc = _smoke_fit(tmp_path, "--data.facts.n_train_entities", "0", "--pair.source.name", "no-such-model")
    assert "facts.n_train_entities must be an integer in 1..50000, got 0" in proc.stderr


def test_matmul_precision_is_checked_before_models_load_and_applied(tmp_path):
    proc = _smoke_fit(tmp_path, "--run.matmul_precision", "fast")
    assert proc.returncode != 0
    assert "run.matmul_precision: got 'fast'; valid: highest, high, medium" in proc.stderr
    assert not (tmp_path / "checkpoints").exists()
    args = ["--run.matmul_precision", "high", "--trainer.max_steps", "2", "--trainer.callbacks", "[]"]
    proc = _smoke_fit(tmp_path, *args, log="INFO")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "float32 matrix products at precision 'high' (run.matmul_precision)" in proc.stderr
