"""Token alignment between a source and a target tokenizer on the same text, by character spans.

Owns the span rule below and the index tensors that gather source cache positions for target tokens.

Span rule (what "the characters a token covers" means here), applied to each token's offsets from a fast
tokenizer (``return_offsets_mapping=True``), on both sides:

1. Zero-width offsets (special tokens added by the post-processor, e.g. BOS/EOS at ``(0, 0)``) cover no
   character: such a token maps to no token on the other side and counts as unaligned.
2. A token made only of SentencePiece's ``"▁"`` whose offsets cover no whitespace is the space that
   Metaspace prepends to the first word (``prepend_scheme="first"``); it covers no character of the text
   and is made zero-width.
3. Leading whitespace is removed from a span that also holds non-whitespace: byte-level BPE (``" world"``
   with ``trim_offsets=False``) and SentencePiece (``"▁world"``) put the preceding space inside the word's
   offsets, and a tokenizer that gives that space its own token would otherwise overlap it spuriously.
   Whitespace-only tokens (``" "``, ``"\\n\\n"``, ``"▁▁"``) keep their span.

Spans are half-open ``[start, end)`` and two tokens overlap when they share a character. A target token
that overlaps nothing after rule 3 but has characters falls back to the offsets before rule 3 (a
whitespace-only target token whose space the source folded into the next word). Bytes of one multi-byte
character split across tokens give those tokens the same one-character span, so they overlap each other's
counterparts: that is honest, not a bug.
"""

from __future__ import annotations

import hashlib
import weakref
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Alignment", "align", "align_batch", "alignment_index_tensor", "same_tokenizer"]

Span = tuple[int, int]

_METASPACE = "\u2581"


@dataclass
class Alignment:
    """Which source tokens cover the characters of each target token, for one text.

    Attributes:
        text: the text both tokenizers encoded.
        source_ids: source token ids, in order.
        target_ids: target token ids, in order.
        source_spans: per source token, ``(start, end)`` character offsets after the span rule
            (module docstring); ``start == end`` for tokens that cover no character.
        target_spans: the same for the target tokens.
        target_to_source: per target token, the sorted indices of the source tokens that share a character
            with it; empty for an unaligned target token.
        identity: True when both sides are the same tokenizer and token ``i`` is token ``i``.
    """

    text: str
    source_ids: list[int]
    target_ids: list[int]
    source_spans: list[Span]
    target_spans: list[Span]
    target_to_source: list[list[int]]
    identity: bool = False

    @property
    def source_to_target(self) -> list[list[int]]:
        """Per source token, the sorted indices of the target tokens that map to it."""
        inverse: list[list[int]] = [[] for _ in self.source_ids]
        for target_index, sources in enumerate(self.target_to_source):
            for source_index in sources:
                inverse[source_index].append(target_index)
        return inverse

    @property
    def one_to_one_share(self) -> float:
        """Share of target tokens mapped to exactly one source token that maps only to them (1.0 if none)."""
        if not self.target_ids:
            return 1.0
        inverse = self.source_to_target
        one_to_one = sum(
            1
            for target_index, sources in enumerate(self.target_to_source)
            if len(sources) == 1 and inverse[sources[0]] == [target_index]
        )
        return one_to_one / len(self.target_ids)

    def last_source_index(self) -> list[int]:
        """Per target token, the source position whose cache has read it; -1 where no source token has.

        That is the last source token (with characters) whose span starts before the target token's end, so
        it may also have read the rest of the source token that holds the target token's last character.
        A causal target token at ``i`` has read target tokens ``0..i``, so the result is made non-decreasing:
        a zero-width target token (BOS/EOS) takes its predecessor's value, or -1 at the start.
        """
        if self.identity:
            return list(range(len(self.target_ids)))
        with_chars = sorted((start, index) for index, (start, end) in enumerate(self.source_spans) if end > start)
        starts = [start for start, _ in with_chars]
        # prefix_max[k] = the largest source index among the k+1 earliest-starting source tokens
        prefix_max: list[int] = []
        for _, index in with_chars:
            prefix_max.append(max(index, prefix_max[-1]) if prefix_max else index)
        result: list[int] = []
        previous = -1
        for start, end in self.target_spans:
            current = -1
            if end > start:
                count = bisect_left(starts, end)  # source tokens starting before `end`
                if count:
                    current = prefix_max[count - 1]
            previous = max(previous, current)
            result.append(previous)
        return result

    def stats(self) -> dict[str, float | int]:
        """Counts and shares for logging: how close to one-to-one the two tokenizations are on this text."""
        n_target = len(self.target_ids)
        return {
            "target_tokens": n_target,
            "source_tokens": len(self.source_ids),
            "one_to_one_share": self.one_to_one_share,
            "unaligned_target": sum(1 for sources in self.target_to_source if not sources),
            "mean_sources_per_target": (
                sum(len(sources) for sources in self.target_to_source) / n_target if n_target else 0.0
            ),
        }


