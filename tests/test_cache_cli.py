"""`python -m kvproj cache save / load / info` on tiny models: a saved cache continues exactly like the model
re-reading the text, another geometry is refused with what differs, and nothing is overwritten by accident."""

from __future__ import annotations

import json
import re

import pytest

from kvproj.cli import main

TEXT = "Mara Quell was born in Tirsk. Mara Quell was born in"


@pytest.fixture()
def saved(tmp_path):
    path = tmp_path / "cache.safetensors"
    assert main(["cache", "save", "--model", "tiny:llama", "--text", TEXT, "--output", str(path)]) == 0
    return path


def errors(capsys, caplog) -> str:
    """What a command logged: on stderr, or (when kvproj's logger was set up in a fixture) in caplog."""
    return capsys.readouterr().err + caplog.text


def test_load_continues_like_rereading(saved, capsys):
    capsys.readouterr()
    code = main(
        ["cache", "load", "--file", str(saved), "--model", "tiny:llama", "--check", "--max_new_tokens", "6"]
    )
    assert code == 0
    out = capsys.readouterr().out
    found = re.search(r"max logit difference (\S+) .*; (\d+)/(\d+) greedy tokens agree", out)
    assert found, out
    assert float(found.group(1)) < 1e-4
    assert found.group(2) == found.group(3) == "6"


def test_load_with_prompt(saved, capsys):
    code = main(["cache", "load", "--file", str(saved), "--model", "tiny:llama", "--prompt", " a", "--check",
                 "--max_new_tokens", "4"])  # fmt: skip
    assert code == 0
    assert "4/4 greedy tokens agree" in capsys.readouterr().out


def test_info_prints_metadata(saved, capsys):
    capsys.readouterr()
    assert main(["cache", "info", str(saved)]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["model"]["name"] == "tiny:llama"
    assert meta["length"] == len(TEXT.encode())  # the tiny models' byte tokenizer: one token per byte
    assert meta["batch_size"] == 1


def test_other_geometry_refused(saved, capsys, caplog):
    assert main(["cache", "load", "--file", str(saved), "--model", "tiny:qwen2"]) == 2
    err = errors(capsys, caplog)
    assert "cannot be loaded into 'tiny:qwen2'" in err
    assert "num_layers" in err


def test_save_refuses_to_overwrite(saved, capsys, caplog):
    before = saved.read_bytes()
    assert main(["cache", "save", "--model", "tiny:llama", "--text", "other", "--output", str(saved)]) == 2
    assert "pass --overwrite" in errors(capsys, caplog)
    assert saved.read_bytes() == before
    assert main(["cache", "save", "--model", "tiny:llama", "--text", "other", "--output", str(saved),
                 "--overwrite"]) == 0  # fmt: skip
    assert saved.read_bytes() != before


def test_save_needs_exactly_one_text(tmp_path, capsys, caplog):
    out = str(tmp_path / "c.safetensors")
    assert main(["cache", "save", "--model", "tiny:llama", "--output", out]) == 2
    assert "exactly one of --text" in errors(capsys, caplog)
    assert not (tmp_path / "c.safetensors").exists()
