"""Multi-genre passages: short texts in many genres and registers (news, e-mail, notes, dialogue, listings, logs,
...) that state several facts of the same type side by side (same-type distractors), each with a question whose
answer is copied verbatim from the passage. Training text as varied as the prose a projector must carry.

Everything is a pure function of (seed, split, index). Held out BY CONSTRUCTION: validation and test use genres
that training never sees (`PassagesConfig.val_genres` / `test_genres`), and people's first names and invented
words are partitioned into disjoint train / val / test pools by a checksum.
"""

from __future__ import annotations

import functools
import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvproj.data.facts import _a
from kvproj.data.lexicon import Lexicon, WordPools, faker_pools, faker_words, words_of
from kvproj.data.pairs import mention

# ----------------------------------------------------------------------------------------------------------------
# Word material: names of many origins, invented places and words, objects, organizations.

_FIRST = """
Aaliyah Abebe Ada Adaeze Adnan Ahmet Aiko Akira Alejandro Aleksandra Alessia Amani Amir Anahita Anders Ange Anjali
Antoine Aoife Arash Arturo Asha Astrid Ayodele Baptiste Bao Beatriz Bilal Bjorn Bogdan Camille Carlos Catalina
Chidi Chiara Chinedu Cormac Dagny Dariusz Dawit Deepa Delphine Dong Duc Efua Eitan Ekaterina Elif Emeka Esperanza
Eun Fatima Fenna Fernando Folake Francesca Fumiko Gaurav Giorgos Goran Guadalupe Gulnara Haruto Hassan Hiroshi
Hyun Ibrahim Ifeoma Ilse Imani Ioana Isabela Ishaan Jae Jakub Jamila Javier Jiho Joaquim Jurgen Kaito Kalani
Kamal Karim Katarzyna Kemal Kofi Kwame Laila Lakshmi Leilani Liam Lin Lorenzo Luana Lucas Mads Magdalena Mahmoud
Malia Manon Marek Mariam Marisol Matteo Mehmet Mei Mihai Min Mirela Moana Moritz Nadia Nandi Nasrin Niamh Nikhil
Nikolai Noor Obinna Oksana Olumide Oskar Paulo Pavel Pilar Priya Quang Radu Rahul Ramona Ravi Reza Rin Rohan
Rosalind Ruxandra Sachiko Saeed Salma Sanjay Santiago Saoirse Seo Sergei Shira Siddharth Sigrid Siobhan Soren
Sunita Tadeo Takeshi Tamsin Tariq Thabo Thandiwe Tomasz Tuan Ulla Umar Valentina Vikram Wairimu Wei Wojciech
Xiadani Ximena Yael Yasmin Yohannes Yuki Yusuf Zainab Zanele Zeynep Zhiwei Zofia
""".split()

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "pr", "r", "s", "st", "t", "tr",
           "v", "w", "z", "sh", "ch", "th"]  # fmt: skip
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou", "ia", "oa"]
_CODAS = ["", "", "n", "r", "l", "s", "m", "k", "nd", "rn", "lt", "sk", "x"]
_SURNAME_ENDS = ["", "", "son", "ova", "ez", "i", "ski", "berg", "well", "ton", "ani", "ek", "ard", "ley", "oglu"]
_PLACE_ENDS = ["ford", "vik", "holm", "bury", "dale", "mouth", "stad", "ville", "haven", "wick", "port", "field"]
_STREETS = ["Street", "Lane", "Road", "Avenue", "Way", "Quay", "Row", "Terrace", "Close", "Parade"]
_ORG_ENDS = ["Labs", "Logistics", "Bakery", "Cooperative", "Studio", "Foundation", "Clinic", "Outfitters", "Press",
             "Brewing", "Robotics", "Orchestra", "Library", "Ferries", "Textiles"]  # fmt: skip
_ADJECTIVES = """
amber ancient black blue bronze brown copper crimson dented enamel faded folding gold green grey hand-painted
heavy indigo ivory lacquered leather linen maple marble matte olive orange oak pale pewter pink plum purple red
rusty scarlet silver small striped teal velvet violet walnut white wicker woollen yellow
""".split()
_NOUNS = """
accordion anchor armchair backpack banjo barometer basket bicycle birdcage blanket bookcase bowl bracelet
briefcase bucket cabinet camera candlestick canoe chess-set clock compass cello desk drum easel fiddle flute globe
guitar hammock harp helmet jacket kayak kettle lamp lantern mandolin map microscope mirror notebook oar piano
projector quilt radio rug sail saxophone scarf sewing-machine sextant shovel sled stool suitcase sundial
telescope teapot tent trombone trumpet typewriter ukulele umbrella vase violin wagon wheelbarrow
""".split()
_FOODS = """
almonds apricots barley basil beetroot butter cardamom carrots chickpeas chili cinnamon coconut coriander cumin
dates dill eggs fennel figs garlic ginger honey leeks lemons lentils mint mushrooms mustard nutmeg oats olives
onions paprika parsley peppers pistachios plums potatoes raisins rice saffron sage sesame spinach thyme tomatoes
turmeric walnuts yogurt
""".split()
_ROLES = """
accountant archivist baker beekeeper botanist bus-driver carpenter cartographer chemist chef clockmaker
dentist electrician engineer ferry-pilot florist geologist glassblower harbourmaster illustrator interpreter
jeweller librarian locksmith midwife nurse optician paramedic pharmacist photographer plumber potter surveyor
tailor translator veterinarian welder
""".split()
_TITLE_NOUNS = [n.replace("-", " ") for n in _NOUNS + _FOODS]  # `Material.title` without the broad lexicon
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]  # fmt: skip
_NUMBER_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def _split_of(word: str, seed: int) -> str:
    """train / val / test by a seeded checksum (70 / 15 / 15): disjoint pools, the same in every process."""
    r = zlib.crc32(f"{seed}:{word}".encode()) % 100
    return "train" if r < 70 else "val" if r < 85 else "test"


@functools.lru_cache(maxsize=16)
def _first_names(seed: int, split: str) -> tuple[str, ...]:
    return tuple(sorted(n for n in _FIRST if _split_of(n, seed) == split))


@functools.lru_cache(maxsize=4)
def broad_lexicon(seed: int) -> Lexicon:
    """`PassagesConfig.lexicon: broad` (training passages only): faker's names whose every word falls in the
    training side of the checksum split above, so no held-out passage's name or invented word is ever trained on."""
    return faker_pools().filtered(
        lambda entry: all(_split_of(w.capitalize(), seed) == "train" for w in words_of(entry))
    )


