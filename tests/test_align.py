"""Tests for kvproj.align: character-span alignment between real tokenizers of different families.

The fast tier trains small tokenizers in-process with `tokenizers` (no downloads); the integration tier aligns
the offline zoo's tokenizers when they are converted.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import logging
import random
import unicodedata
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizer, PreTrainedTokenizerFast

import kvproj.align as align_module
from kvproj import zoo
from kvproj.align import Alignment, align, align_batch, alignment_index_tensor, same_tokenizer

logger = logging.getLogger(__name__)

# Texts that stress offsets: punctuation, digits, accents, CJK, emoji (multi-code-point too), runs of spaces,
# newlines and tabs, leading/trailing whitespace, a literal "▁", a combining accent, characters no tokenizer
# saw in training.
TEXTS = [
    "Hello world! The city of Zürich is in Switzerland.",
    "東京 is the capital of Japan; 大阪 is not.",
    "In 1999, 42 cats ate  3.14159 pies...\nThen   they slept.\n\n",
    "Emojis 😀👍🏽 and 🚀 go here: (yes) [no] {maybe} — “quoted” ‘text’.",
    "  leading spaces, trailing spaces  ",
    "tabs\tand\tnewlines\nmixed \n\t here",
    "café with e\u0301 combined, naïve façade, Straße, Ωmega ß",
    "price: $1,234.56 (approx. 1.2e3), phone +41-44-123-4567, 50% off!!!",
    "a literal ▁ block and __dunder__ and snake_case_name()",
    "x",
]


def _corpus() -> list[str]:
    """A varied training corpus, so the tokenizers learn merges and disagree on where tokens end."""
    rng = random.Random(0)
    words = (
        "the of and to in is was for on that with as by at from city capital country river mountain "
        "Zürich Switzerland Japan France Paris Berlin 東京 大阪 北京 language model cache source target "
        "token tokenizer alignment quick brown fox jumps over lazy dog café naïve façade Straße "
        "hello world function return value number one two three year people said would could"
    ).split()
    punctuation = [".", ",", "!", "?", ";", ":", "...", " -", " (", ")", '"', "'s"]
    lines = list(TEXTS[:4])
    for _ in range(400):
        parts = []
        for _ in range(rng.randint(4, 14)):
            kind = rng.random()
            if kind < 0.75:
                parts.append(rng.choice(words))
            elif kind < 0.88:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 6))))
            else:
                parts.append(rng.choice(["😀", "👍", "🎉", "€", "°C", "→"]))
        line = " ".join(parts) + rng.choice(punctuation)
        if rng.random() < 0.2:
            line += "\n" + rng.choice(words).capitalize()
        lines.append(line)
    return lines


LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level_gpt2() -> Tokenizer:
    # GPT-2 / SmolLM2 style: offsets keep the leading space (trim_offsets=False), no special tokens added.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return tokenizer


def _byte_level_llama3() -> Tokenizer:
    # Llama-3 / Qwen style: a Split regex then bytes, and a BOS added by the post-processor.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|begin_of_text|>"]
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
            ),
        ]
    )
    return tokenizer


def _sentencepiece_unigram() -> Tokenizer:
    # SentencePiece / Llama-2 style: Metaspace with a prepended "▁" on the first word, Unigram model.
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.UnigramTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>", shrinking_factor=0.75
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tokenizer.token_to_id("<s>")), ("</s>", 2)]
    )
    return tokenizer


def _gemma_bpe() -> Tokenizer:
    # Gemma style: spaces become "▁" in the normalizer, no pre-tokenizer (merges may cross words), byte fallback.
    byte_tokens = [f"<0x{value:02X}>" for value in range(256)]
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(
        vocab_size=900, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", *byte_tokens]
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return tokenizer


def _wordpiece_bert() -> Tokenizer:
    # BERT style: lowercases and strips accents, drops whitespace entirely, [CLS] ... [SEP].
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=500, special_tokens=["[UNK]", "[CLS]", "[SEP]"])
    tokenizer.train_from_iterator(_corpus(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    return tokenizer


def _char_level() -> Tokenizer:
    # One token per code point, whitespace included; unseen characters become [UNK].
    alphabet = sorted(set("".join(_corpus())) | set(" \n\t"))
    vocab = {"[UNK]": 0, **{char: index + 1 for index, char in enumerate(alphabet)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return tokenizer


FACTORIES = {
    "bytelevel_gpt2": _byte_level_gpt2,
    "bytelevel_llama3": _byte_level_llama3,
    "sentencepiece_unigram": _sentencepiece_unigram,
    "gemma_bpe": _gemma_bpe,
    "wordpiece_bert": _wordpiece_bert,
    "char_level": _char_level,
}
# WordPiece drops whitespace; NFKC folds a combining accent into the previous character's offsets.
COVERS_EVERY_CHARACTER = {"bytelevel_gpt2", "bytelevel_llama3", "gemma_bpe", "char_level"}
# Every ordered pair of different families: one table, one tester.
CROSS_PAIRS = list(itertools.permutations(FACTORIES, 2))


@functools.cache
def backend(name: str) -> Tokenizer:
    return FACTORIES[name]()


def fast(name: str) -> PreTrainedTokenizerFast:
    """A fresh transformers wrapper around a private copy of the trained tokenizer."""
    return PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(backend(name)))


def test_tokenizers_disagree() -> None:
    """The table is only a test if the families cut the same text differently."""
    text = " ".join(TEXTS)
    tokenizations = {
        name: tuple(fast(name)(text, return_offsets_mapping=True)["offset_mapping"]) for name in FACTORIES
    }
    assert len(set(tokenizations.values())) == len(FACTORIES)
    assert len({len(fast(name)) for name in FACTORIES}) == len(FACTORIES)


# ---------------------------------------------------------------------------------------------- invariants


def _chars(span: tuple[int, int]) -> set[int]:
    return set(range(span[0], span[1]))


def _overlap_reference(spans: list[tuple[int, int]], span: tuple[int, int]) -> list[int]:
    """Brute-force overlap, written independently of the bisect index in kvproj.align."""
    return [index for index, other in enumerate(spans) if _chars(other) & _chars(span)]


def check_alignment(alignment: Alignment, source_tokenizer, target_tokenizer, add_special_tokens: bool = False):
    """Every property the module docstring promises, checked against the tokenizers' own output."""
    text = alignment.text
    source = source_tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    target = target_tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    assert alignment.source_ids == source["input_ids"]
    assert alignment.target_ids == target["input_ids"]
    assert len(alignment.source_spans) == len(alignment.source_ids)
    assert len(alignment.target_spans) == len(alignment.target_to_source) == len(alignment.target_ids)

    # Span rule: inside the tokenizer's offsets, inside the text, no leading whitespace unless all whitespace.
    for spans, offsets in (
        (alignment.source_spans, source["offset_mapping"]),
        (alignment.target_spans, target["offset_mapping"]),
    ):
        for (start, end), (raw_start, raw_end) in zip(spans, offsets, strict=True):
            assert raw_start <= start <= end <= raw_end <= len(text)
            covered = text[start:end]
            assert covered == "" or not covered[0].isspace() or covered.isspace()
            if end == start == raw_start:
                continue
            assert end == raw_end, "only leading characters may be dropped"

    # Every visible character is in some source token. Exceptions: whitespace (WordPiece drops it) and
    # combining marks, which a composing normalizer (NFKC) folds into the previous character's offsets.
    source_chars = set().union(set(), *(_chars(span) for span in alignment.source_spans))
    visible = {k for k, char in enumerate(text) if not char.isspace() and not unicodedata.combining(char)}
    assert visible <= source_chars

    last = alignment.last_source_index()
    assert len(last) == len(alignment.target_ids)
    assert all(-1 <= index < len(alignment.source_ids) for index in last)
    assert all(a <= b for a, b in itertools.pairwise(last)), "last_source_index must be non-decreasing"

    # Offsets before the leading-whitespace rule (a phantom "▁" already made zero-width), for the fallback.
    raw_source = [
        tuple(raw) if span[1] > span[0] else (span[0], span[0])
        for span, raw in zip(alignment.source_spans, source["offset_mapping"], strict=True)
    ]
    for i, (span, raw, sources) in enumerate(
        zip(alignment.target_spans, target["offset_mapping"], alignment.target_to_source, strict=True)
    ):
        if alignment.identity:
            assert sources == [i]
            continue
        raw = tuple(raw) if span[1] > span[0] else (span[0], span[0])
        expected = _overlap_reference(alignment.source_spans, span) or _overlap_reference(raw_source, raw)
        assert sources == expected, (text, i, sources, expected)
        if span[1] == span[0]:
            assert sources == [], "a token covering no character maps to nothing"
            continue
        for j in sources:  # every mapped source token really shares a character with the target token
            assert _chars(raw_source[j]) & _chars(raw), (text, i, j)
        if not sources:  # unaligned only where no source token has any of its characters
            assert not _chars(raw) & set().union(set(), *map(_chars, raw_source)), (text, i)
        target_visible = _chars(span) & visible
        if target_visible:
            assert sources, f"target token {i} {text[span[0] : span[1]]!r} has characters but no source token"
            assert target_visible <= set().union(*(_chars(alignment.source_spans[j]) for j in sources))
        # "Has read": source tokens 0..last[i] hold every source-covered character before the target's end.
        read = set().union(set(), *(_chars(alignment.source_spans[j]) for j in range(last[i] + 1)))
        assert source_chars & set(range(span[1])) <= read, (text, i, last[i])
        later = [j for j in range(last[i] + 1, len(alignment.source_ids)) if _chars(alignment.source_spans[j])]
        assert all(alignment.source_spans[j][0] >= span[1] for j in later), "a later source token was missed"

    stats = alignment.stats()
    assert stats["target_tokens"] == len(alignment.target_ids)
    assert stats["source_tokens"] == len(alignment.source_ids)
    assert stats["unaligned_target"] == sum(1 for sources in alignment.target_to_source if not sources)
    assert 0.0 <= stats["one_to_one_share"] <= 1.0


