"""The synthetic facts corpus (contexts of facts about invented people, a question, a short answer), its splits
with held-out people and values, the endless resumable training stream, and the eval-file format (JSONL).
"""

from __future__ import annotations

import functools
import json
import random
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from kvproj.data.text import json_objects

SPLITS = ("train", "val", "test", "test_in_distribution")
EVAL_KEYS = ("context", "question", "answer")


@dataclass(frozen=True)
class FactExample:
    """One context / question / answer. `entity` is the person asked about, `relation` the attribute."""

    id: str
    context: str
    question: str
    answer: str
    relation: str
    entity: str
    split: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FactsConfig:
    """How the facts corpus is generated.

    Args:
        seed: Everything (people, attribute values, contexts, phrasings) is a pure function of the config.
        n_train_entities: People the training stream draws from.
        n_val_entities: Held-out people for validation (one example each).
        n_test_entities: Held-out people for test (one example each); also the size of "test_in_distribution".
        facts_per_context: (min, max) facts in a context; the others are distractors about the same person's other
            attributes or other people.
        random_value_share: Share of attribute values drawn from a broad pool of common and invented words (split
            into disjoint train / val / test parts) instead of the closed per-relation lists, so that a projector
            must carry tokens rather than memorize a lookup table.
        same_relation_distractors: Share of contexts that also state another person's value of the SAME relation.
        n_train_examples: Size of the materialized "train" split of `generate_splits` (the first examples of
            `iter_train`).
    """

    seed: int = 0
    n_train_entities: int = 3000
    n_val_entities: int = 200
    n_test_entities: int = 300
    facts_per_context: tuple[int, int] = (1, 3)
    random_value_share: float = 0.5
    same_relation_distractors: float = 0.2
    n_train_examples: int = 10_000

    def __post_init__(self) -> None:
        for name in ("n_train_entities", "n_val_entities", "n_test_entities"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 50_000:
                raise ValueError(f"facts.{name} must be an integer in 1..50000, got {value!r}")
        if not isinstance(self.n_train_examples, int) or self.n_train_examples < 0:
            raise ValueError(f"facts.n_train_examples must be an integer >= 0, got {self.n_train_examples!r}")
        lo_hi = tuple(self.facts_per_context)
        if (
            len(lo_hi) != 2
            or not all(isinstance(v, int) for v in lo_hi)
            or not 1 <= lo_hi[0] <= lo_hi[1] <= len(RELATIONS)
        ):
            raise ValueError(
                f"facts.facts_per_context must be (min, max) integers with 1 <= min <= max <= {len(RELATIONS)}, "
                f"got {self.facts_per_context!r}"
            )
        self.facts_per_context = (int(lo_hi[0]), int(lo_hi[1]))
        for name in ("random_value_share", "same_relation_distractors"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"facts.{name} must be a number in [0, 1], got {value!r}")

    def _world_key(self) -> tuple:
        return (
            self.seed,
            self.n_train_entities,
            self.n_val_entities,
            self.n_test_entities,
            self.random_value_share,
        )


# ----------------------------------------------------------------------------------------------------------------
# Word material. Held-out names and values are disjoint from training ones BY CONSTRUCTION: first names are
# partitioned by a checksum, surnames and invented words by their first letter, common words by a checksum.

_FIRST_NAMES = """
Aaron Abigail Adele Adrian Aisha Alan Alice Amara Amelia Anders Andre Anita Ansel Arjun Astrid Aurora Ben
Bianca Boris Brenda Bruno Caleb Camila Carmen Cecil Celeste Chen Chloe Clara Colin Cora Dalia Damian Dante
Daphne Darius Delia Derek Diego Dmitri Dora Edgar Edith Elena Elias Eliza Emil Emma Enzo Esther Ezra Farah
Felix Fiona Flora Frida Gabriel Gemma Gideon Greta Gustav Hana Hannah Harvey Hector Helga Henry Hugo Ida Igor
Ines Ingrid Irene Isaac Ivan Jade Jamal Jasper Javier Joan Jonas Jorge Joy Julian Juno Kai Kamala Karin Kasper
Keira Kenji Kiran Klaus Lars Laura Leah Leon Leona Lila Linus Lorenzo Lucia Lydia Magnus Maia Malik Marco Marta
Mateo Maya Milan Mina Miriam Nadia Naomi Nelson Nico Nina Noah Nora Odette Olga Omar Orla Oscar Pablo Paloma
Petra Philip Priya Quentin Rafael Rania Rashid Rhea Rita Ronan Rosa Ruben Ruth Sabine Samir Sana Saul Selma
Serena Silas Simone Sofia Stefan Sven Tamar Tariq Tessa Theo Tobias Uma Valeria Vera Victor Viggo Vivian Wanda
Wesley Yara Yusuf Zara Zoltan
""".split()

_SIBLING_NAMES = """
Abel Agnes Alfie Blake Bonnie Carl Dean Doris Elsie Emmett Floyd Gail Grant Hazel Irma Jack Jill Kurt Lena Lloyd
Mabel Molly Neil Olive Pearl Reed Roy Sadie Troy Vince
""".split()

# Concrete, common English words (lowercase, single tokens for most tokenizers).
_COMMON_WORDS = """
acorn album anchor anvil apron arch arrow attic avocado axle badge bagel balloon bamboo bandana banner barn
barrel basket beacon beaver bell bench berry bicycle blanket blender bonnet boot bottle boulder bracelet branch
bread brick bridge broom bubble bucket buckle bugle bullet bundle butter button cabin cable cactus cake camel
camera canal candle canoe canvas canyon captain carpet carrot castle cedar cellar chain chalk cherry chimney
chisel cider circle cliff clock cloud clover coat cobweb coconut collar comet compass cookie copper cork cottage
cotton cradle crane crayon cricket crown crystal cupboard curtain cushion daisy dagger desert diamond dolphin
donkey doorbell dragon drawer dune eagle easel echo elbow ember engine envelope falcon feather fence ferry
fiddle field fig finch flag flannel flask fleece fountain fox frost funnel gadget garden garlic gate gazebo
geyser giraffe glacier glove goblet goose granite grape gravel guitar gull hammer hammock harbor harness hatchet
hazel helmet hedge heron hinge hive hollow honey hood horizon hornet hourglass husk igloo inkwell iris island
ivory jacket jam jar jasmine jelly jigsaw journal jungle kayak kettle kernel key kite kitten knot ladder ladle
lagoon lantern lark laurel leaf ledger lemon lens lettuce lighthouse lily lime linen lobster locket lumber magnet
mango maple marble marsh meadow melon mesa mill mirror mitten moss moth muffin mushroom needle nest nickel nutmeg
oak oar oasis olive onion orbit orchard otter oven owl paddle pagoda palace parcel parrot pasture peach peanut
pearl pebble pelican pencil pepper pepperoni pillow pine pinecone pipe pirate planet plank plum pocket pond
poppy porch potato prism pudding pumpkin puzzle quail quarry quill quilt rabbit radish raft rainbow raisin
raven reef ribbon ridge river robin rocket rooster rope rose rudder saddle saffron sail salmon sandal satchel
saucer scarf scissors scroll seashell shadow shovel sickle silk skillet sled sleeve slipper snail sparrow
spider spindle sponge spoon spruce squirrel stable stapler starfish statue stone stool storm straw stream
sunflower swan sweater tablet tadpole tambourine teacup teapot tent thimble thistle thread thunder ticket tiger
timber toast toffee tomato torch tortoise towel tower tractor trellis trolley trumpet tulip tunnel turnip
umbrella urchin valley vase velvet violet walnut walrus wagon wand wardrobe weasel whale wheat whisk whistle
willow window windmill wizard wombat wool wreath yarn yeast yogurt zebra zipper
""".split()

# Surnames and invented words are built from syllables. The first letter decides the split.
_SURNAME_FIRST = {
    "train": ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "w"],
    "val": ["j", "y"],
    "test": ["v", "z", "qu"],
}
_SURNAME_ONSETS = ["b", "d", "g", "k", "l", "m", "n", "r", "s", "t", "v", "z", "th", "br", "dr", "gr", "st", "tr"]
_SURNAME_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_SURNAME_CODAS = ["", "", "", "n", "r", "l", "s", "m", "k", "rn", "ld", "nd"]
_SURNAME_ENDINGS = [
    "",
    "",
    "",
    "son",
    "berg",
    "ov",
    "ski",
    "ell",
    "ard",
    "mont",
    "ley",
    "wick",
    "er",
    "ani",
    "ton",
]