class Material:
    """Draws names, places, objects, numbers and codes for one passage (names from the split's own pool;
    invented words from syllables, checksum-partitioned like the names)."""

    def __init__(
        self,
        rng: random.Random,
        split: str,
        seed: int,
        broad: Lexicon | None = None,
        words: WordPools | None = None,
        frames: random.Random | None = None,
    ) -> None:
        self.rng, self.split, self.seed = rng, split, seed
        self.broad = broad  # training material only: `PassagesConfig.lexicon`
        self.words = words  # training material only: `PassagesConfig.words`
        self.frames = frames  # training material only: `PassagesConfig.phrasings`
        self._used: set[str] = set()
        self.names: list[str] = []  # every person, first name, place and organization drawn, in draw order
        self.people: list[str] = []  # the full names among them (`person`), in draw order

    def frame(self, *texts: str) -> str:
        """One phrasing of a passage, given all of them (every one states the same facts, so the genre's questions
        hold for each): the first unless `PassagesConfig.phrasings` is "varied", then one drawn from the passage's
        own seeded stream, which leaves every value the passage drew unchanged."""
        return texts[0] if self.frames is None else texts[self.frames.randrange(len(texts))]

    def _fresh(self, make: Callable[[], str]) -> str:
        for _ in range(200):
            value = make()
            if value not in self._used:
                self._used.add(value)
                return value
        raise RuntimeError("passages: could not draw a fresh value (word pools too small)")

    def _word(self, ends: list[str], syllables: tuple[int, int] = (1, 2)) -> str:
        rng = self.rng
        while True:
            n = rng.randint(*syllables)
            w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n)) + rng.choice(_CODAS)
            w = (w + rng.choice(ends)).capitalize()
            if 3 <= len(w) <= 13 and _split_of(w, self.seed) == self.split:
                return w

    def _real_surname(self) -> str:
        return self.rng.choice(self.broad.last)

    def _surname(self) -> str:
        """Invented from syllables; with the broad lexicon also real surnames (60%) and double-barrelled ones."""
        if self.broad is None:
            return self._word(_SURNAME_ENDS)
        r = self.rng.random()
        if r < 0.6:
            return self._real_surname()
        if r < 0.75:
            return f"{self._real_surname()}-{self._real_surname()}"
        return self._word(_SURNAME_ENDS)

    def _name(self, value: str) -> str:
        self.names.append(value)
        return value

    def person(self) -> str:
        """A full name whose first name is reserved too: no other person of the passage (full name or first
        name alone) shares it, so a question naming one of them is never ambiguous."""
        full = self._name(self._fresh(lambda: f"{self.first()} {self._surname()}"))
        self.people.append(full)
        return full

    def first(self) -> str:
        pool = self.broad.first if self.broad is not None else _first_names(self.seed, self.split)
        return self._name(self._fresh(lambda: self.rng.choice(pool)))

    def place(self) -> str:
        if self.broad is not None and self.rng.random() < 0.5:
            return self._name(self._fresh(lambda: self.rng.choice(self.broad.places)))
        return self._name(self._fresh(lambda: self._word(_PLACE_ENDS, (1, 1))))

    def street(self) -> str:
        def name() -> str:
            if self.broad is not None and self.rng.random() < 0.5:
                return self._real_surname()
            return self._word([""])

        return self._fresh(lambda: f"{self.rng.randint(2, 240)} {name()} {self.rng.choice(_STREETS)}")

    def org(self) -> str:
        def make() -> str:
            if self.broad is not None:
                r = self.rng.random()
                if r < 0.25:
                    return f"{self._real_surname()} & {self._real_surname()}"
                if r < 0.5:
                    return f"{self._real_surname()} {self.rng.choice(_ORG_ENDS)}"
            return f"{self._word(['', ''])} {self.rng.choice(_ORG_ENDS)}"

        return self._name(self._fresh(make))

    def thing(self) -> str:
        """An object; with the broad word pools half of them are any common adjective and noun ("a brief
        mixture", "a slate gray rope")."""

        def make() -> str:
            if self.words is not None and self.rng.random() < 0.5:
                return f"{self.rng.choice(self.words.adjectives)} {self.rng.choice(self.words.nouns)}"
            return f"{self.rng.choice(_ADJECTIVES)} {self.rng.choice(_NOUNS).replace('-', ' ')}"

        return self._fresh(make)

    def food(self) -> str:
        return self._fresh(lambda: self.rng.choice(_FOODS))

    def title(self) -> str:
        """The name of a shop, inn, boat, newspaper, painting or band, made of common words ("The Amber Kettle",
        "Thyme and Lantern", "Copper & Sage", "Velvet Harbour"). With the broad lexicon (training only) the words
        come from faker's common nouns and adjectives, none of which occurs in a bundled evaluation file."""
        pools = faker_words() if self.broad is not None else None
        nouns = pools.nouns if pools is not None else _TITLE_NOUNS
        adjectives = pools.adjectives if pools is not None else _ADJECTIVES

        def make() -> str:
            noun, other = (self.rng.choice(nouns).title() for _ in range(2))
            adjective = self.rng.choice(adjectives).title()
            return self.rng.choice(
                [
                    f"The {adjective} {noun}",
                    f"{noun} and {other}",
                    f"{noun} & {other}",
                    f"The {noun}",
                    f"{adjective} {noun}",
                ]  # fmt: skip
            )

        return self._name(self._fresh(make))

    def role(self) -> str:
        def make() -> str:
            if self.words is not None and self.rng.random() < 0.5:
                return self.rng.choice(self.words.roles)
            return self.rng.choice(_ROLES).replace("-", " ")

        return self._fresh(make)

    def code(self) -> str:
        letters = "ABCDEFGHJKLMNPRSTUVWXYZ"

        def make() -> str:
            head = "".join(self.rng.choice(letters) for _ in range(self.rng.randint(2, 3)))
            return f"{head}-{self.rng.randint(100, 9999)}"

        return self._fresh(make)

    def time(self) -> str:
        return self._fresh(
            lambda: f"{self.rng.randint(6, 21)}:{self.rng.choice(['00', '15', '30', '45', '10', '50'])}"
        )

    def date(self) -> str:
        return self._fresh(lambda: f"{self.rng.randint(1, 28)} {self.rng.choice(_MONTHS)}")

    def weekday(self) -> str:
        return self._fresh(lambda: self.rng.choice(_WEEKDAYS))

    def price(self) -> str:
        return self._fresh(lambda: f"{self.rng.randint(3, 900)} {self.rng.choice(['dollars', 'euros', 'pounds'])}")

    def number(self, lo: int = 2, hi: int = 95) -> str:
        return self._fresh(lambda: str(self.rng.randint(lo, hi)))

    def count_word(self) -> str:
        return self._fresh(lambda: self.rng.choice(_NUMBER_WORDS))

    def room(self) -> str:
        return self._fresh(
            lambda: f"room {self.rng.randint(2, 9)}{self.rng.randint(0, 4)}{self.rng.randint(1, 9)}"
        )

    def year(self) -> str:
        return self._fresh(lambda: str(self.rng.randint(1950, 2024)))


# A genre writes one passage and the questions it can answer: [(question forms, answer), ...].
QA = tuple[tuple[str, ...], str]
Genre = Callable[[Material], tuple[str, list[QA]]]
GENRES: dict[str, Genre] = {}


# Training genres of `PassagesConfig.genre_set: wide` only (registered after the core ones).
WIDE_GENRES: list[str] = []


def genre(name: str, *, wide: bool = False):
    def wrap(fn: Genre) -> Genre:
        GENRES[name] = fn
        if wide:
            WIDE_GENRES.append(name)
        return fn

    return wrap


@genre("news")
def _news(m: Material) -> tuple[str, list[QA]]:
    town, rival, mayor, org = m.place(), m.place(), m.person(), m.org()
    cost, other_cost, day = m.price(), m.price(), m.weekday()
    text = m.frame(
        (
            f"{town.upper()} - The council of {town} voted on {day} to rebuild the old footbridge, a project led by "
            f"{org}. Mayor {mayor} said the work would cost {cost}, far less than the {other_cost} spent by "
            f"neighbouring {rival} on its own bridge last year."
        ),
        (
            f"Footbridge to be rebuilt\nThe council of {town} agreed on {day} to replace the old footbridge. {org} will lead "
            f"the work, which Mayor {mayor} expects to cost {cost}. Last year neighbouring {rival} spent {other_cost} on a "
            f"bridge of its own."
        ),
        (
            f"Council approves bridge plan ({town}, {day}). Cost: {cost}, according to Mayor {mayor}. Project lead: {org}. "
            f"For comparison, {rival} paid {other_cost} for its own bridge last year."
        ),
    )
    return text, [
        (("Which company leads the footbridge project?", f"Who is leading the bridge work in {town}?"), org),
        ((f"How much will the footbridge in {town} cost?", f"What is the cost of {town}'s bridge project?"), cost),
        ((f"Who is the mayor of {town}?", "What is the name of the mayor who spoke about the bridge?"), mayor),
        (("Which town spent money on its own bridge last year?",), rival),
    ]