# ------------------------------------------------------------------------------------------------- the table


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("add_special_tokens", [False, True])
def test_identity_for_the_same_tokenizer(name: str, add_special_tokens: bool, monkeypatch) -> None:
    encodes = []
    original = align_module._encode
    monkeypatch.setattr(align_module, "_encode", lambda *args: encodes.append(args[0]) or original(*args))
    source, target = fast(name), fast(name)  # equal tokenizers, distinct objects
    assert source is not target and same_tokenizer(source, target)
    for text in TEXTS:
        alignment = align(text, source, target, add_special_tokens=add_special_tokens)
        assert alignment.identity
        assert alignment.one_to_one_share == 1.0
        assert alignment.target_to_source == [[i] for i in range(len(alignment.target_ids))]
        assert alignment.last_source_index() == list(range(len(alignment.target_ids)))
        assert alignment.stats()["unaligned_target"] == 0
        check_alignment(alignment, source, target, add_special_tokens)
    assert len(encodes) == len(TEXTS), "the identity path must tokenize each text once, not once per side"


@pytest.mark.parametrize(("source_name", "target_name"), CROSS_PAIRS, ids=[f"{s}->{t}" for s, t in CROSS_PAIRS])
def test_cross_family_alignment(source_name: str, target_name: str) -> None:
    source, target = fast(source_name), fast(target_name)
    assert not same_tokenizer(source, target)
    alignments = align_batch(TEXTS, source, target)
    for alignment in alignments:
        assert not alignment.identity
        check_alignment(alignment, source, target)
    # A source whose offsets cover every character leaves no target token unaligned (check_alignment has
    # checked that the others leave unaligned only characters they dropped).
    unaligned = sum(
        1
        for alignment in alignments
        for sources, (start, end) in zip(alignment.target_to_source, alignment.target_spans, strict=True)
        if not sources and end > start  # a phantom "▁" covers no character and is unaligned by rule
    )
    if source_name in COVERS_EVERY_CHARACTER:
        assert unaligned == 0
    elif target_name == "char_level":
        assert unaligned > 0
    assert min(alignment.one_to_one_share for alignment in alignments) < 1.0, "the families should differ"


