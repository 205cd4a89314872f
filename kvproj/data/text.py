"""Text sources for general-text training: local files, `datasets` builders, and
`sample_corpus`, which makes a broad-vocabulary corpus offline by sampling from a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from kvproj.atomic import atomic_open

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".jsonl")


def lm_example(text: str, fraction: float, example_id: str) -> dict[str, Any]:
    """A language-modelling example from one text: the context is its first `fraction` of characters, cut back to
    the last space before that point (if there is one), the answer the rest; no question."""
    cut = int(len(text) * fraction)
    space = text.rfind(" ", 0, cut)
    cut = space if space > 0 else cut
    return {"id": example_id, "context": text[:cut], "question": "", "answer": text[cut:].lstrip()}


# ----------------------------------------------------------------------------------------------------------------
# Local files


def iter_local_texts(path: str | Path, *, field: str = "text", start: int = 0) -> Iterator[str]:
    """Documents from a local file or folder, skipping the first `start`.

    Rules:
        `.txt`: one document per non-empty line (whitespace-only lines are skipped; lines are stripped of their
        line ending only). `.jsonl`: one JSON object per non-empty line; the document is its `field` (a string).
        A folder: every `.txt` / `.jsonl` file under it, recursively, in sorted path order.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: an unsupported suffix, an empty folder, or a `.jsonl` line that is not JSON, not an object,
            lacks `field` or holds a non-string there (the message names `file:line` and the field).
    """
    if start < 0:
        raise ValueError(f"iter_local_texts start must be >= 0, got {start}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"text source {str(path)!r} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise ValueError(f"text source {str(path)!r}: folder has no {' or '.join(TEXT_SUFFIXES)} files")
    elif path.suffix in TEXT_SUFFIXES:
        files = [path]
    else:
        raise ValueError(
            f"text source {str(path)!r}: unsupported file type {path.suffix!r}; valid: "
            f"{', '.join(TEXT_SUFFIXES)} or a folder of them"
        )
    skip = start
    for file in files:
        for text in _iter_file(file, field):
            if skip:
                skip -= 1
                continue
            yield text


def json_objects(path: Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, str, dict]]:
    """(line number, "file:line", object) for each non-blank line of a JSONL file; `error` names file:line for
    invalid JSON or a line that is not an object."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise error(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield lineno, where, row


def _iter_file(path: Path, field: str) -> Iterator[str]:
    if path.suffix == ".txt":
        with path.open(encoding="utf-8") as f:
            yield from (line.rstrip("\r\n") for line in f if line.strip())
        return
    for _, where, row in json_objects(path):
        if field not in row:
            raise ValueError(f"{where}: missing field {field!r} (set `field=` to one of {sorted(row)})")
        if not isinstance(row[field], str):
            raise ValueError(f"{where}: field {field!r} must be a string, got {type(row[field]).__name__}")
        yield row[field]


# ----------------------------------------------------------------------------------------------------------------
# datasets builders


def iter_hf_dataset(
    name: str,
    *,
    split: str = "train",
    field: str = "text",
    config: str | None = None,
    streaming: bool = True,
    data_files: Any = None,
) -> Iterator[str]:
    """Texts from `datasets.load_dataset(name, config, split=..., streaming=..., data_files=...)`.

    Works offline with the local builders, e.g. `iter_hf_dataset("json", data_files="corpus.jsonl")` or
    `iter_hf_dataset("text", data_files="books.txt")`. Records whose `field` is empty or None are skipped.

    Raises:
        FileNotFoundError: `data_files` were given and are missing.
        ConnectionError: the dataset could not be loaded (hub unreachable or unknown name); the message names the
            dataset and suggests a local file.
        ValueError: records lack `field`.
    """
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=streaming, data_files=data_files)
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, DatasetNotFound..)
        if isinstance(err, ValueError) and "split" in str(err).lower():
            raise ValueError(f"dataset {name!r}: split {split!r} is not available ({err})") from err
        if data_files is not None and isinstance(err, FileNotFoundError):
            raise FileNotFoundError(f"dataset {name!r}: data_files {data_files!r} not found ({err})") from err
        raise ConnectionError(
            f"dataset {name!r} (config {config!r}, split {split!r}) could not be loaded: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Offline or the Hugging Face "
            f"Hub unreachable? Use a local file instead: iter_local_texts('corpus.jsonl'), "
            f"iter_hf_dataset('json', data_files='corpus.jsonl'), or make one with sample_corpus(...)."
        ) from err
    for i, row in enumerate(ds):
        if field not in row:
            raise ValueError(f"dataset {name!r} record {i}: missing field {field!r} (available: {sorted(row)})")
        text = row[field]
        if text:
            yield str(text)


# ----------------------------------------------------------------------------------------------------------------
# Sampled corpus