_INVENTED_FIRST = {
    "train": ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t"],
    "val": ["h", "w"],
    "test": ["j", "v", "z"],
}
_INVENTED_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "sh", "pl", "tr", "sn", "gl"]
_INVENTED_VOWELS = ["a", "e", "i", "o", "u", "oo", "ee"]
_INVENTED_CODAS = ["", "", "", "", "n", "p", "t", "sk", "mp", "lt"]

_OCCUPATION_ROLES = ["maker", "inspector", "collector", "trader", "keeper", "designer", "repairer", "tester"]
_EMPLOYER_SUFFIXES = ["Labs", "Industries", "Group", "Systems", "Works", "Partners", "Supply", "Company"]
_STREET_SUFFIXES = ["Street", "Lane", "Road", "Avenue", "Way", "Court", "Terrace"]


def _bucket(word: str) -> str:
    """Deterministic (process-independent) split of a word list: 70% train, 10% val, 20% test."""
    b = zlib.crc32(word.encode()) % 10
    return "train" if b < 7 else ("val" if b == 7 else "test")


# ----------------------------------------------------------------------------------------------------------------
# Relations


@dataclass(frozen=True)
class Relation:
    """An attribute of a person: closed values, how a random value is made, phrasings.

    The last `held_out` fact and question templates are never used in "train", "val" or "test": they make
    "test_in_distribution". Placeholders: {name}, {value}, {a_value} (value with "a"/"an"). No template starts
    with the value, so answers appear verbatim (same case) in contexts.
    """

    name: str
    closed: tuple[str, ...]
    random_kind: str  # "word", "Word", "role", "employer", "street", "year"
    facts: tuple[str, ...]
    questions: tuple[str, ...]
    held_out: int = 1

    @property
    def train_facts(self) -> tuple[str, ...]:
        return self.facts[: -self.held_out]

    @property
    def train_questions(self) -> tuple[str, ...]:
        return self.questions[: -self.held_out]

    @property
    def held_out_facts(self) -> tuple[str, ...]:
        return self.facts[-self.held_out :]

    @property
    def held_out_questions(self) -> tuple[str, ...]:
        return self.questions[-self.held_out :]