@genre("email")
def _email(m: Material) -> tuple[str, list[QA]]:
    sender, boss, colleague = m.person(), m.person(), m.first()
    room, other_room, time, code = m.room(), m.room(), m.time(), m.code()
    text = m.frame(
        (
            f"From: {sender}\nTo: {boss}\nSubject: Friday review\n\nHi,\nthe review moved from {other_room} to {room} "
            f"and now starts at {time}. {colleague} will bring the printed reports. Please quote ticket {code} when "
            f"you book the projector.\nThanks,\n{sender.split()[0]}"
        ),
        (
            f"Subject: Friday review - new room\nFrom: {sender}\nTo: {boss}\n\nQuick update: we are no longer in "
            f"{other_room}. The review is in {room}, starting {time}. Book the projector under ticket {code}. {colleague} "
            f"has the printed reports.\n- {sender.split()[0]}"
        ),
        (
            f"{boss},\n\njust so you know, Friday's review starts at {time} in {room} (not {other_room} any more). "
            f"{colleague} is bringing the printed reports, and the projector booking needs ticket {code}.\n\nBest,\n{sender}"
        ),
    )
    return text, [
        (("Who sent the email?", "Who wrote this message?"), sender),
        (("Where is the review now?", "Which room was the review moved to?"), room),
        (("What time does the review start?", "When does the Friday review begin?"), time),
        (
            ("Which ticket number should be quoted?", "What ticket should be quoted when booking the projector?"),
            code,
        ),
        (("Who will bring the printed reports?",), colleague),
    ]


@genre("meeting_notes")
def _notes(m: Material) -> tuple[str, list[QA]]:
    chair, a, b = m.person(), m.first(), m.first()
    budget, date, org, n = m.price(), m.date(), m.org(), m.count_word()
    text = m.frame(
        (
            f"Minutes - planning meeting, chaired by {chair}.\n- Budget for the spring fair approved: {budget}.\n"
            f"- {a} to call {org} about the tents ({n} needed).\n- {b} will draft the poster.\n"
            f"- Next meeting: {date}."
        ),
        (
            f"Planning meeting notes. Chair: {chair}. Agreed: a budget of {budget} for the spring fair. Actions: {a} will "
            f"phone {org} about hiring {n} tents; {b} will draft the poster. We meet again on {date}."
        ),
        (
            f"MINUTES\nPresent: {chair} (chair), {a}, {b}\n1. Spring fair budget: {budget}, approved.\n2. Tents: {n} "
            f"needed; {a} to call {org}.\n3. Poster: {b} to draft it.\nNext meeting {date}."
        ),
    )
    return text, [
        (("Who chaired the meeting?", "Who was in the chair at the planning meeting?"), chair),
        (("What budget was approved for the spring fair?", "How much was approved for the fair?"), budget),
        (("When is the next meeting?", "On what date will they meet next?"), date),
        (("Who will draft the poster?",), b),
        (("Which company will be called about the tents?", f"Who is {a} going to call?"), org),
        (("How many tents are needed?",), n),
    ]


@genre("recipe")
def _recipe(m: Material) -> tuple[str, list[QA]]:
    cook, f1, f2, f3 = m.person(), m.food(), m.food(), m.food()
    minutes, temp, n = m.number(10, 90), m.number(150, 240), m.count_word()
    text = m.frame(
        (
            f"{cook}'s winter stew (serves {n})\nSoften the {f1} in oil, add the {f2} and a pinch of {f3}, then "
            f"cover and bake at {temp} degrees for {minutes} minutes."
        ),
        (
            f"From the kitchen of {cook}: a winter stew for {n}. Warm some oil and soften the {f1}. Stir in the {f2}, "
            f"season with a pinch of {f3}, cover, and bake for {minutes} minutes at {temp} degrees."
        ),
        (
            f"WINTER STEW - {cook}\nServes: {n}\nOven: {temp} degrees\nTime: {minutes} minutes\n1. Soften the {f1} in "
            f"oil.\n2. Add the {f2} and a pinch of {f3}.\n3. Cover and bake."
        ),
    )
    return text, [
        (("How many people does the stew serve?", "The stew serves how many?"), n),
        (("For how many minutes is the stew baked?", "How long does the stew bake, in minutes?"), minutes),
        (("At what temperature is the stew baked?", "How many degrees should the oven be?"), temp),
        (("What is softened in oil first?", "Which ingredient goes into the oil first?"), f1),
        (("Whose recipe is this?", "Who does the winter stew recipe belong to?"), cook),
    ]


@genre("listing")
def _listing(m: Material) -> tuple[str, list[QA]]:
    item, other, seller = m.thing(), m.thing(), m.person()
    price, other_price, street, phone = m.price(), m.price(), m.street(), m.number(1000, 9999)
    text = m.frame(
        (
            f"FOR SALE: {item}, barely used, {price}. Also {_a(other)} for {other_price}. Collect from {street}. "
            f"Ask for {seller}, evenings only, extension {phone}."
        ),
        (
            f"For sale, hardly used: {item}, {price}. I also have {_a(other)} at {other_price}. Pick-up only, from "
            f"{street}. Call {seller} on extension {phone}, evenings."
        ),
        (
            f"Selling: {item} ({price}) and {_a(other)} ({other_price}). Both at {street}. Evenings only: ask for "
            f"{seller}, ext. {phone}."
        ),
    )
    return text, [
        ((f"How much is the {item}?", f"What is the asking price for the {item}?"), price),
        ((f"What does the {other} cost?",), other_price),
        (("Where can the items be collected?", "What is the collection address?"), street),
        (("Who should buyers ask for?", "Who is selling the items?"), seller),
        (("What is the extension number?",), phone),
    ]


@genre("dialogue")
def _dialogue(m: Material) -> tuple[str, list[QA]]:
    a, b, c = m.first(), m.first(), m.first()
    place, time, thing = m.place(), m.time(), m.thing()
    text = m.frame(
        (
            f"{a}: Are we still taking the train to {place} tomorrow?\n{b}: Yes, the {time} one. {c} can't come, "
            f"she's working.\n{a}: Then I'll bring the {thing} myself.\n{b}: Great, see you at the platform."
        ),
        (
            f"{b}: The {time} train to {place} is booked for tomorrow.\n{a}: Is {c} coming?\n{b}: No, she's working.\n"
            f"{a}: Fine, I'll bring the {thing} to the platform myself then."
        ),
        (
            f"{a}: Still on for {place} tomorrow?\n{b}: Yes, we're getting the {time} train. {c} has to work, so it's just "
            f"us.\n{a}: Then I'll bring the {thing}. See you on the platform."
        ),
    )
    return text, [
        (("Where are they taking the train to?", "What is the destination of the train trip?"), place),
        (("Which train are they taking?", "What time is the train?"), time),
        (("Who can't come?", "Who is working tomorrow?"), c),
        ((f"What will {a} bring?", "What is going to be brought to the platform?"), thing),
    ]