@pytest.mark.parametrize(
    ("source_name", "target_name"), CROSS_PAIRS[::5], ids=[f"{s}->{t}" for s, t in CROSS_PAIRS[::5]]
)
def test_align_batch_matches_align(source_name: str, target_name: str) -> None:
    source, target = fast(source_name), fast(target_name)
    assert align_batch(TEXTS, source, target) == [align(text, source, target) for text in TEXTS]
    assert align_batch([], source, target) == []


# ------------------------------------------------------------------------------------------ the span rule


@pytest.mark.parametrize(
    "target_name", ["bytelevel_llama3", "sentencepiece_unigram", "gemma_bpe", "wordpiece_bert"]
)
def test_special_tokens_are_zero_width_and_unaligned(target_name: str) -> None:
    source, target = fast("char_level"), fast(target_name)
    text = "Hello world, again."
    alignment = align(text, source, target, add_special_tokens=True)
    check_alignment(alignment, source, target, add_special_tokens=True)
    plain = align(text, source, target)
    mask = target(text, return_special_tokens_mask=True)["special_tokens_mask"]
    specials = [i for i, special in enumerate(mask) if special]
    assert all(alignment.target_spans[i][0] == alignment.target_spans[i][1] for i in specials)
    assert len(alignment.target_ids) - len(plain.target_ids) == len(specials) >= 1
    # Unaligned: the specials, plus SentencePiece's phantom "▁" (also zero-width), nothing with characters.
    unaligned = [i for i, sources in enumerate(alignment.target_to_source) if not sources]
    assert (
        set(specials)
        <= set(unaligned)
        == {i for i, (start, end) in enumerate(alignment.target_spans) if start == end}
    )
    last = alignment.last_source_index()
    assert last[0] == -1  # the BOS / [CLS] comes before any character
    for i in specials[1:]:  # an EOS / [SEP] has read what its predecessor read
        assert last[i] == last[i - 1] >= 0
    # The characters still align as without special tokens.
    body = [sources for i, sources in enumerate(alignment.target_to_source) if i not in specials]
    assert body == plain.target_to_source