RELATIONS: tuple[Relation, ...] = (
    Relation(
        "birthplace",
        tuple(
            "Lisbon Denver Osaka Nairobi Oslo Lima Toronto Glasgow Perth Hanoi Munich Austin Cairo Dublin Seoul "
            "Porto Quito Tampa Krakow Boston Madrid Chicago Vienna Athens Manila Bogota Seattle Helsinki Lagos "
            "Prague".split()
        ),
        "Word",
        (
            "{name} was born in {value}.",
            "The birthplace of {name} is {value}.",
            "Records show that {name} was born in the city of {value}.",
            "{name} came into the world in {value}.",
            "According to the registry, {name}'s place of birth is {value}.",
        ),
        (
            "Where was {name} born?",
            "In which city was {name} born?",
            "What is the birthplace of {name}?",
            "Which city is {name}'s place of birth?",
        ),
    ),
    Relation(
        "occupation",
        tuple(
            "nurse carpenter teacher pilot chef architect dentist plumber librarian firefighter journalist "
            "pharmacist electrician photographer baker surgeon accountant veterinarian mechanic translator "
            "gardener lawyer engineer tailor".split()
        ),
        "role",
        (
            "{name} works as {a_value}.",
            "By profession, {name} is {a_value}.",
            "{name} earns a living as {a_value}.",
            "The job of {name} is {value}.",
            "For many years {name} has been employed as {a_value}.",
        ),
        (
            "What does {name} do for a living?",
            "What is {name}'s occupation?",
            "What is the job of {name}?",
            "What is {name} by profession?",
        ),
    ),
    Relation(
        "favorite_color",
        tuple(
            "red blue green yellow purple orange teal maroon turquoise lavender crimson navy beige silver gold "
            "indigo magenta charcoal".split()
        ),
        "word",
        (
            "{name}'s favorite color is {value}.",
            "The color {name} likes best is {value}.",
            "Of all colors, {name} prefers {value}.",
            "{name} says that {value} is the nicest color.",
            "Asked about colors, {name} always picks {value}.",
        ),
        (
            "What is {name}'s favorite color?",
            "Which color does {name} like best?",
            "What color does {name} prefer?",
            "Which color would {name} pick?",
        ),
    ),
    Relation(
        "pet_name",
        tuple(
            "Biscuit Luna Max Pepper Milo Daisy Rocky Coco Bella Ziggy Nala Buddy Whiskers Peanut Ginger Bailey "
            "Simba Mochi Noodle Pickles".split()
        ),
        "Word",
        (
            "{name} has a pet named {value}.",
            "{name}'s pet is called {value}.",
            "The pet that lives with {name} answers to {value}.",
            "{name} adopted a pet and named it {value}.",
            "Every morning {name} feeds a pet called {value}.",
        ),
        (
            "What is the name of {name}'s pet?",
            "What is {name}'s pet called?",
            "What did {name} name the pet?",
            "Which name does {name}'s pet answer to?",
        ),
    ),
    Relation(
        "instrument",
        tuple(
            "violin cello piano guitar flute clarinet drums harp saxophone banjo oboe trombone ukulele "
            "accordion mandolin bassoon harmonica viola tuba".split()
        ),
        "word",
        (
            "{name} plays the {value}.",
            "The instrument {name} plays is the {value}.",
            "{name} has played the {value} since childhood.",
            "In the town band, {name} is on the {value}.",
            "On weekends {name} practices the {value}.",
        ),
        (
            "What instrument does {name} play?",
            "Which instrument is played by {name}?",
            "What does {name} play in the band?",
            "Which instrument does {name} practice?",
        ),
    ),
    Relation(
        "birth_year",
        tuple(str(y) for y in range(1950, 2000)),
        "year",
        (
            "{name} was born in {value}.",
            "The year {name} was born was {value}.",
            "{name}'s birth year is {value}.",
            "Records list {value} as the year {name} was born.",
            "The papers of {name} give {value} as the year of birth.",
        ),
        (
            "In what year was {name} born?",
            "What is {name}'s birth year?",
            "When was {name} born?",
            "Which year was {name} born in?",
        ),
    ),
    Relation(
        "employer",
        (
            "Northwind Logistics",
            "Bluepeak Software",
            "Silverline Bank",
            "Redwood Pharmaceuticals",
            "Summit Foods",
            "Crescent Media",
            "Ironbridge Engineering",
            "Greenfield Energy",
            "Lakeside Hospital",
            "Brightway Airlines",
            "Oakmont Insurance",
            "Pioneer Textiles",
            "Cobalt Robotics",
            "Westgate Motors",
            "Harborview Shipping",
            "Evergreen Publishing",
        ),
        "employer",
        (
            "{name} works for {value}.",
            "The employer of {name} is {value}.",
            "{name} is on the staff of {value}.",
            "These days {name} draws a salary from {value}.",
            "{name} took a job at {value} and stayed.",
        ),
        (
            "Which company does {name} work for?",
            "Who employs {name}?",
            "What is the name of {name}'s employer?",
            "At which company did {name} take a job?",
        ),
    ),
    Relation(
        "street",
        (
            "Maple Street",
            "Oak Avenue",
            "Elm Road",
            "Cedar Lane",
            "Willow Drive",
            "Birch Street",
            "Pine Avenue",
            "Chestnut Road",
            "Park Lane",
            "High Street",
            "Church Road",
            "Mill Lane",
            "Station Road",
            "River Road",
            "Hill Street",
            "Lake Avenue",
        ),
        "street",
        (
            "{name} grew up on {value}.",
            "The street where {name} grew up is {value}.",
            "As a child, {name} lived on {value}.",
            "{name}'s childhood home stood on {value}.",
            "Neighbors remember {name} playing outside on {value}.",
        ),
        (
            "On which street did {name} grow up?",
            "What street did {name} live on as a child?",
            "Where was {name}'s childhood home?",
            "Which street was {name}'s childhood home on?",
        ),
    ),
    Relation(
        "favorite_food",
        tuple(
            "lasagna sushi tacos pancakes ramen paella curry dumplings risotto falafel burritos goulash pierogi "
            "gnocchi moussaka biryani enchiladas couscous chili".split()
        ),
        "word",
        (
            "{name}'s favorite food is {value}.",
            "The dish {name} loves most is {value}.",
            "{name} would eat {value} every day.",
            "Given the choice, {name} always orders {value}.",
            "Nothing makes {name} happier than a plate of {value}.",
        ),
        (
            "What is {name}'s favorite food?",
            "Which dish does {name} love most?",
            "What food does {name} always order?",
            "What would {name} happily eat every day?",
        ),
    ),
    Relation(
        "sibling",
        tuple(_SIBLING_NAMES),
        "Word",
        (
            "{name} has a sibling named {value}.",
            "The sibling of {name} is called {value}.",
            "{name} grew up alongside a sibling, {value}.",
            "{name}'s only sibling goes by {value}.",
            "At family dinners {name} sits next to a sibling named {value}.",
        ),
        (
            "What is the name of {name}'s sibling?",
            "What is {name}'s sibling called?",
            "Who is {name}'s sibling?",
            "What name does {name}'s sibling go by?",
        ),
    ),
)
RELATION_NAMES = tuple(r.name for r in RELATIONS)
_CLOSED_SETS = {r.name: frozenset(r.closed) for r in RELATIONS}