# Fingerprints are cached per tokenizer object (with its length, which add_tokens changes) because a 262k
# vocabulary takes ~0.1 s to serialize and align() checks identity on every call.
_FINGERPRINTS: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()


def _fingerprint(tokenizer: Any) -> str:
    size = len(tokenizer)
    cached = _FINGERPRINTS.get(tokenizer)
    if cached is not None and cached[0] == size:
        return cached[1]
    backend = tokenizer.backend_tokenizer
    digest = hashlib.sha256()
    # Everything that decides ids and offsets; the decoder, padding and truncation do not.
    for component in (backend.normalizer, backend.pre_tokenizer, backend.post_processor, backend.model):
        digest.update(component.__getstate__() if component is not None else b"null")
        digest.update(b"\0")
    for token_id, token in sorted(backend.get_added_tokens_decoder().items()):
        digest.update(f"{token_id}:{token!r}\0".encode())
    _FINGERPRINTS[tokenizer] = (size, digest.hexdigest())
    return _FINGERPRINTS[tokenizer][1]


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` give the same ids and offsets for any text, so alignment is the identity.

    Compares vocabulary, merges, added tokens, normalizer, pre-tokenizer and post-processor of fast
    tokenizers. Two distinct slow tokenizers are never called the same, since their rules cannot be read.
    """
    if a is b:
        return True
    if not (getattr(a, "is_fast", False) and getattr(b, "is_fast", False)):
        return False
    if a.backend_tokenizer is b.backend_tokenizer:
        return True
    if len(a) != len(b):  # cheap rejection of every cross-family pair
        return False
    return _fingerprint(a) == _fingerprint(b)


def _require_fast(tokenizer: Any, side: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{side}_tokenizer: alignment needs character offsets (return_offsets_mapping=True), which only fast "
            f"tokenizers give, got {type(tokenizer).__name__} (is_fast=False); load it with "
            f"AutoTokenizer.from_pretrained(..., use_fast=True) or wrap a `tokenizers.Tokenizer` in "
            f"PreTrainedTokenizerFast(tokenizer_object=...)"
        )


def _encode(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[Any]:
    """One `tokenizers.Encoding` per text, through the wrapper so its special-token settings apply."""
    batch = tokenizer(
        texts,
        add_special_tokens=add_special_tokens,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,  # long texts are fine here: nothing is fed to a model
    )
    return batch.encodings


def _raw_spans(text: str, encoding: Any) -> list[Span]:
    """Tokenizer offsets with rules 1-2 of the span rule applied (no character for specials and phantom ▁)."""
    spans: list[Span] = []
    for token, (start, end) in zip(encoding.tokens, encoding.offsets, strict=True):
        covered = text[start:end]
        if (
            end > start
            and token.strip(_METASPACE) == ""
            and _METASPACE not in covered
            and not any(c.isspace() for c in covered)
        ):
            end = start  # the prepended "▁" of SentencePiece stands for a space that is not in the text
        spans.append((start, max(start, end)))
    return spans


def _core_span(text: str, span: Span) -> Span:
    """Rule 3: drop leading whitespace unless the span is whitespace only."""
    start, end = span
    stripped = start
    while stripped < end and text[stripped].isspace():
        stripped += 1
    return span if stripped == end else (stripped, end)


class _SpanIndex:
    """Source spans sorted by start, to find the ones overlapping a target span without a full scan."""

    def __init__(self, spans: Sequence[Span]) -> None:
        self.spans = spans
        self.order = sorted(
            (index for index, (start, end) in enumerate(spans) if end > start), key=lambda i: spans[i][0]
        )
        self.starts = [spans[index][0] for index in self.order]
        # A source span starting at or before `start - longest` ends at or before `start`: no overlap.
        self.longest = max((spans[index][1] - spans[index][0] for index in self.order), default=0)

    def overlapping(self, span: Span) -> list[int]:
        start, end = span
        if end <= start:
            return []
        low = bisect_left(self.starts, start - self.longest + 1)
        high = bisect_left(self.starts, end)
        return sorted(index for index in self.order[low:high] if self.spans[index][1] > start)


def _build(text: str, source: Any, target: Any) -> Alignment:
    source_raw, target_raw = _raw_spans(text, source), _raw_spans(text, target)
    source_spans = [_core_span(text, span) for span in source_raw]
    target_spans = [_core_span(text, span) for span in target_raw]
    core_index, raw_index = _SpanIndex(source_spans), _SpanIndex(source_raw)
    target_to_source = []
    for core, raw in zip(target_spans, target_raw, strict=True):
        sources = core_index.overlapping(core)
        if not sources:
            sources = raw_index.overlapping(raw)
        target_to_source.append(sources)
    return Alignment(
        text=text,
        source_ids=list(source.ids),
        target_ids=list(target.ids),
        source_spans=source_spans,
        target_spans=target_spans,
        target_to_source=target_to_source,
    )


def _identity(text: str, encoding: Any) -> Alignment:
    spans = [_core_span(text, span) for span in _raw_spans(text, encoding)]
    return Alignment(
        text=text,
        source_ids=list(encoding.ids),
        target_ids=list(encoding.ids),
        source_spans=spans,
        target_spans=list(spans),
        target_to_source=[[index] for index in range(len(spans))],
        identity=True,
    )


def align_batch(
    texts: list[str], source_tokenizer: Any, target_tokenizer: Any, *, add_special_tokens: bool = False
) -> list[Alignment]:
    """Align every text; one batched encode per side, and one encode in all when the tokenizers are the same.

    Args:
        texts: the texts, each encoded whole by both tokenizers.
        source_tokenizer: fast tokenizer of the model whose cache is read.
        target_tokenizer: fast tokenizer of the model that receives it.
        add_special_tokens: let each tokenizer add its special tokens (BOS/EOS); they cover no character
            and stay unaligned unless the tokenizers are the same.
    """
    _require_fast(source_tokenizer, "source")
    _require_fast(target_tokenizer, "target")
    texts = list(texts)
    if not texts:
        return []
    if same_tokenizer(source_tokenizer, target_tokenizer):
        encodings = _encode(target_tokenizer, texts, add_special_tokens)
        return [_identity(text, encoding) for text, encoding in zip(texts, encodings, strict=True)]
    source_encodings = _encode(source_tokenizer, texts, add_special_tokens)
    target_encodings = _encode(target_tokenizer, texts, add_special_tokens)
    return [
        _build(text, source, target)
        for text, source, target in zip(texts, source_encodings, target_encodings, strict=True)
    ]


def align(
    text: str, source_tokenizer: Any, target_tokenizer: Any, *, add_special_tokens: bool = False
) -> Alignment:
    """Align one text: for each target token, the source tokens covering the same characters.

    Args:
        text: the text both tokenizers encode.
        source_tokenizer: fast tokenizer of the model whose cache is read.
        target_tokenizer: fast tokenizer of the model that receives it.
        add_special_tokens: let each tokenizer add its special tokens (BOS/EOS); see `align_batch`.
    """
    return align_batch([text], source_tokenizer, target_tokenizer, add_special_tokens=add_special_tokens)[0]


def alignment_index_tensor(alignments: Sequence[Alignment], target_len: int, pad_value: int = -1) -> torch.Tensor:
    """Stack `Alignment.last_source_index` into a right-padded ``[B, target_len]`` LongTensor.

    Entry ``[b, i]`` is the source position to gather for target token ``i`` of example ``b``; ``-1`` (no
    source token has read it yet) and ``pad_value`` must be masked or clamped before ``torch.gather``.
    Positions count source tokens as `align` encoded them: shift them if the source input gets extra tokens.
    """
    if target_len < 0:
        raise ValueError(f"target_len must be >= 0, got {target_len}")
    index = torch.full((len(alignments), target_len), pad_value, dtype=torch.long)  # [B, target_len]
    for row, alignment in enumerate(alignments):
        positions = alignment.last_source_index()
        if len(positions) > target_len:
            raise ValueError(
                f"target_len={target_len} is shorter than alignment {row}, which has {len(positions)} target "
                f"tokens; pass target_len >= {len(positions)} or align truncated texts"
            )
        index[row, : len(positions)] = torch.tensor(positions, dtype=torch.long)
    return index