@genre("diary")
def _diary(m: Material) -> tuple[str, list[QA]]:
    friend, place, thing, n = m.person(), m.place(), m.thing(), m.count_word()
    date, role = m.date(), m.role()
    text = m.frame(
        (
            f"{date}. Rain all morning. Walked to {place} with {friend}, who is training to be {_a(role)}. We found "
            f"{_a(thing)} at the market and argued about it for {n} hours. I bought it anyway."
        ),
        (
            f"{date} - wet morning. {friend} and I walked over to {place}; {friend.split()[0]} is training to be "
            f"{_a(role)} now. At the market we argued for {n} hours about {_a(thing)}, and in the end I bought it."
        ),
        (
            f"Diary, {date}. It rained until noon, then I walked to {place}. {friend} came too (training as {_a(role)}, "
            f"apparently). Found {_a(thing)} at the market, argued about it for {n} hours, bought it anyway."
        ),
    )
    return text, [
        (("Where did the writer walk to?", "Which place did they walk to?"), place),
        (("Who did the writer walk with?", "Who came along on the walk?"), friend),
        ((f"What is {friend} training to be?", "What job is the friend training for?"), role),
        (("What did the writer buy at the market?", "What was found at the market?"), thing),
        (("How many hours did they argue?",), n),
    ]


@genre("announcement")
def _announcement(m: Material) -> tuple[str, list[QA]]:
    org, speaker, place, date, time = m.org(), m.person(), m.street(), m.date(), m.time()
    topic = m.thing()
    text = m.frame(
        (
            f"PUBLIC TALK. {org} invites everyone to an evening with {speaker}, who will speak about restoring the "
            f"{topic}. {date}, doors open at {time}, at {place}. Entry is free."
        ),
        (
            f"{org} presents an evening with {speaker} on restoring the {topic}.\nDate: {date}\nDoors: {time}\n"
            f"Venue: {place}\nFree entry, all welcome."
        ),
        (
            f"Everyone is welcome at {place} on {date}, when {speaker} will talk about restoring the {topic}. The "
            f"evening is hosted by {org}; doors open at {time} and entry is free."
        ),
    )
    return text, [
        (("Who is giving the public talk?", "Who will speak at the event?"), speaker),
        (("Which organisation is hosting the talk?", "Who invites everyone to the evening?"), org),
        (("When do the doors open?", "At what time do doors open?"), time),
        (("Where is the talk held?", "What is the address of the talk?"), place),
        (("On what date is the talk?",), date),
    ]


@genre("log")
def _log(m: Material) -> tuple[str, list[QA]]:
    host, other, user, code, t1, t2 = (
        m.place().lower(),
        m.place().lower(),
        m.first().lower(),
        m.code(),
        m.time(),
        m.time(),
    )
    t1, t2 = sorted((t1, t2), key=lambda t: int(t.replace(":", "")))
    port = m.number(1024, 9000)
    text = m.frame(
        (
            f"[{t1}] INFO  user {user} logged in on {host}\n[{t1}] WARN  disk on {other} at 91%\n"
            f"[{t2}] ERROR job {code} failed on {host}: connection refused on port {port}"
        ),
        (
            f"{t1} {host} sshd: session opened for user {user}\n{t1} {other} monitor: disk usage 91%\n"
            f"{t2} {host} scheduler: job {code} FAILED (connection refused on port {port})"
        ),
        (
            f"level=info time={t1} host={host} msg=login user={user}\nlevel=warn time={t1} host={other} msg='disk at 91%'\n"
            f"level=error time={t2} host={host} job={code} msg='connection refused' port={port}"
        ),
    )
    return text, [
        (("Which job failed?", "What is the ID of the failed job?"), code),
        (("Which host had a disk warning?", "Which machine is at 91% disk?"), other),
        (("Which user logged in?",), user),
        (("On which port was the connection refused?", "What port refused the connection?"), port),
        (("At what time did the job fail?",), t2),
    ]


@genre("review")
def _review(m: Material) -> tuple[str, list[QA]]:
    shop, reviewer, thing, n, price = m.org(), m.person(), m.thing(), m.count_word(), m.price()
    text = m.frame(
        (
            f"Review by {reviewer}: I ordered {_a(thing)} from {shop} for {price}. It arrived after {n} days, well "
            f"packed. Would buy again, although the instructions were only in Finnish."
        ),
        (
            f"Four stars from {reviewer}. Bought {_a(thing)} from {shop} for {price}. It took {n} days to arrive but "
            f"was packed well. The instructions were only in Finnish; otherwise happy and would order again."
        ),
        (
            f'"Would buy again." {shop} sold me {_a(thing)} for {price}, and it came {n} days later, carefully '
            f"packed. Only complaint: the instructions were in Finnish. - {reviewer}"
        ),
    )
    return text, [
        (("What did the reviewer order?", "Which item was ordered?"), thing),
        (("Which shop was it ordered from?", "Where did the reviewer buy it?"), shop),
        (("How many days did delivery take?", "After how many days did it arrive?"), n),
        (("How much did the reviewer pay?", "What was the price of the order?"), price),
        (("Who wrote the review?",), reviewer),
    ]


@genre("itinerary")
def _itinerary(m: Material) -> tuple[str, list[QA]]:
    a, b, c, hotel = m.place(), m.place(), m.place(), m.org()
    flight, t1, t2 = m.code(), m.time(), m.time()
    text = m.frame(
        (
            f"Day 1: flight {flight} to {a}, departs {t1}. Night at the {hotel}.\nDay 2: bus to {b}; lunch by the "
            f"river.\nDay 3: ferry to {c}, leaves {t2} sharp."
        ),
        (
            f"Your trip\nDay 1 - flight {flight} to {a}, departing {t1}; overnight at the {hotel}\nDay 2 - bus to {b}, "
            f"lunch by the river\nDay 3 - the {t2} ferry to {c}"
        ),
        (
            f"On day 1 you fly to {a} on flight {flight} at {t1} and sleep at the {hotel}. Day 2 takes you by bus to {b} "
            f"for lunch by the river, and on day 3 the ferry to {c} leaves at {t2} sharp."
        ),
    )
    return text, [
        (("What is the flight number?", "Which flight is taken on day 1?"), flight),
        (("Where does the bus go on day 2?", "What is the destination of the bus?"), b),
        (("Where does the ferry go?", "Which place is reached by ferry on day 3?"), c),
        (("When does the ferry leave?",), t2),
        (("Where do they spend the first night?",), hotel),
    ]


@genre("sports")
def _sports(m: Material) -> tuple[str, list[QA]]:
    home, away, scorer, keeper = m.place(), m.place(), m.person(), m.person()
    g1, g2, minute = m.number(0, 6), m.number(0, 6), m.number(2, 90)
    text = m.frame(
        (
            f"{home} beat {away} {max(g1, g2, key=int)}-{min(g1, g2, key=int)} on Saturday. {scorer} scored the "
            f"decisive goal after {minute} minutes, "
            f"and {keeper} saved a penalty just before half time."
        ),
        (
            f"Saturday: {home} {max(g1, g2, key=int)}, {away} {min(g1, g2, key=int)}. {keeper} saved a penalty just "
            f"before half time, and {scorer} scored the decisive goal after {minute} minutes."
        ),
        (
            f"Match report (Saturday). {away} lost {max(g1, g2, key=int)}-{min(g1, g2, key=int)} at {home}. The "
            f"decisive goal came from {scorer} after {minute} minutes; {keeper} had saved a penalty before the break."
        ),
    )
    return text, [
        (("Who scored the decisive goal?", "Which player scored the winning goal?"), scorer),
        (("After how many minutes was the decisive goal scored?",), minute),
        (("Who saved a penalty?", "Which player saved the penalty?"), keeper),
        ((f"Which team did {home} beat?", "Who lost on Saturday?"), away),
    ]