def test_leading_space_in_offsets_is_not_an_overlap() -> None:
    # GPT-2 style offsets of " city" start at the space; the char-level tokenizer has the space on its own.
    source, target = fast("bytelevel_gpt2"), fast("char_level")
    text = "the city"
    encoded = source(text, add_special_tokens=False, return_offsets_mapping=True)
    assert (3, 8) in encoded["offset_mapping"], (
        "this test needs ' city' as one token with the space in its offsets"
    )
    alignment = align(text, source, target)
    city = encoded["offset_mapping"].index((3, 8))
    assert alignment.source_spans[city] == (4, 8)
    assert alignment.target_spans[3] == (3, 4)
    # The space token falls back to the source token whose offsets hold the space; "c" maps to it by characters.
    assert alignment.target_to_source[3] == [city]
    assert alignment.target_to_source[4] == [city]
    # Reversed: the source space is a token of its own, " city" covers "city" only.
    reverse = align(text, target, source)
    assert reverse.target_to_source[city] == [4, 5, 6, 7]


def test_phantom_metaspace_prefix_covers_no_character() -> None:
    # With prepend_scheme="first" a rare first character gets a lone "▁" whose offsets point at that character.
    source, target = fast("char_level"), fast("sentencepiece_unigram")
    text = "Ωmega"
    encoded = target(text, add_special_tokens=False, return_offsets_mapping=True)
    assert encoded.tokens()[0] == "▁" and encoded["offset_mapping"][0] == (0, 1), encoded.tokens()
    alignment = align(text, source, target)
    assert alignment.target_spans[0] == (0, 0)
    assert alignment.target_to_source[0] == []
    assert alignment.target_to_source[1] == [0]
    # A literal "▁" in the text is a character, not a phantom space.
    literal = align("a ▁ b", source, target)
    index = next(i for i, span in enumerate(literal.target_spans) if "▁" in literal.text[span[0] : span[1]])
    assert literal.target_to_source[index] == [2]


def test_split_multibyte_character_maps_every_piece() -> None:
    # Byte fallback splits an unseen character into byte tokens that share its one-character span.
    source, target = fast("char_level"), fast("gemma_bpe")
    text = "a✓b"
    encoded = target(text, add_special_tokens=False, return_offsets_mapping=True)
    assert encoded.tokens().count("<0xE2>") == 1, encoded.tokens()
    alignment = align(text, source, target)
    check_alignment(alignment, source, target)
    pieces = [i for i, span in enumerate(alignment.target_spans) if span == (1, 2)]
    assert len(pieces) == 3  # three UTF-8 bytes
    assert all(alignment.target_to_source[i] == [1] for i in pieces)
    assert alignment.one_to_one_share == pytest.approx(2 / 5)