def is_closed_value(relation: str, value: str) -> bool:
    """Whether `value` comes from `relation`'s closed list (False: it was drawn from the random word pool)."""
    return value in _CLOSED_SETS[relation]


# ----------------------------------------------------------------------------------------------------------------
# The world: people and their attributes, per split


@dataclass(frozen=True)
class _Entity:
    name: str
    values: tuple[str, ...]  # one per relation, in RELATIONS order


@dataclass
class _World:
    entities: dict[str, list[_Entity]]  # "train", "val", "test"
    pools: dict[str, list[str]] = field(repr=False)  # random words per split (lowercase)
    years: dict[str, list[str]] = field(repr=False)


def _syllable_words(
    rng: random.Random,
    n: int,
    first: list[str],
    onsets: list[str],
    vowels: list[str],
    codas: list[str],
    endings: list[str],
    forbidden: frozenset[str],
) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(50 * n + 1000):
        if len(out) == n:
            return out
        word = rng.choice(first) + rng.choice(vowels) + rng.choice(codas)
        for _ in range(rng.randint(0, 1)):
            word += rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
        word += rng.choice(endings)
        if len(word) < 4 or len(word) > 11 or word in seen or word in forbidden:
            continue
        seen.add(word)
        out.append(word)
    raise ValueError(f"facts: could not make {n} distinct syllable words (first letters {first}); ask for fewer")


