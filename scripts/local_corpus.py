"""A general-text corpus made offline from what every Python environment holds: the long descriptions of the
installed packages (their METADATA) and the Python language reference (pydoc_data.topics).

    python scripts/local_corpus.py OUT.jsonl [--min-chars 200] [--max-chars 900] [--overwrite]

One JSON object per line, {"text": ...}: prose paragraphs only (blank-line separated; code, doctest, tables, lists,
headings, paragraphs opening with a link and symbol-heavy ones dropped), joined up to --max-chars. For `data.text.files`
(issue 10, lever 2: dense distillation on general text). Deterministic for a given environment; the summary line
counts texts, characters and sources.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
from pathlib import Path

_WORD = re.compile(r"[A-Za-z][a-z]+")


def is_prose(paragraph: str) -> bool:
    """Sentences of words: mostly letters, a few long words, not markup or code."""
    text = paragraph.strip()
    if len(text) < 40 or text[0] in "#*-|>`.=:[<{+!" or text.startswith(("    ", "\t", "http")):
        return False
    if "```" in text or "::" in text or ">>>" in text or "$ " in text:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return letters / len(text) > 0.85 and len(_WORD.findall(text)) >= 8 and text.rstrip()[-1:] in '.!?)"'


def paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if is_prose(p)]


def sources() -> list[tuple[str, str]]:
    """(name, text) of every installed distribution's description and every language-reference topic, sorted."""
    found = []
    for dist in importlib.metadata.distributions():
        body = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else ""
        name = dist.metadata.get("Name") or "?"
        if body:
            found.append((f"pkg:{name.lower()}", body))
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it
        topics = {}
    found += [(f"pydoc:{key}", value) for key, value in topics.items()]
    return sorted(set(found))


def build(min_chars: int, max_chars: int) -> list[str]:
    texts = []
    for _, body in sources():
        current = ""
        for p in paragraphs(body):
            if current and len(current) + 1 + len(p) > max_chars:
                if len(current) >= min_chars:
                    texts.append(current)
                current = ""
            current = f"{current} {p}".strip() if current else p[:max_chars]
        if len(current) >= min_chars:
            texts.append(current)
    return list(dict.fromkeys(texts))  # the same README shipped twice counts once


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--min-chars", type=int, default=200)
    parser.add_argument("--max-chars", type=int, default=900)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if not 0 < args.min_chars <= args.max_chars:
        raise SystemExit(f"--min-chars {args.min_chars} / --max-chars {args.max_chars}: need 0 < min <= max")
    if args.out.exists() and not args.overwrite:
        raise SystemExit(f"{args.out}: exists; pass --overwrite to replace it")
    texts = build(args.min_chars, args.max_chars)
    if not texts:
        raise SystemExit("no prose paragraphs found in this environment's package metadata or pydoc topics")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    print(f"{len(texts)} texts, {sum(map(len, texts)):,} characters -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
