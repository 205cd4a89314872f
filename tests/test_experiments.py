"""`python -m kvproj experiment NAME`: the shared run folder (refuse / resume / reproduce), the cache file, and each
experiment's smoke config end to end on tiny models, with planted structure whose numbers are asserted."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny

from kvproj.cache import read_cache
from kvproj.cache_file import CacheFileError, load_cache, save_cache
from kvproj.experiments import main
from kvproj.models import ModelSpec, byte_tokenizer, load_model
from kvproj.projectors import build_projector
from kvproj.projectors.io import save_projector

CONFIGS = ROOT / "configs" / "experiments"


def experiment(name: str, tmp_path: Path, *extra: str, config: str | None = None) -> dict:
    """Run `python -m kvproj experiment NAME --config NAME-smoke.yaml` in-process into tmp_path; its results."""
    config = config or str(CONFIGS / f"{name}-smoke.yaml")
    code = main([name, "--config", config, "--output_dir", str(tmp_path / "results"), *extra])
    assert code == 0
    folders = sorted((tmp_path / "results" / name).iterdir(), key=lambda p: p.stat().st_mtime)
    return json.loads((folders[-1] / "results.json").read_text())


def numbers_only(results: dict) -> dict:
    return results["numbers"]


# ------------------------------------------------------------------------------------------------ cache file
def test_cache_file_round_trip_is_exact_and_refuses_other_models(tmp_path):
    model = tiny("llama")
    ids = torch.arange(3, 40).reshape(1, -1)
    kv = read_cache(model.model, ids, geometry=model.geometry)
    path = save_cache(tmp_path / "c.safetensors", kv, model, input_ids=ids)
    loaded, stored = load_cache(path, model)
    assert torch.equal(stored, ids)
    for a, b in zip(kv.keys + kv.values, loaded.keys + loaded.values):
        assert torch.equal(a, b)  # bit-exact in float32
    assert torch.equal(loaded.positions, kv.positions) and torch.equal(loaded.attention_mask, kv.attention_mask)
    with pytest.raises(CacheFileError, match="num_layers: file 3, model 2|model family"):
        load_cache(path, tiny("qwen2"))
    changed = byte_tokenizer()  # the same tokenizer with one more token
    changed.add_tokens(["<extra>"])
    with pytest.raises(CacheFileError, match="tokenizer"):
        load_cache(path, replace(model, tokenizer=changed))
    half = save_cache(tmp_path / "h.safetensors", kv, model, dtype="bfloat16")
    assert load_cache(half, model)[0].keys[0].dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------ same-model
def test_same_model_smoke_exact_in_fp32_reproducible_resumable(tmp_path):
    r = experiment("same-model", tmp_path)
    fp32 = r["numbers"]["float32"]
    for per in fp32.values():
        assert per["file_roundtrip_max_diff"]["mean"] == 0.0  # the file changes nothing
        assert per["max_logit_diff"]["ci95"][1] < 1e-4  # against re-prefill: rounding only
        assert per["greedy_agreement"]["mean"] == 1.0
    assert "bfloat16" in r["numbers"] and r["numbers"]["bfloat16"]["16"]["max_logit_diff"]["mean"] > 0
    assert "4bit" in r["numbers"] or "4bit" in r["skipped"]  # measured where bitsandbytes runs, else said why
    folder = tmp_path / "results" / "same-model" / "smoke"
    assert {"report.md", "generations.jsonl", "max_logit_diff.png", "kl.png", "time.png"} <= {
        p.name for p in folder.iterdir()
    }
    assert "![" in (folder / "report.md").read_text()
    # a finished run is refused without --overwrite, replaced with it, and gives the same numbers
    assert main(["same-model", "--config", str(CONFIGS / "same-model-smoke.yaml"), "--output_dir",
                 str(tmp_path / "results")]) == 2  # fmt: skip
    again = experiment("same-model", tmp_path, "--overwrite")
    assert numbers_only(again) == numbers_only(r)
    # an interrupted run (no results.json, some units missing) resumes and gives the same numbers
    (folder / "results.json").unlink()
    units = sorted((folder / "units").glob("*.json"))
    units[0].unlink()
    resumed = experiment("same-model", tmp_path)
    assert resumed["resumed_units"] == len(units) - 1
    assert numbers_only(resumed) == numbers_only(r)
    # resuming with other settings is refused
    (folder / "results.json").unlink()
    assert main(["same-model", "--config", str(CONFIGS / "same-model-smoke.yaml"), "--output_dir",
                 str(tmp_path / "results"), "--new_tokens", "3"]) == 2  # another unit content: refused  # fmt: skip


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["layer-sweep", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--projector", "--k_fractions", "--overwrite", "--seed", "--run", "--limit"):
        assert option in out
    assert main(["no-such-experiment"]) == 2


def test_a_missing_projector_says_how_to_make_one(tmp_path, caplog):
    logging.getLogger("kvproj").addHandler(caplog.handler)  # kvproj's logger may not propagate (cli setup)
    args = ["--config", str(CONFIGS / "layer-sweep-smoke.yaml"), "--output_dir", str(tmp_path)]
    assert main(["layer-sweep", *args, "--projector", str(tmp_path / "none")]) == 2
    assert "python -m kvproj fit" in caplog.text
    assert main(["layer-sweep", *args, "--limit", "1"]) == 2  # checked before anything is loaded
    assert not (tmp_path / "layer-sweep").exists()
    logging.getLogger("kvproj").removeHandler(caplog.handler)


# ------------------------------------------------------------------------------------------------ projector sweeps
def planted_projector(tmp_path: Path, planted: int = 2) -> Path:
    """A target in which only layer `planted` reads its cache, and a projector exact only at that layer.

    The model: tiny llama, 4 layers, weights at 10x the usual scale (so the context changes its answers), saved
    to a folder, with the attention output projection of every other layer set to zero (their caches cannot
    change anything). The projector (model -> itself): linear, the identity at layer `planted` and random at every
    other layer."""
    from kvproj.adapters.attention import decoder_layers

    model = load_model(ModelSpec("tiny:llama", tiny={"num_hidden_layers": 4, "initializer_range": 0.2}))
    with torch.no_grad():
        for i, layer in enumerate(decoder_layers(model.model)):
            if i != planted:
                layer.self_attn.o_proj.weight.zero_()
    folder = tmp_path / f"model{planted}"
    model.model.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    loaded = load_model(ModelSpec(str(folder)))
    proj = build_projector("linear", loaded.geometry, loaded.geometry)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in range(4):
            if layer != planted:
                for lin in (proj.keys[layer], proj.values[layer]):
                    lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * lin.in_features**-0.5)
    spec = loaded.spec.to_dict()
    return save_projector(tmp_path / f"planted{planted}", proj, spec, spec)


@pytest.mark.parametrize("planted", [0, 2])
def test_layer_sweep_finds_the_planted_layer(tmp_path, planted):
    r = experiment("layer-sweep", tmp_path, "--projector", str(planted_projector(tmp_path, planted)))
    for source in ("projected", "same_model"):
        a, n = r["analysis"][source], r["numbers"][source]
        assert a["rank_alone"][0] == planted  # transferred alone, the planted layer helps most
        assert a["rank_withheld"][0] == planted  # withheld alone, it hurts most
        kl = {c: n[c]["kl_to_oracle"]["mean"] for c in n}
        assert kl["full"] == pytest.approx(0.0, abs=1e-5) and kl["control"] > 0.01, kl
        assert kl[f"only_{planted}"] == pytest.approx(kl["full"], abs=1e-5)  # that layer alone is everything
        assert kl[f"all_but_{planted}"] == pytest.approx(kl["control"], abs=1e-5)  # and without it, nothing
        for other in {0, 1, 2, 3} - {planted}:
            assert kl[f"only_{other}"] == pytest.approx(kl["control"], abs=1e-5)
    cos = r["numbers"]["projector_cosine"]  # training's per-layer diagnostic, recomputed on these examples
    assert cos["keys"][planted] == pytest.approx(1.0, abs=1e-5) and cos["values"][planted] == pytest.approx(1.0)
    assert max(c for x, c in enumerate(cos["values"]) if x != planted) < 0.9


def test_partial_transfer_full_share_equals_full_transfer(tmp_path):
    r = experiment("partial-transfer", tmp_path, "--projector", str(planted_projector(tmp_path)))
    for source in ("projected", "same_model"):
        n = r["numbers"][source]
        for everything in ("tokens_first_1", "tokens_last_1"):
            for m in ("answer_nll", "kl_to_oracle", "exact_match"):
                assert n[everything][m]["mean"] == n["full"][m]["mean"]  # 100% = the full transfer, exactly
            assert n[everything]["byte_fraction"] == pytest.approx(1.0)
        for nothing in ("tokens_first_0", "tokens_last_0"):
            assert n[nothing]["answer_nll"]["mean"] == n["control"]["answer_nll"]["mean"]
            assert n[nothing]["byte_fraction"] == 0.0
        assert 0 < n["span_entity+answer"]["byte_fraction"] < 1
        assert n["layers_last_0.5"]["byte_fraction"] == pytest.approx(0.5)
        assert n["heads_first_0.5"]["byte_fraction"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------ modes
def test_blend_at_alpha_0_and_1_is_the_pure_cache_exactly():
    from kvproj.experiments.interpolation import blend

    model = tiny("gemma3_text")
    a = read_cache(model.model, torch.arange(5, 25).reshape(2, 10), geometry=model.geometry)
    b = read_cache(model.model, torch.arange(30, 50).reshape(2, 10), geometry=model.geometry)
    for alpha, expected in ((1.0, a), (0.0, b)):
        mixed = blend(a, b, alpha)
        assert all(torch.equal(x, y) for x, y in zip(mixed.keys + mixed.values, expected.keys + expected.values))
    half = blend(a, b, 0.5, layers={1})
    assert torch.equal(half.keys[0], b.keys[0]) and torch.allclose(half.keys[1], (a.keys[1] + b.keys[1]) / 2)


def test_interpolation_smoke_reproduces_the_pure_modes(tmp_path):
    r = experiment("interpolation", tmp_path)
    n = r["numbers"]
    assert n["global alpha=1"]["kl_to_A"]["mean"] == 0.0 and n["global alpha=1"]["kl_to_A"]["ci95"] == [0.0, 0.0]
    assert n["global alpha=0"]["kl_to_B"]["mean"] == 0.0
    assert n["global alpha=0.5"]["kl_to_A"]["mean"] > 0
    for metric in ("accuracy", "unknown_rate", "fabricated_rate", "first_token_entropy", "kl_to_B"):
        assert n["global alpha=1"][metric]["mean"] == n["pure A"][metric]["mean"]  # alpha 1 is mode A
    for group in [c for c in n if c.startswith("layers ") and c.endswith("alpha=0")]:
        assert n[group]["kl_to_B"]["mean"] == 0.0  # a group blended at alpha 0 is mode B everywhere
    assert r["n_questions"] == 8 and {"steer c=0", "steer c=1"} <= set(n)


def test_mode_transfer_smoke_with_an_exact_projector(tmp_path):
    """An identity projector between two copies of one tiny model is an exact transfer: the projected caches
    behave exactly like the target reading the text, in both modes."""
    model = tiny("llama")
    spec = model.spec.to_dict()
    folder = save_projector(tmp_path / "identity", build_projector("identity", model.geometry, model.geometry),
                            spec, spec)  # fmt: skip
    r = experiment("mode-transfer", tmp_path, "--projector", str(folder))
    n = r["numbers"]
    for mode in ("A", "B"):
        assert n[f"projected {mode}"]["kl_to_" + mode]["mean"] == pytest.approx(0.0, abs=1e-6)
        assert n[f"target_text {mode}"]["kl_to_" + mode]["mean"] == 0.0
        assert n[f"projected {mode}"]["unknown_rate"]["mean"] == n[f"target_text {mode}"]["unknown_rate"]["mean"]
    assert set(r["mode_gap"]["unknown_rate"]) == {"target_text", "projected", "shuffled", "source_text"}


def test_mix_takes_exactly_what_is_selected():
    """Every context token selected gives the transferred cache bit for bit (head slots included, even a
    multi-token head); nothing selected gives the donor on the context and keeps the head."""
    from kvproj.experiments.mixing import Selection, donor_cache, mix, token_mask

    model = tiny("gemma3_text")
    ids = torch.arange(5, 29).reshape(2, 12)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    kv = read_cache(model.model, ids, mask, geometry=model.geometry)
    head_len = 3
    donor = donor_cache(kv, [1, 0], head_len)
    spans = [{"entity": [0], "answer": [2]}] * 2
    everything = mix(kv, donor, Selection(), token_mask(Selection(), kv, head_len, spans), head_len)
    assert all(torch.equal(a, b) for a, b in zip(everything.keys + everything.values, kv.keys + kv.values))
    none = Selection(span="none")
    nothing = mix(kv, donor, none, token_mask(none, kv, head_len, spans), head_len)
    assert torch.equal(nothing.values[0][0, :, head_len:], donor.values[0][0, :, head_len:])
    assert torch.equal(nothing.values[0][0, :, :head_len], kv.values[0][0, :, :head_len])
    entity = Selection(layers=(1,), span="entity")
    tokens = token_mask(entity, kv, head_len, spans)
    assert tokens.sum(1).tolist() == [1, 1] and tokens[0, head_len] and tokens[1, 3 + head_len]
