"""Multi-genre passages: answers copied verbatim, held-out genres and names, deterministic, in the datamodule."""

from __future__ import annotations

import hashlib
import json
import random
import re

import pytest
from test_training import _dm

from kvproj.data.lexicon import _eval_words, faker_words
from kvproj.data.passages import (
    _FIRST,
    ANSWER_KINDS,
    GENRE_NAMES,
    GENRES,
    NAME_LIST_QUESTIONS,
    NAME_QUESTIONS,
    WIDE_GENRES,
    Material,
    PassagesConfig,
    _first_names,
    _split_of,
    answer_kind,
    name_list,
    name_question,
    passage_example,
)
from kvproj.data.passages import broad_lexicon as lexicon

CFG = PassagesConfig()


def _whole_word(answer: str, context: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(answer) + r"(?![\w])", context) is not None


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_every_answer_is_in_its_passage(split):
    for i in range(600):
        e = passage_example(CFG, split, i)
        assert e["answer"] and e["question"].endswith("?")
        assert _whole_word(e["answer"], e["context"]), e


def test_genres_are_held_out_by_split():
    seen = {s: {passage_example(CFG, s, i)["genre"] for i in range(800)} for s in ("train", "val", "test")}
    assert seen["val"] == set(CFG.val_genres) and seen["test"] == set(CFG.test_genres)
    assert seen["train"] == set(CFG.train_genres()) and len(seen["train"]) >= 12
    assert not seen["train"] & (seen["val"] | seen["test"])


def test_first_names_are_disjoint_across_splits():
    pools = {s: set(_first_names(0, s)) for s in ("train", "val", "test")}
    assert all(pools.values())
    assert not pools["train"] & pools["val"] and not pools["train"] & pools["test"]
    assert not pools["val"] & pools["test"]