# ------------------------------------------------------------------------------------------- the dataclass


def test_shares_and_stats_values() -> None:
    alignment = Alignment(
        text="abcdef",
        source_ids=[10, 11, 12, 13],
        target_ids=[20, 21, 22, 23, 24],
        source_spans=[(0, 1), (1, 3), (3, 5), (5, 6)],
        target_spans=[(0, 0), (0, 1), (1, 2), (2, 4), (4, 6)],
        target_to_source=[[], [0], [1], [1, 2], [2, 3]],
    )
    assert alignment.source_to_target == [[1], [2, 3], [3, 4], [4]]
    assert alignment.one_to_one_share == pytest.approx(1 / 5)  # only target 1 <-> source 0
    assert alignment.last_source_index() == [-1, 0, 1, 2, 3]
    assert alignment.stats() == {
        "target_tokens": 5,
        "source_tokens": 4,
        "one_to_one_share": pytest.approx(0.2),
        "unaligned_target": 1,
        "mean_sources_per_target": pytest.approx(6 / 5),
    }
    empty = Alignment(text="", source_ids=[], target_ids=[], source_spans=[], target_spans=[], target_to_source=[])
    assert empty.one_to_one_share == 1.0
    assert empty.last_source_index() == []
    assert empty.stats()["mean_sources_per_target"] == 0.0


def test_alignment_index_tensor_pads_and_refuses_to_truncate() -> None:
    source, target = fast("bytelevel_gpt2"), fast("gemma_bpe")
    alignments = align_batch(TEXTS[:3], source, target)
    lengths = [len(alignment.target_ids) for alignment in alignments]
    index = alignment_index_tensor(alignments, max(lengths) + 2, pad_value=-7)
    assert index.dtype == torch.long and index.shape == (3, max(lengths) + 2)
    for row, alignment in enumerate(alignments):
        assert index[row, : lengths[row]].tolist() == alignment.last_source_index()
        assert (index[row, lengths[row] :] == -7).all()
    assert alignment_index_tensor([], 4).shape == (0, 4)
    with pytest.raises(ValueError, match=rf"target_len=3 .* alignment 0, which has {lengths[0]} target tokens"):
        alignment_index_tensor(alignments, 3)
    # Gathering source positions with it (pad and -1 clamped) picks the position that has read each token.
    source_states = torch.arange(len(alignments[0].source_ids)).float()[None, :, None]  # [1, S, 1]
    gather = index[:1, : lengths[0]].clamp(min=0)[..., None]  # [1, T, 1]
    assert torch.gather(source_states, 1, gather)[0, :, 0].long().tolist() == [
        max(i, 0) for i in alignments[0].last_source_index()
    ]


# ------------------------------------------------------------------------------------ identity and errors


def test_same_tokenizer_compares_rules_not_objects() -> None:
    tokenizer = fast("bytelevel_gpt2")
    assert same_tokenizer(tokenizer, tokenizer)
    assert same_tokenizer(tokenizer, fast("bytelevel_gpt2"))
    assert not same_tokenizer(tokenizer, fast("bytelevel_llama3"))
    lowercased = fast("bytelevel_gpt2")
    lowercased.backend_tokenizer.normalizer = normalizers.Lowercase()
    assert len(lowercased) == len(tokenizer) and not same_tokenizer(tokenizer, lowercased)
    extended = fast("bytelevel_gpt2")
    assert same_tokenizer(tokenizer, extended)  # caches the fingerprint ...
    extended.add_tokens(["<extra>"])
    assert not same_tokenizer(tokenizer, extended)  # ... which add_tokens invalidates
    assert not same_tokenizer(tokenizer, CharSlowTokenizer())


