"""A broad lexicon for training passages: real first names, surnames and places of many origins.

The built-in word material of `kvproj.data.passages` draws people's first names from ~190 names and every other
name from one syllable generator. A projector trained on it carries those names well and garbles names spelled
otherwise (docs/evaluation.md, "near misses": "Hamish Dunlebya" for "Hamish Dunleavy"). This module widens the
TRAINING material with the name lists of the `faker` package (MIT licence; first and last names of its ~80
locales, and the ~970 place names of its geo provider), kept to plain ASCII spellings.

Two exclusions keep every held-out measurement honest:
- an entry whose word is one of the built-in pools' validation or test words (the checksum split of
  `passages._split_of`) is dropped, so the broad lexicon never leaks a held-out passage's name into training;
- an entry sharing a word (case-folded) with any bundled evaluation file (`kvproj/data/eval/*.jsonl`: contexts,
  questions and answers) is dropped, so the hand-written narrative set stays made of names training never saw.

The pools are sorted tuples, so a seeded draw is the same on every machine with the same `faker` release.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
import re
from importlib import resources

__all__ = ["Lexicon", "lexicon"]

_NAME = re.compile(r"^[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?$")  # "Dunleavy", "O'Brien", "Osei-Brandt"
_PLACE = re.compile(r"^[A-Z][a-z]+(?: [A-Z][a-z]+)?$")  # "Hrazdan", "Santa Clara"
_WORD = re.compile(r"[a-z]+")


class Lexicon:
    """Sorted pools of first names, surnames and places (training split only)."""

    def __init__(self, first: tuple[str, ...], last: tuple[str, ...], places: tuple[str, ...]) -> None:
        for label, pool in (("first names", first), ("surnames", last), ("places", places)):
            if len(pool) < 100:
                raise RuntimeError(
                    f"data.passages.lexicon 'broad': only {len(pool)} {label} survived the filters; the installed "
                    f"faker release lacks its name lists (valid: faker>=40,<41)"
                )
        self.first, self.last, self.places = first, last, places

    def sizes(self) -> dict[str, int]:
        return {"first": len(self.first), "last": len(self.last), "places": len(self.places)}


def _eval_words() -> frozenset[str]:
    """Every word (case-folded) of the bundled evaluation files."""
    words: set[str] = set()
    for entry in resources.files("kvproj.data").joinpath("eval").iterdir():
        if not entry.name.endswith(".jsonl"):
            continue
        for line in entry.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                for key in ("context", "question", "answer"):
                    words.update(_WORD.findall(str(record.get(key, "")).lower()))
    return frozenset(words)


def _faker_lists() -> tuple[set[str], set[str], set[str]]:
    try:
        import faker.providers.geo as geo
        import faker.providers.person as person
    except ImportError as error:  # a dependency of kvproj; this guards a hand-made environment
        raise ImportError(
            "data.passages.lexicon: 'broad' needs the faker package (pip install 'faker>=40,<41'); valid without "
            "it: 'builtin'"
        ) from error
    first: set[str] = set()
    last: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        for attribute, pool in (("first_names", first), ("last_names", last)):
            values = vars(provider).get(attribute, ())  # class attributes only: some locales define properties
            if isinstance(values, dict):
                values = list(values)
            if isinstance(values, (list, tuple)):
                pool.update(v for v in values if isinstance(v, str) and _NAME.match(v))
    places = {entry[2] for entry in geo.Provider.land_coords if _PLACE.match(entry[2])}
    return first, last, places


@functools.lru_cache(maxsize=4)
def lexicon(seed: int) -> Lexicon:
    """The broad lexicon for passages seed `seed` (the held-out word split depends on it)."""
    from kvproj.data.passages import _FIRST, _split_of

    held_out_first = {name.lower() for name in _FIRST if _split_of(name, seed) != "train"}
    banned = _eval_words() | held_out_first

    def keep(entry: str) -> bool:
        # every word must be a training-split word, and none may occur in a bundled evaluation file
        parts = re.split(r"[ \-']", entry)
        return all(_split_of(p.capitalize(), seed) == "train" and p.lower() not in banned for p in parts if p)

    first, last, places = _faker_lists()
    return Lexicon(
        tuple(sorted(filter(keep, first))), tuple(sorted(filter(keep, last))), tuple(sorted(filter(keep, places)))
    )