def _names_in_values() -> frozenset[str]:
    """Lowercased words of every closed value and name list: random-pool words must not collide with them."""
    words = {w.lower() for r in RELATIONS for v in r.closed for w in v.split()}
    words |= {w.lower() for w in _FIRST_NAMES + _SIBLING_NAMES + _OCCUPATION_ROLES}
    words |= {w.lower() for w in _EMPLOYER_SUFFIXES + _STREET_SUFFIXES}
    return frozenset(words)


@functools.lru_cache(maxsize=8)
def _build_world(key: tuple) -> _World:
    seed, n_train, n_val, n_test, random_share = key
    counts = {"train": n_train, "val": n_val, "test": n_test}
    reserved = _names_in_values()

    first_names = {s: sorted(n for n in _FIRST_NAMES if _bucket(n) == s) for s in counts}
    common = {s: sorted(w for w in _COMMON_WORDS if _bucket(w) == s and w not in reserved) for s in counts}
    surnames: dict[str, list[str]] = {}
    pools: dict[str, list[str]] = {}
    for s in counts:  # dict order: train, val, test
        rng = random.Random(f"facts/{seed}/names/{s}")
        surnames[s] = [
            w.capitalize()
            for w in _syllable_words(
                rng,
                counts[s],
                _SURNAME_FIRST[s],
                _SURNAME_ONSETS,
                _SURNAME_VOWELS,
                _SURNAME_CODAS,
                _SURNAME_ENDINGS,
                reserved,
            )
        ]
        surname_words = frozenset(w.lower() for w in surnames[s])
        invented = _syllable_words(
            random.Random(f"facts/{seed}/words/{s}"),
            max(60, int(1.5 * len(common[s]))),
            _INVENTED_FIRST[s],
            _INVENTED_ONSETS,
            _INVENTED_VOWELS,
            _INVENTED_CODAS,
            ["", "", "a", "o", "y", "el"],
            reserved | surname_words | frozenset(_COMMON_WORDS),
        )
        pools[s] = sorted(common[s] + invented)
    # Surnames of other splits must not be pool words either (they differ by first letter except by accident).
    all_surnames = frozenset(w.lower() for s in surnames for w in surnames[s])
    pools = {s: [w for w in p if w not in all_surnames] for s, p in pools.items()}
    years = {s: [] for s in counts}
    for y in range(1850, 2020):
        if not 1950 <= y < 2000:
            years[_bucket(str(y))].append(str(y))

    entities: dict[str, list[_Entity]] = {}
    for s in counts:
        rng = random.Random(f"facts/{seed}/entities/{s}")
        people = []
        for surname in surnames[s]:
            name = f"{rng.choice(first_names[s])} {surname}"
            values = tuple(
                _random_value(rel, rng, pools[s], years[s])
                if rng.random() < random_share
                else rng.choice(rel.closed)
                for rel in RELATIONS
            )
            people.append(_Entity(name, values))
        entities[s] = people
    return _World(entities, pools, years)