# Varied openers: topics, genres, registers. The model continues each one; the opener is part of the text.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "The history of the lighthouse begins",
    "In the kitchen, my grandmother always",
    "Scientists studying deep-sea vents have found",
    "Dear diary, today was",
    "The quarterly report shows that revenue",
    "Once upon a time, in a village at the edge of a forest,",
    "To install the package, first",
    "The match ended in a draw after",
    "A good sourdough starter needs",
    "The city council voted last night to",
    "Photosynthesis is the process by which",
    "When I was seven years old, I",
    "The detective looked at the muddy boots and said",
    "Our hiking trail started at the river and",
    "The main causes of the French Revolution were",
    "Here is a simple recipe for vegetable soup:",
    "The new smartphone features a",
    "She opened the letter and read:",
    "In mathematics, a prime number is",
    "The museum's new exhibition explores",
    "Customer review: I bought this blender because",
    "The spaceship drifted silently past",
    "Tips for a job interview: first,",
    "The history of jazz in New Orleans",
    "Volcanoes form when",
    "My favorite book as a child was",
    "The ancient Romans built roads that",
    "Breaking news: a powerful storm",
    "The knight drew his sword and",
    "How to care for a houseplant:",
    "The economy of a small island depends on",
    "In a quiet laboratory, the robot",
    "The poem describes autumn as",
    "Learning a second language is easier when",
    "The train was late again, so",
    "Honeybees communicate by",
    "The rules of chess are simple:",
    "Yesterday the stock market",
    "The old sailor told us about",
    "A healthy breakfast might include",
    "The wedding took place in a small chapel",
    "Climate change affects coastal towns by",
    "The function returns an error when",
    "In the year 2150, cities",
    "The best way to learn to swim is",
    "The farmer looked at the dry fields and",
    "Medieval castles were designed to",
    "The festival of lights is celebrated",
    "My neighbor's dog barks every time",
    "A brief guide to the planets of the solar system:",
    "The painter mixed blue and yellow to",
    "Electric cars are becoming popular because",
    "The ghost in the attic",
    "Dinosaurs lived on Earth for",
    "The chef tasted the sauce and",
    "Writing a good essay starts with",
    "The mountain village was cut off by snow, and",
    "Vaccines work by",
    "The orchestra tuned their instruments while",
    "Welcome to our hotel! During your stay,",
    "The river flooded the valley in",
    "A short biography: she was born in",
    "The ancient library of Alexandria",
    "The football coach shouted at the players to",
    "Bread rises because",
    "On the first day of school, the teacher",
    "The treaty was signed in",
    "The wizard raised his staff and",
    "Instructions: mix the flour and sugar, then",
    "Our solar panels produce",
    "The detective novel opens with a murder in",
    "Migrating birds find their way by",
    "The startup raised money to build",
    "The grandmother's garden was full of",
    "Trees communicate through their roots by",
    "The pirate ship appeared on the horizon,",
    "Frequently asked questions: how do I reset",
    "The desert at night is",
    "The invention of the printing press",
    "A letter to the editor: I am writing to complain about",
    "The marathon runner crossed the finish line and",
    "Coffee was first discovered",
    "The apartment had a small balcony overlooking",
    "The senator's speech focused on",
    "Penguins survive the Antarctic winter by",
    "The jazz club was crowded, and the saxophone",
    "In this tutorial, we will build",
    "The fisherman pulled up his net and found",
    "The history of the bicycle",
    "The children built a snowman and",
    "Earthquakes are measured using",
    "The queen's garden party was",
    "A traveler's guide to the old town:",
    "The recipe calls for three eggs,",
    "The scientist wrote in her notebook:",
    "The last bus of the night",
    "The hospital opened a new wing for",
    "Ocean tides are caused by",
    "The village blacksmith made",
    "The film tells the story of a young",
    "The map showed a hidden path to",
    "Our team meeting covered three topics:",
)


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _corpus_key(model_name: str, n_texts: int, seed: int, max_new_tokens: int, batch_size: int, prompts) -> dict:
    prompts_sha = hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()[:16]
    return {
        "model": model_name,
        "n_texts": n_texts,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,  # sampling depends on batch composition, so it is part of the key
        "prompts_sha256": prompts_sha,
        "temperature": _TEMPERATURE,
        "top_p": _TOP_P,
    }


_TEMPERATURE = 0.9
_TOP_P = 0.95