@genre("letter")
def _letter(m: Material) -> tuple[str, list[QA]]:
    writer, aunt, place, thing, pet = m.first(), m.first(), m.place(), m.thing(), m.first()
    year = m.year()
    text = m.frame(
        (
            f"Dear {aunt},\nWe finally moved to {place}. The house was built in {year} and the previous owners left "
            f"us {_a(thing)} in the attic. Our cat {pet} refuses to go upstairs.\nWith love,\n{writer}"
        ),
        (
            f"Dear {aunt},\nWe're in! The new house in {place} dates from {year}, and whoever lived here before left "
            f"{_a(thing)} in the attic. {pet}, the cat, won't go upstairs.\nLove,\n{writer}"
        ),
        (
            f"{aunt} -\nnews: we've moved to {place}. Built in {year}, the house came with {_a(thing)} in the attic, "
            f"left by the previous owners. Our cat {pet} is refusing to go upstairs.\nAll my love, {writer}"
        ),
    )
    return text, [
        (("Where did they move to?", "Which town is the new house in?"), place),
        (("When was the house built?", "In what year was the house built?"), year),
        (("What did the previous owners leave in the attic?",), thing),
        (("What is the cat called?", "What is the name of the cat?"), pet),
        (("Who wrote the letter?", "Who signed the letter?"), writer),
    ]


@genre("lab_notebook")
def _lab(m: Material) -> tuple[str, list[QA]]:
    who, sample, other, temp, minutes = m.first(), m.code(), m.code(), m.number(4, 95), m.number(5, 120)
    reagent = m.food()
    text = m.frame(
        (
            f"Exp. 14 ({who}). Sample {sample} heated to {temp} C for {minutes} min, then mixed with {reagent} "
            f"extract. Colour change seen only in {sample}; control {other} unchanged."
        ),
        (
            f"{who}, exp. 14: heated sample {sample} ({temp} C, {minutes} min), mixed in {reagent} extract: colour "
            f"change. Control {other}: no change."
        ),
        (
            f"Experiment 14, run by {who}. We heated sample {sample} to {temp} C for {minutes} min before adding "
            f"{reagent} extract; it changed colour, while the control, {other}, did not."
        ),
    )
    return text, [
        (("Which sample changed colour?", "In which sample was a colour change seen?"), sample),
        (("What was the control sample?", "Which sample was the control?"), other),
        (("To what temperature was the sample heated?",), temp),
        (("For how many minutes was it heated?",), minutes),
        (("What extract was the sample mixed with?",), reagent),
    ]


@genre("faq")
def _faq(m: Material) -> tuple[str, list[QA]]:
    org, desk, time, t2, price, phone = m.org(), m.street(), m.time(), m.time(), m.price(), m.number(100, 999)
    text = m.frame(
        (
            f"FAQ - {org}\nQ: When do you open? A: Every weekday at {time}, Saturdays at {t2}.\nQ: Where do I collect "
            f"parcels? A: At the side desk, {desk}.\nQ: Is there a fee? A: Yes, {price} per year. Call line {phone}."
        ),
        (
            f"{org}: common questions\nOpening hours? Weekdays from {time}, Saturdays from {t2}.\nParcels? Collect them "
            f"at the side desk, {desk}.\nFees? {price} a year; questions to line {phone}."
        ),
        (
            f"Frequently asked at {org}:\n- We open at {time} every weekday and at {t2} on Saturdays.\n- Parcels wait at "
            f"the side desk ({desk}).\n- The yearly fee is {price}. Call line {phone}."
        ),
    )
    return text, [
        (("When do they open on weekdays?", "What time do they open every weekday?"), time),
        (("What time do they open on Saturdays?",), t2),
        (("Where are parcels collected?", "What address is the side desk at?"), desk),
        (("How much is the yearly fee?", "What does membership cost per year?"), price),
        (("Which line should you call?",), phone),
    ]


@genre("shipping_notice")
def _shipping(m: Material) -> tuple[str, list[QA]]:
    who, code, other_code, day, depot, courier = m.person(), m.code(), m.code(), m.weekday(), m.place(), m.org()
    text = m.frame(
        (
            f"Dear {who}, parcel {code} is out for delivery with {courier} and will arrive on {day}. Parcel "
            f"{other_code} is held at the {depot} depot until you confirm your address."
        ),
        (
            f"Delivery update for {who}\nParcel {code}: with {courier}, arriving {day}.\nParcel {other_code}: held at "
            f"the {depot} depot - please confirm your address."
        ),
        (
            f"Hello {who}. {courier} will bring parcel {code} on {day}. We are holding parcel {other_code} at our {depot} "
            f"depot until you confirm your address."
        ),
    )
    return text, [
        ((f"When will parcel {code} arrive?", "On which day will the parcel arrive?"), day),
        (("Which parcel is held at the depot?",), other_code),
        (("Which courier is delivering?", "Who is the parcel out for delivery with?"), courier),
        (("Where is the held parcel?", "At which depot is a parcel held?"), depot),
    ]


@genre("biography")
def _biography(m: Material) -> tuple[str, list[QA]]:
    who, place, role, year, org, thing = m.person(), m.place(), m.role(), m.year(), m.org(), m.thing()
    text = m.frame(
        (
            f"{who} grew up in {place} and worked as {_a(role)} before joining {org} in {year}. Friends remember "
            f"that {who.split()[0]} always carried {_a(thing)}."
        ),
        (
            f"Born and raised in {place}, {who} worked as {_a(role)} until {year}, when {who.split()[0]} joined {org}. "
            f"Friends say {who.split()[0]} always carried {_a(thing)}."
        ),
        (
            f"{who} ({org} since {year}). Grew up in {place}; worked as {_a(role)} before that. Known for always "
            f"carrying {_a(thing)}."
        ),
    )
    return text, [
        ((f"Where did {who} grow up?", f"Which town is {who} from?"), place),
        ((f"What did {who} work as?", f"What was {who.split()[0]}'s job before {org}?"), role),
        ((f"When did {who} join {org}?", f"In what year did {who.split()[0]} join {org}?"), year),
        ((f"What did {who.split()[0]} always carry?",), thing),
    ]


@genre("weather")
def _weather(m: Material) -> tuple[str, list[QA]]:
    a, b, t1, t2, wind, day = (
        m.place(),
        m.place(),
        m.number(-5, 35),
        m.number(-5, 35),
        m.number(5, 80),
        m.weekday(),
    )
    text = m.frame(
        (
            f"Forecast for {day}: sunny spells in {a} with a high of {t1} degrees; {b} stays cloudy at {t2} degrees, "
            f"with gusts up to {wind} km/h in the afternoon."
        ),
        (
            f"{day}: {a} gets sunny spells and a high of {t1} degrees. Cloud stays over {b} at {t2} degrees, and "
            f"afternoon gusts reach up to {wind} km/h."
        ),
        (
            f"Outlook for {day}. {b}: cloudy, {t2} degrees. {a}: sunny spells, high {t1} degrees. Gusts up to {wind} "
            f"km/h after midday."
        ),
    )
    return text, [
        ((f"What is the high in {a}?", f"How warm will it get in {a}?"), t1),
        ((f"What temperature is forecast for {b}?",), t2),
        (("How strong are the gusts?", "Gusts up to how many km/h?"), wind),
        (("Which place stays cloudy?",), b),
    ]