def _random_value(rel: Relation, rng: random.Random, pool: list[str], years: list[str]) -> str:
    if rel.random_kind == "year":
        return rng.choice(years)
    word = rng.choice(pool)
    if rel.random_kind == "word":
        return word
    if rel.random_kind == "Word":
        return word.capitalize()
    if rel.random_kind == "role":
        return f"{word} {rng.choice(_OCCUPATION_ROLES)}"
    if rel.random_kind == "employer":
        return f"{word.capitalize()} {rng.choice(_EMPLOYER_SUFFIXES)}"
    if rel.random_kind == "street":
        return f"{word.capitalize()} {rng.choice(_STREET_SUFFIXES)}"
    raise AssertionError(rel.random_kind)


def people(cfg: FactsConfig, split: str) -> dict[str, dict[str, str]]:
    """The people of a split and their attributes: {name: {relation: value}} in generation order.

    "test_in_distribution" asks about "train" people.
    """
    world = _build_world(cfg._world_key())
    return {e.name: dict(zip(RELATION_NAMES, e.values)) for e in world.entities[_entity_split(split)]}


def _entity_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"facts split: got {split!r}, valid: {', '.join(SPLITS)}")
    return "train" if split == "test_in_distribution" else split


# ----------------------------------------------------------------------------------------------------------------
# Examples


