"""From (context, question, answer) text to paired token ids for source and target, with the alignment that
says which source cache position stands in for each target prefix position; and collation into padded batches.

Layout of one example (target side):  prefix = head + context  |  continuation = question part + answer.
The head (BOS, or a chat template's opening) is target-native: its cache is the target's own, the same for
every example. The source reads its own head + the same context text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from kvproj.align import align

_CONTEXT, _QUESTION = "\x00KVPROJ_CONTEXT\x00", "\x00KVPROJ_QUESTION\x00"


@dataclass
class SideFormat:
    """How one model reads a prompt: token ids of the head, and the text around the question."""

    head_ids: list[int]
    middle: str  # text between the context and the question
    tail: str  # text after the question, before the answer

    @classmethod
    def build(cls, tokenizer: Any, chat_template: bool, question_template: str) -> SideFormat:
        """Plain: BOS (if the tokenizer has one, always explicit) + context + "\\nQuestion: ...\\nAnswer:".

        Chat: the model's own chat template around one user message "context\\n\\nquestion", split at the
        context and question so the context text is shared by both models and aligned by characters.
        """
        if chat_template and getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": f"{_CONTEXT}\n\n{_QUESTION}"}],
                tokenize=False,
                add_generation_prompt=True,
            )
            head, rest = rendered.split(_CONTEXT)
            middle, tail = rest.split(_QUESTION)
            head_ids = tokenizer(head, add_special_tokens=False).input_ids
            return cls(head_ids=head_ids, middle=middle, tail=tail)
        if chat_template:
            raise ValueError(
                f"pair.chat_template: true, but the tokenizer {type(tokenizer).__name__} has no chat template; "
                "set pair.chat_template: false for base models"
            )
        bos = tokenizer.bos_token_id
        before, after = question_template.split("{question}")
        return cls(head_ids=[bos] if bos is not None else [], middle=before, tail=after)


@dataclass
class EncodedExample:
    id: str
    source_ids: list[int]
    target_prefix_ids: list[int]
    align_index: list[int]  # per target prefix position: source position (unpadded), -1 = target-native head
    continuation_ids: list[int]
    labels: list[int]  # continuation token ids where scored, -100 elsewhere
    question_len: int  # continuation[:question_len] is what the target reads before answering
    answer: str
    stream_index: int = -1


def mention(text: str, phrase: str) -> re.Match[str] | None:
    """The first whole-word occurrence of `phrase` in `text` ("DEW-6716" is not in "DEW-67165")."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text)


def context_after(context: str, answer: str, chars: int) -> str:
    """Up to `chars` characters of `context` after the answer's first whole-word mention, through the first line
    break ("DEW-6716" in "sample DEW-6716 turned blue" -> " turned bl"; at the end of a line -> "\n"); "" when the
    context does not state the answer verbatim or it ends the context."""
    found = mention(context, answer)
    if found is None:
        return ""
    after = context[found.end() : found.end() + chars]
    return after[: after.index("\n") + 1] if "\n" in after else after


def encode_example(
    example: dict[str, Any],
    source_tokenizer: Any,
    target_tokenizer: Any,
    source_format: SideFormat,
    target_format: SideFormat,
    *,
    answer_template: str = " {answer}",
    answer_end: str = "",
    answer_follow: int = 0,
    max_context_tokens: int | None = None,
    stream_index: int = -1,
) -> EncodedExample:
    """Tokenize and align one example. `example` has context, question, answer (and optionally id).

    An empty question means language modelling: the continuation is the answer text alone, every token scored.
    `answer_end` (training only) is tokenized on its own and appended to the answer's tokens, scored with them:
    the answer's tokens stay exactly those evaluation scores. `answer_follow` (training only) does the same with
    what follows the answer in the context (`context_after`).
    """
    context = example["context"]
    alignment = align(context, source_tokenizer, target_tokenizer)
    source_ctx, target_ctx = alignment.source_ids, alignment.target_ids
    last_source = alignment.last_source_index()
    if max_context_tokens is not None and len(target_ctx) > max_context_tokens:
        # keep the end of the context (nearest the question); cut both sides at the same characters
        cut = len(target_ctx) - max_context_tokens
        first_kept_source = max(last_source[cut - 1] + 1, 0)
        target_ctx, last_source = target_ctx[cut:], [max(i - first_kept_source, 0) for i in last_source[cut:]]
        source_ctx = source_ctx[first_kept_source:]
    s_head, t_head = source_format.head_ids, target_format.head_ids
    source_ids = s_head + source_ctx
    target_prefix = t_head + target_ctx
    # a target token before any source token (rare) reads the first source context token
    index = [-1] * len(t_head) + [len(s_head) + max(i, 0) for i in last_source]
    question = example.get("question") or ""
    if question:
        question_text = target_format.middle + question + target_format.tail
        question_ids = target_tokenizer(question_text, add_special_tokens=False).input_ids
    else:
        question_ids = []
    answer_ids = target_tokenizer(
        answer_template.format(answer=example["answer"]), add_special_tokens=False
    ).input_ids
    if not answer_ids:
        raise ValueError(
            f"example {example.get('id', '?')}: the answer {example['answer']!r} tokenizes to nothing"
        )
    if answer_end and question:
        answer_ids = answer_ids + target_tokenizer(answer_end, add_special_tokens=False).input_ids
    if answer_follow and question and (after := context_after(context, str(example["answer"]), answer_follow)):
        answer_ids = answer_ids + target_tokenizer(after, add_special_tokens=False).input_ids
    return EncodedExample(
        id=str(example.get("id", stream_index)),
        source_ids=source_ids,
        target_prefix_ids=target_prefix,
        align_index=index,
        continuation_ids=question_ids + answer_ids,
        labels=[-100] * len(question_ids) + answer_ids,
        question_len=len(question_ids),
        answer=example["answer"],
        stream_index=stream_index,
    )