class _CountingPeople(Material):
    """Material that records the first name of every person it draws (a full name or a first name alone)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.first_names: list[str] = []
        self._inside_person = False

    def person(self) -> str:
        self._inside_person = True
        try:
            name = super().person()
        finally:
            self._inside_person = False
        self.first_names.append(name.split()[0])
        return name

    def first(self) -> str:
        name = super().first()
        if not self._inside_person:
            self.first_names.append(name)
        return name


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_no_two_people_of_a_passage_share_a_first_name(split):
    # every genre, drawn from each split's (small) name pool: "Ada Krel" and "Ada" would make questions ambiguous
    drawn = 0
    for name in GENRE_NAMES:
        for i in range(150):
            m = _CountingPeople(random.Random(f"people/{split}/{name}/{i}"), split, CFG.seed)
            GENRES[name](m)
            assert len(set(m.first_names)) == len(m.first_names), (split, name, i, m.first_names)
            drawn += len(m.first_names) > 1
    assert drawn >= 5 * 150  # email, meeting notes, dialogue, sports and letters name several people


def test_passages_are_a_pure_function_of_seed_split_index():
    assert passage_example(CFG, "train", 41) == passage_example(PassagesConfig(), "train", 41)
    assert passage_example(CFG, "train", 41) != passage_example(PassagesConfig(seed=1), "train", 41)
    assert len({passage_example(CFG, "train", i)["context"] for i in range(300)}) == 300


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_genres": ["poetry"]}, "data.passages.val_genres: unknown genre"),
        ({"val_genres": ["faq"], "test_genres": ["faq"]}, "overlap"),
        ({"val_genres": list(GENRE_NAMES)[:10], "test_genres": list(GENRE_NAMES)[10:]}, "no genre for training"),
        ({"share": 1.5}, "data.passages.share: must be in"),
        ({"lexicon": "faker"}, "data.passages.lexicon: got 'faker'; valid: builtin, broad"),
        ({"name_lists": 1.5}, r"data.passages.name_lists: got 1.5; valid: a share in \[0, 1\]"),
        ({"name_lists": True}, "data.passages.name_lists: got True"),
        ({"name_questions": -0.1}, r"data.passages.name_questions: got -0.1; valid: a share in \[0, 1\]"),
        (
            {"name_lists": 0.6, "name_questions": 0.5},
            r"name_lists \(0.6\) \+ name_questions \(0.5\) is more than 1",
        ),
        ({"genre_set": "all"}, "data.passages.genre_set: got 'all'; valid: core, wide"),
        ({"answer_balance": "yes"}, "data.passages.answer_balance: got 'yes'; valid: true, false"),
        ({"phrasings": "many"}, "data.passages.phrasings: got 'many'; valid: one, varied"),
    ],
)
def test_bad_passage_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PassagesConfig(**kwargs)


def test_datamodule_streams_passages_and_validates_on_held_out_genres():
    dm = _dm(dataset="passages")
    train = [dm.example_at(i) for i in range(50)]
    assert all(e["genre"] in CFG.train_genres() for e in train)
    assert {e["genre"] for e in dm.val_raw()} <= set(CFG.val_genres)
    batch = dm.collate([dm.encode(e) for e in train[:4]])
    assert batch["labels"].ne(-100).any()


def test_mixed_stream_takes_each_corpus_by_its_share():
    dm = _dm(passages={"share": 0.3})
    kinds = [dm.source_of(i) for i in range(2000)]
    assert 0.25 < kinds.count("passages") / 2000 < 0.35 and kinds.count("text") == 0
    assert dm.example_at(kinds.index("passages"))["id"].startswith("passage-train-")
    with pytest.raises(ValueError, match=r"data.text.share \+ data.passages.share"):
        _dm(passages={"share": 0.8}, text={"share": 0.5})


def test_evaluate_reads_held_out_passage_sets():
    from kvproj.eval.run import load_examples

    val = load_examples("facts", "passages:val", "test", None, 30)
    assert len(val) == 30 and {e["genre"] for e in val} <= set(CFG.val_genres)
    assert len(load_examples("facts", "passages:test", "test", None, None)) == 200
    with pytest.raises(ValueError, match="valid passage sets are passages:val and passages:test"):
        load_examples("facts", "passages:train", "test", None, None)


BROAD = PassagesConfig(lexicon="broad")


def test_broad_lexicon_is_large_sorted_and_free_of_held_out_and_eval_words():
    lex = lexicon(0)
    assert lex.sizes()["first"] > 5000 and lex.sizes()["last"] > 5000 and lex.sizes()["places"] > 300
    eval_words = _eval_words()
    assert {"dunleavy", "hamish", "ottoline", "velmora"} <= eval_words  # the narrative file is read
    assert "crumbwizard" not in eval_words  # the genre passages are not (kvproj/data/eval/README.md)
    held_out = {n for n in _FIRST if _split_of(n, 0) != "train"}
    for pool in (lex.first, lex.last, lex.places):
        assert list(pool) == sorted(set(pool))
        for entry in pool:
            parts = [p for p in re.split(r"[ \-']", entry) if p]
            assert all(p.lower() not in eval_words for p in parts), entry
            assert all(_split_of(p.capitalize(), 0) == "train" for p in parts), entry
    assert not held_out & set(lex.first)
    assert lexicon(1).first != lex.first  # the held-out split depends on the passages seed


def test_broad_lexicon_widens_training_names_only():
    builtin_first = set(_FIRST)
    train = [passage_example(BROAD, "train", i) for i in range(300)]
    assert all(_whole_word(e["answer"], e["context"]) for e in train)
    people = [e["answer"] for e in train if re.fullmatch(r"[A-Z][a-z]+ [A-Z][\w'-]+", e["answer"])]
    assert len(people) >= 10
    assert sum(p.split()[0] not in builtin_first for p in people) >= len(people) // 2
    assert train[7] == passage_example(PassagesConfig(lexicon="broad"), "train", 7)  # deterministic
    assert train[7] != passage_example(CFG, "train", 7)
    for split in ("val", "test"):  # held-out passages do not change: numbers stay comparable across recipes
        assert all(passage_example(BROAD, split, i) == passage_example(CFG, split, i) for i in range(100))


def test_broad_training_passages_keep_first_names_unique():
    lex = lexicon(0)
    for name in GENRE_NAMES:
        for i in range(60):
            m = _CountingPeople(random.Random(f"broad/{name}/{i}"), "train", 0, lex)
            GENRES[name](m)
            assert len(set(m.first_names)) == len(m.first_names), (name, i, m.first_names)


def test_broad_words_are_common_words_free_of_eval_words():
    words = faker_words()
    sizes = words.sizes()
    assert sizes["nouns"] > 500 and sizes["adjectives"] > 250 and sizes["roles"] > 150
    eval_words = _eval_words()
    assert {"cornet", "starlings", "judge"} <= eval_words  # the narrative file's common nouns are read too
    for pool in (words.nouns, words.adjectives, words.roles):
        assert list(pool) == sorted(set(pool))
        for entry in pool:
            assert entry == entry.lower() and re.fullmatch(r"[a-z]+(?: [a-z]+){0,2}", entry), entry
            assert not set(entry.split()) & eval_words, entry
    assert "slate gray" in words.adjectives and "cornflower blue" not in words.adjectives  # "blue" is an eval word


def test_broad_words_widen_training_objects_and_roles_only():
    cfg = PassagesConfig(words="broad")
    train = [passage_example(cfg, "train", i) for i in range(400)]
    assert all(_whole_word(e["answer"], e["context"]) for e in train)
    words = faker_words()
    objects = [e["answer"] for e in train if e["genre"] in ("dialogue", "review", "letter", "diary")]
    new_nouns = [a for a in objects if a.split()[-1] in words.nouns]
    assert len(new_nouns) >= 5, objects
    assert train[3] == passage_example(PassagesConfig(words="broad"), "train", 3)  # deterministic
    builtin = [passage_example(CFG, "train", i) for i in range(400)]
    assert train != builtin
    for split in ("val", "test"):  # held-out passages do not change
        assert all(passage_example(cfg, split, i) == passage_example(CFG, split, i) for i in range(100))
    with pytest.raises(ValueError, match="data.passages.words: got 'lorem'; valid: builtin, broad"):
        PassagesConfig(words="lorem")


def test_name_list_orders_whole_word_mentions_and_drops_first_names_inside_full_names():
    context = "From: Ana Silva\nTo: Bram Oduya\nMeet at Kelby Labs in Tromsvik. Anakin waved. Thanks, Ana"
    names = ["Ana", "Ana Silva", "Tromsvik", "Bram", "Bram Oduya", "Kelby Labs", "Zed", "Ana"]
    # "Zed" is not stated; "Ana" and "Bram" are parts of full names; "Anakin" does not mention "Ana"
    assert name_list(context, names) == ["Ana Silva", "Bram Oduya", "Kelby Labs", "Tromsvik"]
    assert name_list(context, names, limit=2) == ["Ana Silva", "Bram Oduya"]
    assert name_list("Dana met Ana.", ["Ana", "Dana"]) == ["Dana", "Ana"]


def test_name_list_questions_replace_a_share_of_training_questions_only():
    cfg = PassagesConfig(lexicon="broad", name_lists=0.5)
    plain = PassagesConfig(lexicon="broad")
    train = [passage_example(cfg, "train", i) for i in range(300)]
    base = [passage_example(plain, "train", i) for i in range(300)]
    lists = [e for e, b in zip(train, base) if e != b]
    assert 0.2 * 300 <= len(lists) <= 0.5 * 300  # half are drawn; passages with fewer than two names keep theirs
    for e, b in zip(train, base):
        assert e["context"] == b["context"] and e["genre"] == b["genre"]  # the passage itself never changes
        if e in lists:
            assert e["question"] in NAME_LIST_QUESTIONS
            names = e["answer"].split("\n")
            assert 2 <= len(names) <= 4
            positions = [re.search(r"(?<!\w)" + re.escape(n) + r"(?!\w)", e["context"]).start() for n in names]
            assert positions == sorted(positions)
        else:
            assert e == b  # every other example is exactly the plain stream's
    assert train[11] == passage_example(PassagesConfig(lexicon="broad", name_lists=0.5), "train", 11)
    for split in ("val", "test"):  # held-out passages keep their ordinary questions
        assert all(passage_example(cfg, split, i) == passage_example(plain, split, i) for i in range(100))


def test_name_question_asks_one_part_of_a_stated_full_name_and_never_an_ambiguous_one():
    context = "Ana Silva and Bram Silva met Cleo Oduya-Reyes. Dana waved."
    people = ["Ana Silva", "Bram Silva", "Cleo Oduya-Reyes", "Zed Quill"]  # Zed Quill is not stated
    stated = [p.split(" ", 1) for p in people[:3]]
    valid = {
        # the first name given the surname: only Cleo's (the two Silvas share theirs)
        **{(form.format(surname="Oduya-Reyes"), "Cleo"): "first" for form in NAME_QUESTIONS["first"]},
        **{(form.format(first=f), s): "surname" for form in NAME_QUESTIONS["surname"] for f, s in stated},
        **{(form.format(first=f), f"{f} {s}"): "full" for form in NAME_QUESTIONS["full"] for f, s in stated},
    }
    drawn = [name_question(context, people, random.Random(i)) for i in range(200)]
    assert all(pair in valid for pair in drawn), [pair for pair in drawn if pair not in valid]
    assert {valid[pair] for pair in drawn} == {"first", "surname", "full"}
    assert name_question("Dana waved at the Kelby Labs team.", ["Zed Quill"], random.Random(0)) is None


def test_name_questions_replace_a_share_of_training_questions_in_the_ordinary_answer_form():
    cfg = PassagesConfig(lexicon="broad", name_questions=0.5)
    plain = PassagesConfig(lexicon="broad")
    asked = 0
    for i in range(300):
        e, b = passage_example(cfg, "train", i), passage_example(plain, "train", i)
        assert e["context"] == b["context"] and e["genre"] == b["genre"]
        if e != b:
            asked += 1
            assert "\n" not in e["answer"] and ", " not in e["answer"]  # one name, not a list
            assert _whole_word(e["answer"], e["context"])
            assert any(e["question"].startswith(f.split("{")[0]) for pair in NAME_QUESTIONS.values() for f in pair)
    assert 0.25 * 300 <= asked <= 0.5 * 300  # half are drawn; passages that state no full name keep theirs
    both = PassagesConfig(lexicon="broad", name_lists=0.5, name_questions=0.5)
    questions = [passage_example(both, "train", i)["question"] for i in range(200)]
    assert any(q in NAME_LIST_QUESTIONS for q in questions) and not any("\n" in q for q in questions)
    for split in ("val", "test"):
        assert all(passage_example(cfg, split, i) == passage_example(plain, split, i) for i in range(100))


def test_wide_genre_set_adds_training_genres_with_titles_and_leaves_held_out_passages_alone():
    wide = PassagesConfig(lexicon="broad", genre_set="wide")
    plain = PassagesConfig(lexicon="broad")
    assert len(WIDE_GENRES) == 7 and not set(WIDE_GENRES) & set(plain.train_genres())
    assert wide.train_genres() == plain.train_genres() + WIDE_GENRES
    train = [passage_example(wide, "train", i) for i in range(600)]
    assert {e["genre"] for e in train} == set(wide.train_genres())
    assert all(_whole_word(e["answer"], e["context"]) for e in train)
    eval_words = _eval_words()
    titles = [
        e["answer"]
        for e in train
        if e["genre"] in ("interview", "club_newsletter", "museum_label") and e["answer"][0].isupper()
    ]
    assert len(titles) >= 20
    # titles of training passages come from faker's word lists, none of whose words is in an evaluation file
    title_shaped = [t for t in titles if " & " in t or " and " in t or t.startswith("The ")]
    assert title_shaped and all(
        not {w.lower() for w in re.findall(r"[A-Za-z]+", t)} - {"the", "and"} & eval_words for t in title_shaped
    ), title_shaped
    for split in ("val", "test"):
        assert all(passage_example(wide, split, i) == passage_example(plain, split, i) for i in range(100))


def test_answer_kind_tells_numbers_codes_names_and_common_words_apart():
    answers = (
        "1978",
        "-5",
        "3.5",
        "7:40",
        "CA-3831",
        "12 May",
        "Hamish Dunleavy",
        "The Silver Goat",
        "a tiny snail",
    )
    kinds = ["number"] * 4 + ["code"] * 2 + ["name_or_title"] * 2 + ["common_words"]
    assert [answer_kind(a) for a in answers] == kinds and set(kinds) == set(ANSWER_KINDS)


def test_answer_balance_draws_each_kind_a_passage_offers_evenly_and_leaves_held_out_passages_alone():
    balanced = PassagesConfig(lexicon="broad", genre_set="wide", answer_balance=True)
    plain = PassagesConfig(lexicon="broad", genre_set="wide")
    n = 1500
    train = [passage_example(balanced, "train", i) for i in range(n)]
    assert all(_whole_word(e["answer"], e["context"]) for e in train)
    # the passage and genre are drawn before the question: only the question (and its answer) can change
    assert all(e["context"] == passage_example(plain, "train", i)["context"] for i, e in enumerate(train[:200]))

    def share(examples, kinds):
        return sum(answer_kind(e["answer"]) in kinds for e in examples) / len(examples)

    before = [passage_example(plain, "train", i) for i in range(n)]
    # numbers and codes are the minority kinds in the genres' question lists: balancing raises them
    assert share(train, ("number", "code")) > share(before, ("number", "code")) + 0.04
    assert share(train, ("name_or_title",)) < share(before, ("name_or_title",)) - 0.04
    for split in ("val", "test"):
        assert all(passage_example(balanced, split, i) == passage_example(plain, split, i) for i in range(100))


class _Frame:
    """A frames stream that always picks wording `k` (of however many a genre writes)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def randrange(self, n: int) -> int:
        return self.k % n