def _a(value: str) -> str:
    return ("an " if value[0].lower() in "aeiou" else "a ") + value


def _render(template: str, name: str, value: str) -> str:
    return template.format(name=name, value=value, a_value=_a(value))


def _make_example(
    cfg: FactsConfig,
    people: list[_Entity],
    rng: random.Random,
    *,
    example_id: str,
    split: str,
    subject: int,
    relation: int,
    held_out_phrasing: bool,
) -> FactExample:
    lo, hi = cfg.facts_per_context
    n_facts = rng.randint(lo, hi)
    facts = [(subject, relation)]
    target_value = people[subject].values[relation]
    if hi >= 2 and len(people) > 1 and rng.random() < cfg.same_relation_distractors:
        n_facts = max(n_facts, 2)
        for _ in range(20):  # another person with a different value of the same relation
            other = rng.randrange(len(people))
            if other != subject and people[other].values[relation] != target_value:
                facts.append((other, relation))
                break
    used = set(facts)
    for _ in range(20 * hi):
        if len(facts) >= n_facts:
            break
        person = subject if (len(people) == 1 or rng.random() < 0.5) else rng.randrange(len(people))
        rel = rng.randrange(len(RELATIONS))
        if rel == relation or (person, rel) in used:
            continue
        used.add((person, rel))
        facts.append((person, rel))
    rng.shuffle(facts)

    sentences = []
    for person, rel_index in facts:
        rel = RELATIONS[rel_index]
        is_target = (person, rel_index) == (subject, relation)
        if held_out_phrasing:
            templates = rel.held_out_facts if is_target else rel.facts
        else:
            templates = rel.train_facts
        sentences.append(_render(rng.choice(templates), people[person].name, people[person].values[rel_index]))
    rel = RELATIONS[relation]
    question_templates = rel.held_out_questions if held_out_phrasing else rel.train_questions
    name = people[subject].name
    return FactExample(
        id=example_id,
        context=" ".join(sentences),
        question=_render(rng.choice(question_templates), name, target_value),
        answer=target_value,
        relation=rel.name,
        entity=name,
        split=split,
    )


def train_example(cfg: FactsConfig, index: int) -> FactExample:
    """Training example `index`: a pure function of (config, index)."""
    if index < 0:
        raise ValueError(f"facts train example index must be >= 0, got {index}")
    people = _build_world(cfg._world_key()).entities["train"]
    rng = random.Random(f"facts/{cfg.seed}/train/{index}")
    return _make_example(
        cfg,
        people,
        rng,
        example_id=f"facts-train-{index:07d}",
        split="train",
        subject=rng.randrange(len(people)),
        relation=rng.randrange(len(RELATIONS)),
        held_out_phrasing=False,
    )


def iter_train(cfg: FactsConfig, *, start: int = 0) -> Iterator[FactExample]:
    """Endless stream of training examples; `start` resumes exactly at that index."""
    if start < 0:
        raise ValueError(f"facts iter_train start must be >= 0, got {start}")
    index = start
    while True:
        yield train_example(cfg, index)
        index += 1


def _eval_split(cfg: FactsConfig, split: str) -> list[FactExample]:
    people = _build_world(cfg._world_key()).entities[_entity_split(split)]
    if split == "test_in_distribution":
        rng = random.Random(f"facts/{cfg.seed}/pick/{split}")
        n = cfg.n_test_entities
        subjects = (
            rng.sample(range(len(people)), n)
            if n <= len(people)
            else [rng.randrange(len(people)) for _ in range(n)]
        )
    else:
        subjects = list(range(len(people)))  # every held-out person once
    out = []
    for k, subject in enumerate(subjects):
        rng = random.Random(f"facts/{cfg.seed}/{split}/{k}")
        out.append(
            _make_example(
                cfg,
                people,
                rng,
                example_id=f"facts-{split}-{k:06d}",
                split=split,
                subject=subject,
                relation=(k + cfg.seed) % len(RELATIONS),  # balanced relations
                held_out_phrasing=split == "test_in_distribution",
            )
        )
    return out


