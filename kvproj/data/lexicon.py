"""A broad lexicon for training passages: real first names, surnames and places of many origins
(`data.passages.lexicon: broad`), and common nouns, adjectives and occupations (`data.passages.words: broad`).

The built-in word material of `kvproj.data.passages` draws people's first names from ~190 names and every other
name from one syllable generator. A projector trained on it carries those names well and garbles names spelled
otherwise (docs/evaluation.md, "near misses": "Hamish Dunlebya" for "Hamish Dunleavy"). This module widens the
TRAINING material with the name lists of the `faker` package (MIT licence; first and last names of its ~80
locales, and the ~970 place names of its geo provider), kept to plain ASCII spellings.

`faker_words` does the same for common words: the noun and adjective lists of faker's en_US lorem provider, its
colour names and its shorter job titles.

Two exclusions keep every held-out measurement honest (the second applies to names only: the built-in common
words are not split, and validation and test passages use the built-in words):
- here, an entry sharing a word (case-folded) with any bundled evaluation file (`kvproj/data/eval/*.jsonl`:
  contexts, questions and answers) is dropped, so the hand-written narrative set stays made of names training
  never saw;
- in `kvproj.data.passages.broad_lexicon`, which owns the passages' checksum split, an entry with a word on the
  validation or test side of that split is dropped, so no held-out passage's name is ever trained on.

The pools are sorted tuples, so a seeded draw is the same on every machine with the same `faker` release.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TypeVar

from kvproj.data.facts import EVAL_KEYS, narrative_eval_path, read_jsonl

__all__ = ["Lexicon", "WordPools", "faker_pools", "faker_words"]

_NAME = re.compile(r"^[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?$")  # "Dunleavy", "O'Brien", "Osei-Brandt"
_PLACE = re.compile(r"^[A-Z][a-z]+(?: [A-Z][a-z]+)?$")  # "Hrazdan", "Santa Clara"
_WORD = re.compile(r"[a-z]+")
_COMMON = re.compile(r"^[a-z]{3,}$")  # "holiday", "brilliant"
_JOB = re.compile(r"^[A-Za-z]+(?: [A-Za-z]+){0,2}$")  # "Surgeon", "Insurance broker", "Tour manager"
_CAMEL = re.compile(r"[A-Z][a-z]+")  # "CornflowerBlue" -> Cornflower, Blue
_PARTS = re.compile(r"[ \-']")


def words_of(entry: str) -> list[str]:
    """The words of a name: "Osei-Brandt" -> ["Osei", "Brandt"], "Santa Clara" -> ["Santa", "Clara"]."""
    return [part for part in _PARTS.split(entry) if part]


_P = TypeVar("_P", bound="_Pools")


class _Pools:
    """Sorted tuples of strings, one per dataclass field; each must keep at least 100 entries after the filters."""

    _setting = ""  # the option that asked for the pools, for the error message

    def __post_init__(self) -> None:
        for name, pool in self.sizes().items():
            if pool < 100:
                raise RuntimeError(
                    f"{self._setting} 'broad': only {pool} entries in its {name!r} pool survived the filters; the "
                    f"installed faker release lacks its lists (valid: faker>=40,<41)"
                )

    def sizes(self) -> dict[str, int]:
        return {f.name: len(getattr(self, f.name)) for f in fields(self)}

    def filtered(self: _P, keep: Callable[[str], bool]) -> _P:
        """The entries `keep` accepts, still sorted, in a pools object of the same class."""
        return type(self)(*(tuple(filter(keep, getattr(self, f.name))) for f in fields(self)))


@dataclass(frozen=True)
class Lexicon(_Pools):
    """Sorted pools of first names, surnames and places."""

    _setting = "data.passages.lexicon"
    first: tuple[str, ...]
    last: tuple[str, ...]
    places: tuple[str, ...]


def _eval_words() -> frozenset[str]:
    """Every word (case-folded) of the bundled narrative file (contexts, questions and answers): its invented
    people, places and things must never be training entities. The bundled genre passages
    (`genre_passages.jsonl`) are not read: their people have ordinary real names, as prose anyone writes does, so
    that file is held out by author and genre, not by vocabulary (kvproj/data/eval/README.md)."""
    words: set[str] = set()
    for record in read_jsonl(narrative_eval_path()):
        for key in EVAL_KEYS:
            words.update(_WORD.findall(record[key].lower()))
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


@functools.cache
def faker_pools() -> Lexicon:
    """faker's ASCII names, without any entry that shares a word with a bundled evaluation file. The held-out
    split of the passages' own word pools is applied by `kvproj.data.passages.broad_lexicon`, which owns it."""
    banned = _eval_words()
    first, last, places = _faker_lists()

    def keep(entry: str) -> bool:
        return all(word.lower() not in banned for word in words_of(entry))

    return Lexicon(*(tuple(sorted(filter(keep, pool))) for pool in (first, last, places)))


@dataclass(frozen=True)
class WordPools(_Pools):
    """Sorted pools of common nouns, adjectives (with colour names) and occupations, lower case."""

    _setting = "data.passages.words"
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    roles: tuple[str, ...]


@functools.cache
def faker_words() -> WordPools:
    """faker's common English nouns and adjectives (the part-of-speech lists of its en_US lorem provider), its
    colour names ("slate gray") and its occupations of at most three words ("insurance broker"), without
    any entry that shares a word with a bundled evaluation file."""
    try:
        import faker.providers.color as color
        import faker.providers.job.en_US as job
        import faker.providers.lorem.en_US as lorem
    except ImportError as error:
        raise ImportError(
            "data.passages.words: 'broad' needs the faker package (pip install 'faker>=40,<41'); valid without "
            "it: 'builtin'"
        ) from error
    banned = _eval_words()
    parts = vars(lorem.Provider).get("parts_of_speech", {})
    nouns = {w for w in parts.get("noun", ()) if _COMMON.match(w)}
    adjectives = {w for w in parts.get("adjective", ()) if _COMMON.match(w)}
    adjectives |= {" ".join(_CAMEL.findall(c)).lower() for c in color.Provider.all_colors if _CAMEL.match(c)}
    roles = {j.lower() for j in job.Provider.jobs if _JOB.match(j)}

    def keep(entry: str) -> bool:
        return all(word not in banned for word in entry.split())

    return WordPools(*(tuple(sorted(filter(keep, pool))) for pool in (nouns, adjectives, roles)))