@pytest.mark.parametrize("k", [0, 1, 2])
def test_every_wording_of_every_genre_states_every_answer(k):
    for name, write in GENRES.items():
        for i in range(150):
            for broad in (None, lexicon(0)):
                text, qas = write(Material(random.Random(f"{name}/{i}"), "train", 0, broad, None, _Frame(k)))
                missing = [answer for _, answer in qas if not _whole_word(str(answer), text)]
                assert not missing, (name, k, missing, text)


def test_varied_phrasings_reword_training_passages_only_and_keep_their_facts():
    one = PassagesConfig(lexicon="broad", genre_set="wide")
    varied = PassagesConfig(lexicon="broad", genre_set="wide", phrasings="varied")
    wordings: dict[str, set[str]] = {}
    changed = 0
    for i in range(400):
        a, b = passage_example(one, "train", i), passage_example(varied, "train", i)
        assert {k: a[k] for k in ("id", "question", "answer", "genre")} == {
            k: b[k] for k in ("id", "question", "answer", "genre")
        }
        changed += a["context"] != b["context"]
        # the wording, told apart by the words the values do not fill in
        wordings.setdefault(b["genre"], set()).add(" ".join(re.findall(r"\b[a-z]{4,}\b", b["context"])[:3]))
    assert 200 < changed < 340  # two of three draws reword (expected 267)
    assert all(len(w) >= 2 for w in wordings.values()), wordings
    for split in ("val", "test"):
        assert all(passage_example(varied, split, i) == passage_example(one, split, i) for i in range(100))


def test_the_default_training_stream_is_pinned():
    """The passages the committed numbers were measured on (docs/evaluation.md): a change to any genre's first
    wording, the draws or the lexicon moves this hash, and then the documented numbers need a new run."""
    for cfg, digest in (
        (PassagesConfig(), "154a81cde53f0f7282ebbb5e8d9719dcbfe54285ff189dcd36abfde9d2cbcbb4"),
        (
            PassagesConfig(lexicon="broad", genre_set="wide"),
            "a694764c2de287d71db382ae3cacbbefb45d1edc72bbf36a5ff77ea06d3c4f1b",
        ),
    ):
        examples = [passage_example(cfg, s, i) for s in ("train", "val", "test") for i in range(300)]
        assert hashlib.sha256(json.dumps(examples).encode()).hexdigest() == digest