def generate_splits(cfg: FactsConfig) -> dict[str, list[FactExample]]:
    """All splits: "train" (first `n_train_examples` of `iter_train`), "val", "test", "test_in_distribution"."""
    return {
        "train": list(islice(iter_train(cfg), cfg.n_train_examples)),
        "val": _eval_split(cfg, "val"),
        "test": _eval_split(cfg, "test"),
        "test_in_distribution": _eval_split(cfg, "test_in_distribution"),
    }


# ----------------------------------------------------------------------------------------------------------------
# Eval-file format: one JSON object per line with "context", "question", "answer" (+ optional "id", extra keys).


class EvalFileError(ValueError):
    """An eval JSONL file that does not follow the format; the message names file:line."""


def write_jsonl(examples: Iterable[FactExample | dict[str, Any]], path: str | Path) -> Path:
    """Write examples (FactExample or dicts) as JSONL, atomically (temp file + rename). Returns the path."""
    from kvproj.atomic import atomic_write

    rows = [e.to_dict() if isinstance(e, FactExample) else dict(e) for e in examples]
    return atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    """Read and validate an eval JSONL file. Blank lines are skipped; a missing "id" becomes "<file stem>-<line>".

    Raises:
        EvalFileError: naming `file:line` for invalid JSON, a non-object line, a missing or non-string key among
            "context", "question", "answer", or a duplicate id.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval file {str(path)!r} does not exist")
    rows: list[dict] = []
    seen: dict[str, int] = {}
    for lineno, where, row in json_objects(path, error=EvalFileError):
        for key in EVAL_KEYS:
            if key not in row:
                raise EvalFileError(
                    f"{where}: missing key {key!r}; each line needs {', '.join(map(repr, EVAL_KEYS))} "
                    f"('id' optional), got keys {sorted(row)}"
                )
            if not isinstance(row[key], str) or not row[key].strip():
                raise EvalFileError(f"{where}: key {key!r} must be a non-empty string, got {row[key]!r}")
        row_id = str(row.get("id", f"{path.stem}-{lineno}"))
        if row_id in seen:
            raise EvalFileError(f"{where}: duplicate id {row_id!r} (first at line {seen[row_id]})")
        seen[row_id] = lineno
        row["id"] = row_id
        rows.append(row)
    return rows


# The hand-written evaluation files packaged with kvproj, by the name `--eval_file` takes (kvproj/data/eval/README.md)
BUNDLED_EVAL_FILES: dict[str, str] = {"narrative": "narrative_facts.jsonl", "genres": "genre_passages.jsonl"}


def bundled_eval_path(name: str) -> Path:
    """The packaged evaluation file called `name` (a key of `BUNDLED_EVAL_FILES`)."""
    if name not in BUNDLED_EVAL_FILES:
        raise ValueError(f"bundled eval file: got {name!r}; valid: {', '.join(BUNDLED_EVAL_FILES)}")
    return Path(__file__).parent / "eval" / BUNDLED_EVAL_FILES[name]


def narrative_eval_path() -> Path:
    """The packaged hand-written eval file: narrative prose, phrasing the facts templates never produce."""
    return bundled_eval_path("narrative")


__all__: list[str] = [
    "RELATIONS",
    "RELATION_NAMES",
    "SPLITS",
    "EvalFileError",
    "FactExample",
    "FactsConfig",
    "Relation",
    "generate_splits",
    "is_closed_value",
    "iter_train",
    "BUNDLED_EVAL_FILES",
    "bundled_eval_path",
    "narrative_eval_path",
    "people",
    "read_jsonl",
    "train_example",
    "write_jsonl",
]