class CharSlowTokenizer(PreTrainedTokenizer):
    """A pure-Python (slow) tokenizer: one token per character, no offsets."""

    def __init__(self, **kwargs) -> None:
        self._vocab = {char: index for index, char in enumerate(sorted(set("".join(TEXTS))))}
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return list(text)

    def _convert_token_to_id(self, token: str) -> int:
        return self._vocab.get(token, 0)

    def _convert_id_to_token(self, index: int) -> str:
        return next(token for token, value in self._vocab.items() if value == index)


@pytest.mark.parametrize("side", ["source", "target"])
@pytest.mark.parametrize(
    "make_other", [CharSlowTokenizer, lambda: backend("char_level")], ids=["slow", "raw_tokenizers"]
)
def test_tokenizer_without_offsets_is_refused_naming_the_side(side: str, make_other) -> None:
    other = make_other()
    assert not getattr(other, "is_fast", False)
    tokenizers = {"source_tokenizer": fast("char_level"), "target_tokenizer": fast("char_level")}
    tokenizers[f"{side}_tokenizer"] = other
    with pytest.raises(TypeError, match=rf"^{side}_tokenizer: .* got {type(other).__name__} \(is_fast=False\)"):
        align("Hello", **tokenizers)
    with pytest.raises(TypeError, match=rf"^{side}_tokenizer: "):
        align_batch(["Hello"], **tokenizers)


# --------------------------------------------------------------------------------------- integration: zoo

FACTS = (
    "The Eiffel Tower is in Paris, France, and was completed in 1889. Mount Everest, at 8,849 metres, is the "
    "highest mountain above sea level. Water boils at 100 degrees Celsius at sea level. The Pacific is the "
    "largest ocean on Earth. William Shakespeare wrote Hamlet around 1600. Tokyo (東京) is the capital of Japan, "
    "and Zürich is the largest city in Switzerland. The speed of light is about 299,792 km/s."
)
ZOO_PAIRS = [
    ("smollm2-135m-instruct", "gemma3-270m"),
    ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"),
    ("gemma3-270m", "qwen2.5-coder-0.5b-instruct"),
    ("smollm2-135m-instruct", "smollm2-135m-instruct"),
]


@functools.cache
def _load_zoo_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def zoo_tokenizer(name: str):
    # The converted folder under KVPROJ_HOME (default ~/.cache/kvproj), complete only with its marker.
    path = zoo.converted_dir(name)
    if not zoo.is_converted(name):
        pytest.skip(f"zoo model {name} not converted at {path} (KVPROJ_HOME={zoo.kvproj_home()})")
    return _load_zoo_tokenizer(path)


def test_zoo_tokenizer_follows_kvproj_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVPROJ_HOME", str(tmp_path))
    with pytest.raises(pytest.skip.Exception, match="not converted at") as info:
        zoo_tokenizer("smollm2-135m-instruct")
    assert str(tmp_path / "zoo" / "smollm2-135m-instruct") in str(info.value)
    # A converted folder there is what gets loaded: a tiny tokenizer stands in for the real one.
    folder = tmp_path / "zoo" / "smollm2-135m-instruct"
    fast("char_level").save_pretrained(folder)
    entry = zoo.get_entry("smollm2-135m-instruct")
    marker = {"format": zoo.MARKER_FORMAT, "sha256": entry.sha256}
    (folder / zoo.MARKER_FILENAME).write_text(json.dumps(marker))
    assert zoo_tokenizer("smollm2-135m-instruct").get_vocab() == fast("char_level").get_vocab()


@pytest.mark.integration
@pytest.mark.parametrize(("source_name", "target_name"), ZOO_PAIRS, ids=[f"{s}->{t}" for s, t in ZOO_PAIRS])
def test_zoo_tokenizers_align(source_name: str, target_name: str, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source, target = zoo_tokenizer(source_name), zoo_tokenizer(target_name)
    for text in [FACTS, *TEXTS]:
        alignment = align(text, source, target)
        check_alignment(alignment, source, target)
        assert alignment.stats()["unaligned_target"] == 0
    alignment = align(FACTS, source, target)
    logger.warning("%s -> %s on FACTS: %s", source_name, target_name, alignment.stats())
    if source_name == target_name:
        assert alignment.identity and alignment.one_to_one_share == 1.0
    else:
        # Related BPE vocabularies agree on most English words; a collapse here means the span rule broke.
        assert 0.6 < alignment.one_to_one_share < 1.0