@genre("obituary", wide=True)
def _obituary(m: Material) -> tuple[str, list[QA]]:
    who, shop, street, place, role = m.person(), m.title(), m.street(), m.place(), m.role()
    years, age, date, a, b = m.number(4, 60), m.number(61, 99), m.date(), m.first(), m.first()
    first = who.split()[0]
    text = m.frame(
        (
            f"{who}, who ran {shop} on {street} for {years} years, died on {date} at the age of {age}. Born in "
            f"{place}, {first} trained as {_a(role)} before taking over the business. {first} is survived by {a} and "
            f"by a grandson, {b}, who will keep the doors open."
        ),
        (
            f"{who} has died, aged {age}, on {date}. {first} was born in {place}, trained as {_a(role)}, and ran {shop} "
            f"on {street} for {years} years. {first} leaves {a} and a grandson, {b}, who will keep the doors open."
        ),
        (
            f"With sadness we report the death of {who} ({date}, aged {age}), for {years} years the owner of {shop}, "
            f"{street}. Born in {place}, {first} first trained as {_a(role)}. Survived by {a} and by a grandson, {b}, who "
            f"will keep the doors open."
        ),
    )
    return text, [
        ((f"What business did {who} run?", f"What was the name of {first}'s shop?"), shop),
        ((f"Where was {who} born?", f"Which town did {first} come from?"), place),
        ((f"How old was {who}?", f"At what age did {first} die?"), age),
        ((f"What did {first} train as?", f"What was {who}'s first trade?"), role),
        (("Who will keep the doors open?", f"What is the name of {first}'s grandson?"), b),
    ]


@genre("interview", wide=True)
def _interview(m: Material) -> tuple[str, list[QA]]:
    host, guest, boat, band, place, year = m.first(), m.person(), m.title(), m.title(), m.place(), m.year()
    thing = m.thing()
    text = m.frame(
        (
            f"{host}: How did the band start?\n{guest}: On a boat called {boat}, moored in {place}. "
            f"We rehearsed below deck every night in {year}.\n{host}: And the name {band}?\n{guest}: "
            f"It was painted on {_a(thing)} we found in the hold."
        ),
        (
            f"Q: Where did it all begin?\n{guest}: Below deck on {boat}, a boat moored in {place}. We rehearsed there "
            f"every night in {year}.\nQ: And the name, {band}?\n{guest}: It was painted on {_a(thing)} we found in the "
            f"hold."
        ),
        (
            f"{host} talks to {guest}.\n{host}: The band started on a boat?\n{guest}: Yes, {boat}, moored in {place}, "
            f"in {year}. We called ourselves {band} because the name was painted on {_a(thing)} in the hold."
        ),
    )
    return text, [
        (("What was the boat called?", "On which boat did the band start?"), boat),
        (("What is the band called?", "What name did the band take?"), band),
        (("Where was the boat moored?", "In which town was the boat?"), place),
        (("Who is being interviewed?", "Who answers the questions?"), guest),
        (("Where was the band's name painted?", "What object carried the name?"), thing),
    ]


@genre("lost_and_found", wide=True)
def _lost(m: Material) -> tuple[str, list[QA]]:
    pet, street, day, price, owner, phone = m.first(), m.street(), m.weekday(), m.price(), m.first(), m.number()
    animal = m.rng.choice(["tabby cat", "grey parrot", "spaniel", "tortoise", "ferret", "white rabbit"])
    collar = m.rng.choice(_ADJECTIVES)
    text = m.frame(
        (
            f"LOST: {_a(animal)} who answers to {pet}, last seen near {street} on {day} evening. Wears a "
            f"{collar} collar. Reward of {price} for {pet}'s safe return - please ring {owner} "
            f"on extension {phone}."
        ),
        (
            f"MISSING since {day} evening: {pet}, our {animal}, last seen near {street}, wearing a {collar} collar. "
            f"{price} reward for {pet}'s safe return. Please ring {owner}, extension {phone}."
        ),
        (
            f"Have you seen {pet}? Our {animal} in a {collar} collar went missing near {street} on {day} evening. Ring "
            f"{owner} on extension {phone}. Reward: {price}."
        ),
    )
    return text, [
        ((f"What is the name of the missing {animal}?", f"What does the {animal} answer to?"), pet),
        (("Where was the pet last seen?", "Near which address did it go missing?"), street),
        (("How big is the reward?", "What reward is offered?"), price),
        (("Who should be called?", "Whom should a finder ring?"), owner),
        (("On which evening was it last seen?",), day),
    ]


@genre("club_newsletter", wide=True)
def _newsletter(m: Material) -> tuple[str, list[QA]]:
    town, boat, skipper, inn, date, n = m.place(), m.title(), m.person(), m.title(), m.date(), m.count_word()
    treasurer, price = m.person(), m.price()
    text = m.frame(
        (
            f"{town} Rowing Club - autumn news. We welcome {n} new members this term. Our four, {boat}, won the "
            f"harbour regatta with {skipper} steering. The winter dinner is on {date} at the {inn}; tickets cost "
            f"{price} from our treasurer, {treasurer}."
        ),
        (
            f"News from {town} Rowing Club. Congratulations to {boat}, our four, on winning the harbour regatta, "
            f"steered by {skipper}. This term {n} new members joined us. Winter dinner: {date} at the {inn}; tickets "
            f"{price} from the treasurer, {treasurer}."
        ),
        (
            f"AUTUMN NEWSLETTER - {town.upper()} ROWING CLUB\n* Regatta: won by {boat}, {skipper} steering.\n* Welcome "
            f"to our {n} new members.\n* Winter dinner at the {inn}, {date}. Tickets {price} from {treasurer}, our "
            f"treasurer."
        ),
    )
    return text, [
        (("Which boat won the regatta?", "What is the winning boat called?"), boat),
        (("Who steered the winning boat?", f"Who was at the helm of {boat}?"), skipper),
        (("Where is the winter dinner?", "At which inn is the dinner held?"), inn),
        (("Who sells the dinner tickets?", "Who is the club's treasurer?"), treasurer),
        (("How many new members joined?",), n),
    ]


@genre("museum_label", wide=True)
def _museum(m: Material) -> tuple[str, list[QA]]:
    work, painter, year, donor, place, thing = m.title(), m.person(), m.year(), m.org(), m.place(), m.thing()
    text = m.frame(
        (
            f"{work} ({year})\n{painter}. Oil on canvas.\nPainted in a rented room in {place}, it shows the "
            f"artist's {thing} by a window. Given to the museum by {donor}."
        ),
        (
            f"{painter}, {work}, {year}. Oil on canvas.\nThe artist's {thing} stands by a window in this picture, "
            f"painted in a rented room in {place}. Gift of {donor}."
        ),
        (
            f"Room 4. {work} by {painter} ({year}) was painted in a rented room in {place} and shows the artist's "
            f"{thing} beside a window. Oil on canvas; given by {donor}."
        ),
    )
    return text, [
        (("What is the painting called?", "What is the title of the work?"), work),
        (("Who painted it?", f"Who is the artist of {work}?"), painter),
        (("Who gave the painting to the museum?", "Which donor gave the work?"), donor),
        (("Where was it painted?", "In which town was the painting made?"), place),
        (("What does the painting show?",), thing),
        (("When was it painted?",), year),
    ]