def pad_rows(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    """Token-id rows -> one [B, T] long tensor, padded with `value` on the left (prefixes) or right."""
    tensors = [torch.tensor(r, dtype=torch.long) for r in rows]
    if not tensors:
        return torch.empty((0, 0), dtype=torch.long)
    return pad_sequence(tensors, batch_first=True, padding_value=value, padding_side="left" if left else "right")


def mask_rows(rows: list[list[int]], left: bool) -> torch.Tensor:
    """The attention mask (1 = real token) of `pad_rows(rows, ..., left)`."""
    return pad_rows([[1] * len(r) for r in rows], 0, left)


def collate(examples: list[EncodedExample], source_pad_id: int, target_pad_id: int) -> dict[str, Any]:
    """Prefixes left-padded (the continuation follows real tokens directly); continuations right-padded;
    questions alone left-padded for generation. align_index is shifted into padded source coordinates.
    `n_tokens`: the batch's real (unpadded) tokens, source context + target prefix + continuation, as a plain int
    (counted here once, so that throughput logging never sums masks on the device).
    """
    source_rows = [e.source_ids for e in examples]
    source_ids = pad_rows(source_rows, source_pad_id, left=True)
    offsets = [source_ids.shape[1] - len(r) for r in source_rows]
    index_rows = [[i + off if i >= 0 else -1 for i in e.align_index] for e, off in zip(examples, offsets)]
    questions = [e.continuation_ids[: e.question_len] for e in examples]
    return {
        "ids": [e.id for e in examples],
        "answers": [e.answer for e in examples],
        "stream_index": torch.tensor([e.stream_index for e in examples], dtype=torch.long),
        "source_ids": source_ids,
        "source_mask": mask_rows(source_rows, left=True),
        "target_prefix_ids": pad_rows([e.target_prefix_ids for e in examples], target_pad_id, left=True),
        "target_prefix_mask": mask_rows([e.target_prefix_ids for e in examples], left=True),
        "align_index": pad_rows(index_rows, -1, left=True),
        "continuation_ids": pad_rows([e.continuation_ids for e in examples], target_pad_id, left=False),
        "continuation_mask": mask_rows([e.continuation_ids for e in examples], left=False),
        "labels": pad_rows([e.labels for e in examples], -100, left=False),
        "question_ids": pad_rows(questions, target_pad_id, left=True),
        "question_mask": mask_rows(questions, left=True),
        "n_tokens": sum(len(e.source_ids) + len(e.target_prefix_ids) + len(e.continuation_ids) for e in examples),
    }


@dataclass
class PairCodec:
    """Everything needed to turn raw examples into padded batches for one (source, target) pair."""

    source_tokenizer: Any
    target_tokenizer: Any
    source_format: SideFormat
    target_format: SideFormat
    answer_template: str = " {answer}"
    max_context_tokens: int | None = None
    answer_end: str = ""
    answer_follow: int = 0

    def encode(self, example: dict[str, Any], stream_index: int = -1) -> EncodedExample:
        return encode_example(
            example,
            self.source_tokenizer,
            self.target_tokenizer,
            self.source_format,
            self.target_format,
            answer_template=self.answer_template,
            answer_end=self.answer_end,
            answer_follow=self.answer_follow,
            max_context_tokens=self.max_context_tokens,
            stream_index=stream_index,
        )

    def collate(self, examples: list[EncodedExample]) -> dict[str, Any]:
        return collate(examples, self.source_tokenizer.pad_token_id, self.target_tokenizer.pad_token_id)

    def batches(self, examples: list[dict[str, Any]], batch_size: int):
        """Encoded, collated batches of `examples` in order (with the raw examples of each batch)."""
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            yield chunk, self.collate([self.encode(e, stream_index=i + j) for j, e in enumerate(chunk)])