def meta_path(out_path: str | Path) -> Path:
    """The sidecar JSON recording what made a `sample_corpus` file."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".meta.json")


def _atomic_write(path: Path, lines: Iterable[str]) -> None:
    with atomic_open(path, "w") as f:
        for line in lines:
            f.write(line)


def _reusable(out_path: Path, key: dict) -> bool:
    meta = meta_path(out_path)
    if not (out_path.is_file() and meta.is_file()):
        return False
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if recorded.get("key") != key or not recorded.get("complete"):
        return False
    with out_path.open(encoding="utf-8") as f:
        n_lines = sum(1 for line in f if line.strip())
    digest = hashlib.sha256(out_path.read_bytes()).hexdigest()
    return n_lines == key["n_texts"] and digest == recorded.get("sha256")


def sample_corpus(
    model_name: str,
    *,
    n_texts: int,
    seed: int,
    out_path: str | Path,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    prompts: list[str] | None = None,
) -> Path:
    """Write `n_texts` distinct texts sampled from `model_name` to a JSONL file and return its path.

    Each line is `{"text": opener + continuation, "prompt": opener, "seed": seed}`. Openers cycle through a seeded
    shuffle of `prompts` (default: `DEFAULT_PROMPTS`, ~100 topics and genres). Sampling uses temperature 0.9,
    top_p 0.95 and `seed`, so the same arguments give the same file. Texts are deduplicated after normalizing
    case and whitespace; an empty continuation is dropped. The file and its sidecar `<out>.meta.json` are written
    atomically (temp file + rename); an existing file whose sidecar records the same model, n_texts, seed,
    max_new_tokens, batch_size and prompts (and whose checksum matches) is reused without loading the model.

    Args:
        model_name: Anything `kvproj.models.load_model` accepts: a zoo name ("smollm2-135m-instruct"), a local
            folder, a hub id, or "tiny:llama" for tests.
        n_texts: Number of distinct texts to write.
        seed: Seeds the prompt order and the sampling.
        out_path: The JSONL file to write.
        max_new_tokens: Tokens sampled per text.
        batch_size: Prompts sampled together (part of the cache key: outputs depend on it).
        prompts: Openers to continue; default `DEFAULT_PROMPTS`.

    Raises:
        ValueError: bad arguments, or fewer than `n_texts` distinct texts after many attempts.
    """
    if n_texts < 1:
        raise ValueError(f"sample_corpus n_texts must be >= 1, got {n_texts}")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(
            f"sample_corpus max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}"
        )
    prompts = list(DEFAULT_PROMPTS if prompts is None else prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("sample_corpus prompts must be a non-empty list of non-empty strings")
    out_path = Path(out_path)
    key = _corpus_key(model_name, n_texts, seed, max_new_tokens, batch_size, prompts)
    if _reusable(out_path, key):
        log.info("sample_corpus: reusing %s (%d texts)", out_path, n_texts)
        return out_path

    from kvproj.models import load_model

    loaded = load_model(model_name)
    started = time.perf_counter()
    rows = _sample(loaded, n_texts, seed, max_new_tokens, batch_size, prompts)
    seconds = time.perf_counter() - started
    lines = [json.dumps({"text": t, "prompt": p, "seed": seed}, ensure_ascii=False) + "\n" for t, p in rows]
    _atomic_write(out_path, lines)
    digest = hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
    meta = {"key": key, "complete": True, "count": len(lines), "sha256": digest}
    _atomic_write(meta_path(out_path), [json.dumps(meta, indent=2, sort_keys=True) + "\n"])
    log.info(
        "sample_corpus: wrote %d texts to %s (sampled in %.0f s: %.1f texts/s, batch %d, %d new tokens each)",
        len(lines), out_path, seconds, len(lines) / max(seconds, 1e-9), batch_size, max_new_tokens,
    )  # fmt: skip
    return out_path


def _sample(loaded, n_texts: int, seed: int, max_new_tokens: int, batch_size: int, prompts: list[str]):
    from rich.progress import Progress

    from kvproj.cache import generate_from_ids

    model, tokenizer = loaded.model, loaded.tokenizer
    device = loaded.device
    order_rng = random.Random(f"sample_corpus/{seed}")
    order: list[str] = []
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    max_batches = 4 * (n_texts // batch_size + 1) + 10  # dedup may drop some; give up rather than loop forever
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), Progress(transient=True) as progress:
        task = progress.add_task("sampling corpus", total=n_texts)
        for batch_index in range(max_batches):
            if len(rows) >= n_texts:
                break
            while len(order) < (batch_index + 1) * batch_size:
                chunk = list(prompts)
                order_rng.shuffle(chunk)
                order.extend(chunk)
            batch_prompts = order[batch_index * batch_size : (batch_index + 1) * batch_size]
            torch.manual_seed(
                seed * 1_000_003 + batch_index
            )  # each batch's sampling is a function of (seed, batch)
            enc = tokenizer(batch_prompts, return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                new_tokens = generate_from_ids(
                    model,
                    **enc,
                    do_sample=True,
                    temperature=_TEMPERATURE,
                    top_p=_TOP_P,
                    top_k=0,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                )  # [B, T_new]
            for prompt, tokens in zip(batch_prompts, new_tokens):
                continuation = tokenizer.decode(tokens, skip_special_tokens=True)
                if not continuation.strip():
                    continue
                text = (prompt + continuation).strip()
                norm = _normalize(text)
                if norm in seen:
                    continue
                seen.add(norm)
                rows.append((text, prompt))
                progress.advance(task)
                if len(rows) == n_texts:
                    break
            log.debug("sample_corpus: batch %d, %d/%d texts", batch_index, len(rows), n_texts)
    if len(rows) < n_texts:
        raise ValueError(
            f"sample_corpus: only {len(rows)} distinct texts of n_texts={n_texts} after {max_batches} batches; "
            f"raise max_new_tokens or pass more varied prompts"
        )
    return rows