@genre("incident_report", wide=True)
def _incident(m: Material) -> tuple[str, list[QA]]:
    time, day, street, shop, witness, thing, officer = (
        m.time(), m.weekday(), m.street(), m.title(), m.person(), m.thing(), m.person()
    )  # fmt: skip
    text = m.frame(
        (
            f"Incident report. At {time} on {day}, officers attended {shop} on {street}, where {_a(thing)} had been "
            f"taken from the front window. A witness, {witness}, saw a cyclist leave towards the station. Report "
            f"filed by {officer}."
        ),
        (
            f"Report by {officer}. Officers attended at {time} on {day}. Location: {shop}, {street}. Taken: {_a(thing)} "
            f"from the front window. Witness {witness} saw a cyclist heading towards the station."
        ),
        (
            f"{officer} reports: on {day} at {time} we were called to {shop}, {street}. Someone had taken {_a(thing)} "
            f"from the front window; {witness} saw a cyclist ride off towards the station."
        ),
    )
    return text, [
        (("What was taken?", "Which item went missing from the window?"), thing),
        (("Which shop was it taken from?", "What is the name of the shop?"), shop),
        (("Who was the witness?", "Who saw the cyclist?"), witness),
        (("Who filed the report?", "Which officer wrote the report?"), officer),
        (("At what time did officers attend?",), time),
    ]


@genre("story", wide=True)
def _story(m: Material) -> tuple[str, list[QA]]:
    who, place, inn, stranger, role, thing = m.person(), m.place(), m.title(), m.first(), m.role(), m.thing()
    n, horse = m.count_word(), m.first()
    first = who.split()[0]
    text = m.frame(
        (
            f"The storm caught {who} on the road to {place}, so {first} rode into the yard of an inn called {inn}. "
            f"By the fire sat {stranger}, {_a(role)}, who offered {_a(thing)} in exchange for a seat by the stove. "
            f"They stayed {n} nights, and {first}'s horse, {horse}, would not leave the stable."
        ),
        (
            f"{who} was riding to {place} when the storm broke. The nearest shelter was an inn called {inn}, where "
            f"{stranger}, {_a(role)}, sat by the fire and offered {_a(thing)} for a seat near the stove. {first}'s horse, "
            f"{horse}, would not leave the stable, and they stayed {n} nights."
        ),
        (
            f'Rain caught {who} on the road to {place}, and {first} took shelter at {inn}. "Sit," said {stranger}, '
            f"{_a(role)} warming by the fire, holding out {_a(thing)} in exchange for the seat by the stove. They stayed "
            f"{n} nights; {horse}, {first}'s horse, refused to leave the stable."
        ),
    )
    return text, [
        ((f"Where was {who} going?", f"What town was {first} riding to?"), place),
        (("What was the inn called?", f"Where did {first} shelter from the storm?"), inn),
        (("Who sat by the fire?", "What was the stranger's name?"), stranger),
        ((f"What is the name of {first}'s horse?", "What was the horse called?"), horse),
        ((f"What did {stranger} offer?", "What was offered for a seat by the stove?"), thing),
        (("How many nights did they stay?",), n),
    ]


GENRE_NAMES = tuple(GENRES)
CORE_GENRES = tuple(g for g in GENRE_NAMES if g not in WIDE_GENRES)
GENRE_SETS = ("core", "wide")

# The kinds of answer a question can ask for (`answer_kind`; `PassagesConfig.answer_balance`; scripts/answer_mix.py).
ANSWER_KINDS = ("number", "code", "name_or_title", "common_words")


def answer_kind(answer: str) -> str:
    """ "number" ("1978", "3.5", "7:40"), "code" (any other answer with a digit: "CA-3831", "12 May"),
    "name_or_title" (capitalized: "Hamish Dunleavy", "The Silver Goat") or "common_words" ("a tiny snail")."""
    answer = str(answer).strip()
    if re.fullmatch(r"-?[\d.,:]+", answer):
        return "number"
    if re.search(r"\d", answer):
        return "code"
    if answer[:1].isupper():
        return "name_or_title"
    return "common_words"


# `PassagesConfig.name_lists`: a training passage's question may instead ask for all its names, in order.
NAME_LIST_QUESTIONS = (
    "List the names in the text, one per line, in the order they appear.",
    "Which names does the text mention? Give them in order, one per line.",
    "Name every person, place and organization mentioned, in order, one per line.",
)
# One name per line, not "A, B, C": evaluation reads an answer's first line, so a target that learnt to answer in
# comma lists would hedge ("Caspian Fairfield, Ludo Fairfield" for "Ludo") and be scored right for it.
NAME_LIST_SEPARATOR = "\n"
NAME_LIST_MAX = 4


def name_list(context: str, names: list[str], limit: int = NAME_LIST_MAX) -> list[str]:
    """The names among `names` that `context` states as whole words, by first appearance, at most `limit`; a name
    that is part of another stated one (a first name inside its person's full name) is left out."""
    found = {name: m.start() for name in dict.fromkeys(names) if (m := mention(context, name))}
    kept = [name for name in found if not any(other != name and mention(other, name) for other in found)]
    return sorted(kept, key=found.__getitem__)[:limit]


# `PassagesConfig.name_questions`: a training passage's question may instead ask for one part of a person's name
# given the other part, answered by ONE name in the ordinary answer form (the list forms above changed the form).
NAME_QUESTIONS = {
    "first": ("What is {surname}'s first name?", "Which first name does {surname} have in the text?"),
    "surname": ("What is {first}'s surname?", "What is {first}'s family name?"),
    "full": ("What is the full name of the person called {first}?", "Give {first}'s full name."),
}


def name_question(context: str, people: list[str], rng: random.Random) -> tuple[str, str] | None:
    """A (question, answer) about one person of `people` whom `context` states by full name: their first name given
    the surname, their surname given the first name, or their full name given the first name. Only unambiguous
    questions: a surname shared by two people stated is never the cue. None when no one is stated by full name."""
    stated = [p for p in dict.fromkeys(people) if " " in p and mention(context, p)]
    if not stated:
        return None
    person = rng.choice(stated)
    first, surname = person.split(" ", 1)
    kinds = ["surname", "full"]
    if sum(p.split(" ", 1)[1] == surname for p in stated) == 1:
        kinds.append("first")
    kind = rng.choice(kinds)
    question = rng.choice(NAME_QUESTIONS[kind]).format(first=first, surname=surname)
    return question, {"first": first, "surname": surname, "full": person}[kind]


LEXICONS = ("builtin", "broad")
WORDS = ("builtin", "broad")
PHRASINGS = ("one", "varied")


