"""Model specs and loading: `tiny:` overrides of absurd size are refused before anything is built, and no model is
ever loaded with code shipped alongside it (trust_remote_code)."""

from __future__ import annotations

from pathlib import Path

import pytest

import kvproj
from kvproj import models
from kvproj.models import TINY_FAMILIES, ModelSpec, load_model, tiny_parameter_estimate


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_tiny_parameter_estimate_is_close(family):
    actual = sum(p.numel() for p in load_model(f"tiny:{family}").model.parameters())
    assert 0.7 * actual < tiny_parameter_estimate(family) < 1.4 * actual


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_size": 1_000_000}, r"tiny overrides: hidden_size=1000000 is above 65536"),
        ({"max_position_embeddings": 10**12}, r"max_position_embeddings=1000000000000 is above 65536"),
        (
            {"n_embd": 4096, "n_layer": 48},
            r"tiny overrides \{'n_embd': 4096, 'n_layer': 48\} give 'tiny:gpt2' about .* limit of 50M",
        ),
        ({"num_hidden_layers": 0}, r"num_hidden_layers must be a whole number >= 1, got 0"),
        ({"vocab_size": "big"}, r"vocab_size must be a whole number >= 1, got 'big'"),
    ],
)
def test_absurd_tiny_overrides_are_refused_before_anything_is_built(monkeypatch, overrides, message):
    def build(*args, **kwargs):
        raise AssertionError("a tiny model config was built")

    monkeypatch.setattr(models, "tiny_config", build)
    family = "gpt2" if "n_embd" in overrides else "llama"
    with pytest.raises(ValueError, match=message):
        load_model(ModelSpec(f"tiny:{family}", tiny=overrides))


def test_tiny_overrides_within_bounds_load():
    loaded = load_model(ModelSpec("tiny:llama", tiny={"num_hidden_layers": 2, "hidden_size": 32}))
    assert loaded.geometry.num_layers == 2


def test_models_never_trust_remote_code(tmp_path, monkeypatch):
    import transformers

    tiny = load_model("tiny:llama")
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    seen = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        real = cls.from_pretrained

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code", "unset"))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    assert load_model(str(tmp_path)).source_kind == "local"
    assert seen == [False, False]
    sources = "".join(p.read_text() for p in Path(kvproj.__file__).parent.rglob("*.py"))
    assert "trust_remote_code=True" not in sources and '"trust_remote_code": True' not in sources
