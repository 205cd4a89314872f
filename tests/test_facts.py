"""Tests for kvproj.data.facts: determinism, held-out splits, answers in contexts, resumable stream, eval files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest

from kvproj.data import facts
from kvproj.data.facts import (
    BUNDLED_EVAL_FILES,
    RELATIONS,
    EvalFileError,
    FactExample,
    FactsConfig,
    bundled_eval_path,
    generate_splits,
    is_closed_value,
    iter_train,
    narrative_eval_path,
    people,
    read_jsonl,
    train_example,
    write_jsonl,
)
from kvproj.data.pairs import mention

SMALL = FactsConfig(n_train_entities=400, n_val_entities=60, n_test_entities=80, n_train_examples=1500)
REL = {r.name: r for r in RELATIONS}


@pytest.fixture(scope="module")
def splits() -> dict[str, list[FactExample]]:
    return generate_splits(SMALL)


def _template_of(example: FactExample) -> str:
    return example.question.replace(example.entity, "{name}")


def _digest(examples) -> str:
    return hashlib.sha256(json.dumps([e.to_dict() for e in examples]).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_data_different_seed_different(splits):
    again = generate_splits(FactsConfig(**{**SMALL.__dict__}))
    assert again == splits
    other = generate_splits(FactsConfig(**{**SMALL.__dict__, "seed": 1}))
    for name in facts.SPLITS:
        assert len(other[name]) == len(splits[name])
        same = sum(a == b for a, b in zip(other[name], splits[name]))
        assert same == 0, name
    assert set(people(SMALL, "test")) != set(people(FactsConfig(**{**SMALL.__dict__, "seed": 1}), "test"))


def test_identical_across_processes_with_different_hash_seeds(splits):
    """Nothing may depend on set/dict-of-str order (PYTHONHASHSEED) or on process state."""
    code = (
        "import hashlib, json; from kvproj.data.facts import *; "
        "cfg = FactsConfig(n_train_entities=400, n_val_entities=60, n_test_entities=80, n_train_examples=1500); "
        "s = generate_splits(cfg); "
        "print(hashlib.sha256(json.dumps([e.to_dict() for k in SPLITS for e in s[k]]).encode()).hexdigest())"
    )
    expected = _digest([e for k in facts.SPLITS for e in splits[k]])
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


def test_example_ids_unique_and_splits_labelled(splits):
    for name, examples in splits.items():
        assert len({e.id for e in examples}) == len(examples)
        assert {e.split for e in examples} == {name}
    assert [len(splits[k]) for k in facts.SPLITS] == [1500, 60, 80, 80]


# ---------------------------------------------------------------------------------------------------------------
# Held-out splits


def test_names_disjoint_between_splits_by_construction():
    cfg = FactsConfig(seed=3)  # the default sizes
    names = {s: list(people(cfg, s)) for s in ("train", "val", "test")}
    assert [len(names[s]) for s in names] == [3000, 200, 300]
    for s, ns in names.items():
        assert len(set(ns)) == len(ns), f"duplicate names in {s}"
    firsts = {s: {n.split()[0] for n in ns} for s, ns in names.items()}
    surnames = {s: {n.split(" ", 1)[1] for n in ns} for s, ns in names.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not firsts[a] & firsts[b], (a, b)
        assert not surnames[a] & surnames[b], (a, b)
    # Held-out surnames are new strings, not re-combinations of training surnames' first syllables.
    assert not {n[:1] for n in surnames["train"]} & {n[:1] for n in surnames["test"]}


def test_held_out_values_never_used_in_train(splits):
    train_values = {v for p in people(SMALL, "train").values() for v in p.values()}
    train_words = {w.lower() for v in train_values for w in v.split()}
    for split in ("val", "test"):
        held = [(rel, v) for p in people(SMALL, split).values() for rel, v in p.items()]
        new = [(rel, v) for rel, v in held if not is_closed_value(rel, v)]
        assert len(new) > 0.35 * len(held)  # random_value_share = 0.5
        for rel, v in new:
            assert v not in train_values, (split, rel, v)
            if rel != "birth_year":  # composite values share a closed suffix ("Lane", "maker"): check the word
                assert v.split()[0].lower() not in train_words, (split, rel, v)
    # The examples themselves: a held-out answer is a closed-list value or a value no training example used.
    train_answers = {e.answer for e in islice(iter_train(SMALL), 5000)}
    test_new = [e for e in splits["test"] if not is_closed_value(e.relation, e.answer)]
    assert len(test_new) >= 25
    assert not {e.answer for e in test_new} & train_answers


def test_val_and_test_values_disjoint():
    val = {v for p in people(SMALL, "val").values() for r, v in p.items() if not is_closed_value(r, v)}
    test = {v for p in people(SMALL, "test").values() for r, v in p.items() if not is_closed_value(r, v)}
    assert val and test and not val & test


def test_test_in_distribution_uses_train_people_and_held_out_phrasings(splits):
    train_people = people(SMALL, "train")
    for e in splits["test_in_distribution"]:
        assert e.entity in train_people
        rel = REL[e.relation]
        assert _template_of(e) in rel.held_out_questions
        # The fact asked about is stated with a held-out phrasing.
        value = train_people[e.entity][e.relation]
        held = [t.format(name=e.entity, value=value, a_value=facts._a(value)) for t in rel.held_out_facts]
        assert any(h in e.context for h in held), e
    for split in ("train", "val", "test"):
        for e in splits[split]:
            assert _template_of(e) in REL[e.relation].train_questions, e
            for held_fact in REL[e.relation].held_out_facts:
                prefix = held_fact.split("{")[0]
                assert not prefix or prefix not in e.context, (split, e)


def test_every_relation_has_enough_phrasings():
    assert len(RELATIONS) >= 10
    for rel in RELATIONS:
        assert len(rel.train_facts) >= 4 and len(rel.train_questions) >= 3, rel.name
        assert len(rel.held_out_facts) >= 1 and len(rel.held_out_questions) >= 1
        for template in rel.facts:
            assert not template.startswith(("{value}", "{a_value}")), template  # keeps answers' case verbatim
        assert len(set(rel.closed)) == len(rel.closed)


# ---------------------------------------------------------------------------------------------------------------
# Contexts, questions, answers


def test_answers_appear_verbatim_and_are_short(splits):
    for examples in splits.values():
        for e in examples:
            assert e.answer in e.context, e
            assert 1 <= len(e.answer.split()) <= 3, e
            assert e.entity in e.question and e.entity in e.context
            assert e.question.endswith("?")
            assert e.answer == people(SMALL, e.split)[e.entity][e.relation]


def test_fact_counts_follow_config():
    cfg = FactsConfig(**{**SMALL.__dict__, "facts_per_context": (2, 4), "same_relation_distractors": 0.0})
    counts = [len(re.findall(r"\.(?: |$)", e.context)) for e in islice(iter_train(cfg), 600)]
    assert min(counts) == 2 and max(counts) == 4
    assert set(counts) == {2, 3, 4}
    one = FactsConfig(**{**SMALL.__dict__, "facts_per_context": (1, 1), "same_relation_distractors": 0.0})
    assert all(len(re.findall(r"\.(?: |$)", e.context)) == 1 for e in islice(iter_train(one), 200))


def _has_same_relation_distractor(e: FactExample, everyone: dict[str, dict[str, str]]) -> bool:
    """Another person in the context whose (different) value of the asked relation is also in the context."""
    return any(
        name != e.entity
        and name in e.context
        and values[e.relation] != e.answer
        and values[e.relation] in e.context
        for name, values in everyone.items()
    )


def test_same_relation_distractor_share():
    everyone = people(SMALL, "train")
    examples = list(islice(iter_train(SMALL), 1500))
    share = sum(_has_same_relation_distractor(e, everyone) for e in examples) / len(examples)
    assert abs(share - 0.2) < 0.04, share
    never = FactsConfig(**{**SMALL.__dict__, "same_relation_distractors": 0.0})
    assert not any(_has_same_relation_distractor(e, everyone) for e in islice(iter_train(never), 500))
    always = FactsConfig(**{**SMALL.__dict__, "same_relation_distractors": 1.0})
    assert all(_has_same_relation_distractor(e, everyone) for e in islice(iter_train(always), 300))


@pytest.mark.parametrize("share", [0.0, 0.5, 0.9])
def test_random_value_share_close_to_configured(share):
    cfg = FactsConfig(**{**SMALL.__dict__, "random_value_share": share})
    answers = [(e.relation, e.answer) for e in islice(iter_train(cfg), 2000)]
    measured = sum(not is_closed_value(r, a) for r, a in answers) / len(answers)
    assert abs(measured - share) < 0.05, measured
    values = [(r, v) for p in people(cfg, "train").values() for r, v in p.items()]
    measured = sum(not is_closed_value(r, v) for r, v in values) / len(values)
    assert abs(measured - share) < 0.03, measured


# ---------------------------------------------------------------------------------------------------------------
# The training stream


def test_iter_train_resumes_exactly():
    assert list(islice(iter_train(SMALL, start=50), 10)) == list(islice(iter_train(SMALL), 60))[50:]
    assert train_example(SMALL, 1234) == next(iter_train(SMALL, start=1234))
    assert generate_splits(SMALL)["train"][:20] == list(islice(iter_train(SMALL), 20))


def test_iter_train_example_depends_only_on_seed_and_index():
    first = [train_example(SMALL, i) for i in (7, 3, 900)]
    list(islice(iter_train(SMALL), 100))  # consuming the stream changes nothing
    assert [train_example(SMALL, i) for i in (7, 3, 900)] == first


def test_a_long_stream_has_distinct_ids_and_contexts():
    # speed is measured in benchmarks/facts_generation.py, not asserted here (a shared machine is noisy)
    examples = list(islice(iter_train(FactsConfig(seed=11)), 2_000))  # includes building the 3500-person world
    assert len({e.id for e in examples}) == 2_000
    assert len({e.context for e in examples}) > 1_900


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"facts_per_context": (0, 2)}, "facts.facts_per_context"),
        ({"facts_per_context": (3, 2)}, "facts.facts_per_context"),
        ({"random_value_share": 1.5}, "facts.random_value_share must be a number in [0, 1], got 1.5"),
        ({"same_relation_distractors": -0.1}, "facts.same_relation_distractors"),
        ({"n_test_entities": 0}, "facts.n_test_entities must be an integer in 1..50000, got 0"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FactsConfig(**kwargs)


def test_tiny_worlds_still_generate():
    cfg = FactsConfig(n_train_entities=1, n_val_entities=1, n_test_entities=1, n_train_examples=20)
    s = generate_splits(cfg)
    assert len(s["train"]) == 20 and len(s["test"]) == 1 and len(s["test_in_distribution"]) == 1
    assert all(e.answer in e.context for v in s.values() for e in v)


# ---------------------------------------------------------------------------------------------------------------
# Eval files


def test_write_then_read_jsonl_round_trip(tmp_path, splits):
    path = write_jsonl(splits["test"][:5], tmp_path / "sub" / "test.jsonl")
    rows = read_jsonl(path)
    assert rows == [e.to_dict() for e in splits["test"][:5]]
    assert not [p for p in path.parent.iterdir() if p.name != "test.jsonl"]  # no temp file left behind


def test_read_jsonl_missing_key_names_file_line_and_key(tmp_path):
    path = tmp_path / "eval.jsonl"
    lines = [
        {"id": "a", "context": "Ada lives in Rome.", "question": "Where?", "answer": "Rome"},
        {"id": "b", "context": "Bo lives in Oslo.", "question": "Where?"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    with pytest.raises(EvalFileError, match=re.escape(f"{path}:2: missing key 'answer'")):
        read_jsonl(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"context": "c", "question": "q", "answer": "a"}\n{not json\n', ":2: invalid JSON"),
        ('\n\n["context"]\n', ":3: expected a JSON object, got list"),
        ('{"context": "c", "question": "q", "answer": 3}\n', ":1: key 'answer' must be a non-empty string, got 3"),
        (
            '{"id": "x", "context": "c", "question": "q", "answer": "a"}\n'
            '{"id": "x", "context": "c", "question": "q", "answer": "a"}\n',
            ":2: duplicate id 'x' (first at line 1)",
        ),
    ],
)
def test_read_jsonl_errors(tmp_path, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(EvalFileError, match=re.escape(str(path) + message)):
        read_jsonl(path)


def test_read_jsonl_default_ids_and_extra_keys(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('\n{"context": "c a", "question": "q", "answer": "a", "source": "me"}\n')
    assert read_jsonl(path) == [{"context": "c a", "question": "q", "answer": "a", "source": "me", "id": "mine-2"}]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_genre_passages_eval_file():
    """The hand-written genre passages: verbatim short answers, questions, several questions per passage, and the
    kinds of answer the file is for (numbers, codes, names) all present."""
    path = bundled_eval_path("genres")
    assert path.is_file() and path.parent == narrative_eval_path().parent
    rows = read_jsonl(path)
    assert len(rows) >= 60 and len({r["id"] for r in rows}) == len(rows)
    assert len({r["context"] for r in rows}) < len(rows)  # passages carry more than one question
    assert len({(r["context"], r["question"]) for r in rows}) == len(rows)
    # the shuffled control deranges each evaluation batch by context: one passage's questions are spread out
    assert all(a["context"] != b["context"] for a, b in zip(rows, rows[1:]))
    for r in rows:
        assert mention(r["context"], r["answer"]), r["id"]  # a whole-word span of its context
        assert 1 <= len(r["answer"].split()) <= 3, r["id"]
        assert r["question"].endswith("?"), r["id"]
    assert sum(r["answer"].replace(",", "").replace(".", "").isdigit() for r in rows) >= 10
    assert sum(bool(re.fullmatch(r"[A-Z]{2}-\d+", r["answer"])) for r in rows) >= 2


def test_bundled_eval_files_by_name():
    from kvproj.eval.run import load_examples

    assert set(BUNDLED_EVAL_FILES) == {"narrative", "genres"}
    assert load_examples("facts", "genres", "test", None, None) == read_jsonl(bundled_eval_path("genres"))
    assert bundled_eval_path("narrative") == narrative_eval_path()
    with pytest.raises(ValueError, match=r"bundled eval file: got 'novels'; valid: narrative, genres"):
        bundled_eval_path("novels")


def test_narrative_eval_file():
    path = narrative_eval_path()
    assert path.is_file() and path.parent == Path(facts.__file__).parent / "eval"
    rows = read_jsonl(path)
    assert len(rows) >= 100
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["context"] for r in rows}) == len(rows)
    template_names = set(facts._FIRST_NAMES) | set(facts._SIBLING_NAMES)
    for r in rows:
        assert r["answer"] in r["context"], r["id"]
        assert 1 <= len(r["answer"].split()) <= 3, r["id"]
        assert r["question"].endswith("?")
        assert not set(re.findall(r"[A-Z][a-z]+", r["context"])) & template_names, r["id"]