@dataclass
class PassagesConfig:
    """Multi-genre passages with same-type distractors (kvproj/data/passages.py).

    Args:
        seed: Everything is a pure function of (seed, split, index).
        val_genres: Genres held out for validation (training never sees them).
        test_genres: Genres held out for test (neither training nor validation sees them).
        share: Share of the training stream taken from passages when data.dataset is "facts" (a mix);
            data.dataset "passages" uses passages only.
        lexicon: Names in TRAINING passages. "builtin": ~190 first names and syllable-made surnames, places and
            organizations. "broad": also real first names, surnames and places of many origins (the name lists of
            the faker package: ~10k first names, ~10k surnames; kvproj/data/lexicon.py), without any word of a
            held-out pool or a bundled evaluation file. Validation and test passages use the built-in material
            either way, so held-out numbers stay comparable across recipes.
        words: Common words in TRAINING passages. "builtin": ~70 objects (adjective + noun) and ~40 occupations.
            "broad": half of the objects drawn from ~890 common nouns and ~360 adjectives and colour names, half
            of the occupations from ~260 (faker's en_US word and job lists; kvproj/data/lexicon.py), without any
            word of a bundled evaluation file. Validation and test passages use the built-in words either way.
        name_lists: Share of TRAINING passages whose question asks instead for every name the passage states
            (people, places, organizations), in order of appearance, up to four, one per line: a spelling
            exercise, since one such answer scores the spelling of several names, not one, and where each ends.
            Drawn from its own seeded stream, so every other example is unchanged; a passage with fewer than two
            names keeps its question. Validation and test passages keep their ordinary questions. At share 0.5 and
            600 steps the target learnt to answer EVERY question as a list (the projector never sees the question,
            so the cache steers all answers into the format): off by default (docs/evaluation.md, "Name lists").
        name_questions: Share of TRAINING passages whose question asks instead about the spelling of one person's
            name, answered by one name in the ordinary form: the first name given the surname ("What is Poskitt's
            first name?"), the surname given the first name, or the full name given the first name. A spelling
            exercise without the list form's change of answer format. Drawn from the same seeded stream as
            name_lists (name_lists + name_questions <= 1, the two never on one passage); a passage that states no
            one by full name keeps its question. Validation and test passages keep their ordinary questions. At
            share 0.3 and 600 steps both held-out sets fell (narrative 0.34 -> 0.23, genres 0.35 -> 0.29): off by
            default (docs/evaluation.md, "Name questions").
        genre_set: Genres TRAINING passages are drawn from. "core": the 18 original genres, less the held-out ones.
            "wide": also seven more (obituary, interview, lost_and_found, club_newsletter, museum_label,
            incident_report, story) that name shops, inns, boats, bands and paintings with titles made of common
            words ("The Amber Kettle", "Copper & Sage"). The held-out genres are the same either way. Alone, over
            three training streams, it traded the held-out genres' numbers and codes (0.36 -> 0.24) for the
            narrative file's names and titles (0.33 -> 0.38) (docs/evaluation.md, "Wider genres"); with
            data.answer_follow 12 it is configs/default.yaml's setting (docs/evaluation.md, "Wide genres and what
            follows the answer"). The class default stays "core", so older configs keep their stream.
        answer_balance: Draw a TRAINING passage's question by kind of answer first (`answer_kind`: number, code, name
            or title, common words), each kind the passage offers equally likely, then one of its questions of that
            kind. The passage is unchanged; validation and test passages keep their questions. Raises numbers and
            codes among the training answers (core genres 0.36 -> 0.46). Off by default: at 600 steps it lowered
            both held-out sets on the core genres (narrative 0.34 -> 0.30, genres 0.35 -> 0.26) and did not keep the
            genres' numbers with the wide ones (docs/evaluation.md, "Balancing the kinds of answer").
        phrasings: How TRAINING passages of a genre are worded. "one": one wording per genre, the values changing.
            "varied": each genre writes the same facts in three wordings (another order of the facts, another
            register: prose, a form, a list, a log format), one drawn per passage from its own seeded stream, so
            names, values and questions are those of "one". Validation and test passages keep the first wording.
            Off by default: on one training stream at 600 steps it moved the hand-written genres 0.35 -> 0.42 and
            the narrative file 0.48 -> 0.43 (docs/evaluation.md, "Varied phrasings"); a second stream decides.
    """

    seed: int = 0
    val_genres: list[str] = field(default_factory=lambda: ["faq", "letter"])
    test_genres: list[str] = field(default_factory=lambda: ["lab_notebook", "weather"])
    share: float = 0.0
    lexicon: str = "builtin"
    words: str = "builtin"
    name_lists: float = 0.0
    name_questions: float = 0.0
    genre_set: str = "core"
    answer_balance: bool = False
    phrasings: str = "one"

    def __post_init__(self) -> None:
        for name in ("val_genres", "test_genres"):
            bad = [g for g in getattr(self, name) if g not in GENRES]
            if bad:
                raise ValueError(f"data.passages.{name}: unknown genre(s) {bad}; valid: {', '.join(GENRE_NAMES)}")
        if set(self.val_genres) & set(self.test_genres):
            raise ValueError(
                f"data.passages: val_genres and test_genres overlap ({sorted(set(self.val_genres) & set(self.test_genres))})"
            )
        if self.genre_set not in GENRE_SETS:
            raise ValueError(f"data.passages.genre_set: got {self.genre_set!r}; valid: {', '.join(GENRE_SETS)}")
        if self.phrasings not in PHRASINGS:
            raise ValueError(f"data.passages.phrasings: got {self.phrasings!r}; valid: {', '.join(PHRASINGS)}")
        if not isinstance(self.answer_balance, bool):
            raise ValueError(f"data.passages.answer_balance: got {self.answer_balance!r}; valid: true, false")
        if not self.train_genres():
            raise ValueError("data.passages: val_genres and test_genres leave no genre for training")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"data.passages.share: must be in [0, 1], got {self.share}")
        if self.lexicon not in LEXICONS:
            raise ValueError(f"data.passages.lexicon: got {self.lexicon!r}; valid: {', '.join(LEXICONS)}")
        if self.words not in WORDS:
            raise ValueError(f"data.passages.words: got {self.words!r}; valid: {', '.join(WORDS)}")
        for name, none in (("name_lists", "no name-list questions"), ("name_questions", "no name questions")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"data.passages.{name}: got {value!r}; valid: a share in [0, 1] (0: {none})")
        if self.name_lists + self.name_questions > 1.0:
            raise ValueError(
                f"data.passages: name_lists ({self.name_lists}) + name_questions ({self.name_questions}) is more than 1; "
                "valid: shares that sum to at most 1 (a passage gets one question)"
            )

    def train_genres(self) -> list[str]:
        pool = CORE_GENRES if self.genre_set == "core" else GENRE_NAMES
        return [g for g in pool if g not in self.val_genres and g not in self.test_genres]

    def genres(self, split: str) -> list[str]:
        return {"train": self.train_genres(), "val": list(self.val_genres), "test": list(self.test_genres)}[split]


def passage_example(cfg: PassagesConfig, split: str, index: int) -> dict[str, Any]:
    """Example `index` of `split` ("train", "val", "test"): {id, context, question, answer, genre}."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"passages split: got {split!r}; valid: train, val, test")
    rng = random.Random(f"passages/{cfg.seed}/{split}/{index}")
    name = rng.choice(cfg.genres(split))
    broad = broad_lexicon(cfg.seed) if cfg.lexicon == "broad" and split == "train" else None
    words = faker_words() if cfg.words == "broad" and split == "train" else None
    varied = cfg.phrasings == "varied" and split == "train"
    frames = random.Random(f"passages/{cfg.seed}/frames/{index}") if varied else None
    material = Material(rng, split, cfg.seed, broad, words, frames)
    context, qas = GENRES[name](material)
    if cfg.answer_balance and split == "train":
        # one kind of answer the passage offers, uniformly, then one of its questions of that kind
        by_kind: dict[str, list[QA]] = {}
        for qa in qas:
            by_kind.setdefault(answer_kind(qa[1]), []).append(qa)
        qas = by_kind[rng.choice(sorted(by_kind))]
    forms, answer = rng.choice(qas)
    question = rng.choice(forms)
    if split == "train" and cfg.name_lists + cfg.name_questions > 0:
        pick = random.Random(f"passages/{cfg.seed}/name_lists/{index}")
        draw = pick.random()
        if draw < cfg.name_lists:
            if len(names := name_list(context, material.names)) >= 2:
                question, answer = pick.choice(NAME_LIST_QUESTIONS), NAME_LIST_SEPARATOR.join(names)
        elif draw < cfg.name_lists + cfg.name_questions:
            if (asked := name_question(context, material.people, pick)) is not None:
                question, answer = asked
    return {
        "id": f"passage-{split}-{index:07d}",
        "context": context,
        "question": question,
        "answer": str(answer),
        "genre": name,
    }
