"""Experiment suite II (issue 12): mode-batch, confab-detection and archaeology. The statistics are checked against
known cases, planted structure is found where it was planted (and not by the controls), and every smoke config runs
end to end on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny

from kvproj.experiments import main
from kvproj.experiments import stats as st

CONFIGS = ROOT / "configs" / "experiments"


def experiment(name: str, tmp_path: Path, *extra: str) -> tuple[dict, Path]:
    code = main([name, "--config", str(CONFIGS / f"{name}-smoke.yaml"), "--output_dir", str(tmp_path / "results"),
                 *extra])  # fmt: skip
    assert code == 0
    folder = tmp_path / "results" / name / "smoke"
    return json.loads((folder / "results.json").read_text()), folder


# ------------------------------------------------------------------------------------------------ statistics
def test_auroc_and_permutation_test_on_known_cases():
    assert st.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], seed=0)["auroc"] == pytest.approx(0.75)
    perfect = st.auroc([0] * 10 + [1] * 10, list(range(20)), seed=0, resamples=200)
    assert perfect["auroc"] == 1.0 and perfect["ci95"] == [1.0, 1.0]
    assert st.auroc([1, 1, 1], [0.2, 0.3, 0.4], seed=0)["auroc"] is None  # one class: undefined
    # every one of the C(6, 3) = 20 splits is enumerated: only the observed split and its mirror are as extreme
    assert st.permutation_p([1, 2, 3], [4, 5, 6], seed=0) == pytest.approx(2 / 20)
    assert st.permutation_p([1, 2, 3, 4], [1, 2, 3, 4], seed=0) == pytest.approx(1.0)
    assert st.correct([0.01, 0.04, 0.03], "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert st.correct([0.01, 0.04, 0.03, None], "bh") == pytest.approx([0.03, 0.04, 0.04, None])
    assert st.cohens_d([1, 2, 3], [1, 2, 3]) == 0.0 and st.cohens_d([2, 3, 4], [1, 2, 3]) == pytest.approx(1.0)
    assert st.effective_rank(np.outer(np.arange(1, 6), np.ones(4))) == pytest.approx(1.0)
    assert st.effective_rank(np.eye(4)) == pytest.approx(4.0)
    rho = st.depth_rank_correlation([0, 1, 2, 3, 4, 5, 6, 7], [0, 2, 4, 6])  # same profile, other depth
    assert rho["rho"] == pytest.approx(1.0) and rho["points"] == 4


def test_a_planted_mode_difference_is_found_with_its_sign_and_a_null_is_not():
    from kvproj.experiments.mode_batch import compare

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 6)), rng.normal(size=(30, 6))
    b[:, 3] += 1.5  # mode B is larger at layer 3 only
    rows = compare(a, b, seed=0, resamples=1000, correction="holm")
    assert rows[3]["d"] < -1.0 and rows[3]["ci95"][1] < 0  # right sign, CI away from 0
    assert rows[3]["p_corrected"] < 0.05  # significant after Holm over the 6 layers
    assert all(r["p_corrected"] > 0.05 for i, r in enumerate(rows) if i != 3)
    null = compare(rng.normal(size=(30, 6)), rng.normal(size=(30, 6)), seed=1, resamples=1000, correction="bh")
    assert all(r["p_corrected"] > 0.05 for r in null)
    # the same effect replicates across halves of the runs; noise does not
    a2, b2 = rng.normal(size=(30, 12)), rng.normal(size=(30, 12))
    b2 += np.linspace(-1.5, 1.5, 12)
    assert st.split_half(a2, b2, seed=0)["r"] > 0.8
    assert abs(st.split_half(rng.normal(size=(30, 12)), rng.normal(size=(30, 12)), seed=0)["r"]) < 0.5


def test_a_large_effect_stays_significant_after_correcting_over_many_layers():
    """With 1,000 permutations the smallest two-sided p is ~0.002, and Holm over 30 layers makes that 0.06: no
    effect could pass. compare() uses enough permutations for the number of layers."""
    from kvproj.experiments.mode_batch import compare

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 30)), rng.normal(size=(30, 30))
    b[:, 7] += 3.0
    rows = compare(a, b, seed=0, resamples=1000, correction="holm")
    assert rows[7]["p_corrected"] < 0.01
    assert min(range(30), key=lambda i: rows[i]["p_corrected"]) == 7
    # Holm keeps the family-wise error at 5%: a null layer may pass by chance now and then (here one, at 0.048)
    assert sum(r["p_corrected"] <= 0.05 for i, r in enumerate(rows) if i != 7) <= 1


# ------------------------------------------------------------------------------------------------ archaeology
def test_a_feature_written_into_one_layers_values_is_decoded_there_and_not_by_the_control():
    from kvproj.experiments.archaeology import Settings, contexts, features, probe_task, task_labels, token_rows

    s = Settings(models=[{"name": "tiny:llama"}], n_contexts=12, cv_folds=3, bootstrap_resamples=200)
    model = tiny("llama")
    rows, who = contexts(s.n_contexts)
    tokens = token_rows(model, rows, who, s.attribute_relation)
    planted = 1

    def plant(kv, t):  # whether the token is part of a person's name, written into one value dimension
        flags = torch.tensor([float(e is not None) for e in t["entity"]])
        kv.values[planted][0, 0, :, 0] += 4.0 * flags

    labels = task_labels(tokens, s)
    out = probe_task(features(model, tokens, plant), labels["entity"], False, s, "planted")
    chance = out["chance"]
    assert out[f"values {planted}"]["probe"]["mean"] > 0.97
    assert out[f"values {planted}"]["control"]["mean"] < chance + 0.05  # shuffled labels: nothing to decode
    for name in ("embedding", "values 0", "values 2", f"keys {planted}"):
        assert out[name]["probe"]["mean"] < 0.85, name  # elsewhere the label is not written
    clean = probe_task(features(model, tokens), labels["entity"], False, s, "planted")
    assert clean[f"values {planted}"]["probe"]["mean"] < 0.85


def test_archaeology_smoke(tmp_path):
    r, folder = experiment("archaeology", tmp_path)
    assert set(r["numbers"]) == {"0:tiny:llama", "1:tiny:gemma3_text"}
    for label, per in r["numbers"].items():
        token = per["token"]
        assert token["embedding"]["probe"]["mean"] == 1.0  # the embedding floor: the token itself
        assert token["values 0"]["probe"]["mean"] > 0.95  # layer 0's values are a linear map of the embedding
        assert token["values 0"]["control"]["mean"] < token["chance"] + 0.1
        n_layers = len(r["relative_depth"][label])
        assert all(f"{k} {i}" in token for k in ("keys", "values") for i in range(n_layers))
        assert per["position"]["keys 0"]["probe"]["ci95"] is not None
    assert {"token.png", "previous_token.png", "position.png", "entity.png", "attribute.png", "report.md"} <= {
        p.name for p in folder.iterdir()
    }
    assert "![" in (folder / "report.md").read_text()


# ------------------------------------------------------------------------------------------------ mode batch
def test_mode_batch_features_of_a_padded_batch_row_equal_those_of_the_prompt_alone():
    """one_run reads all its prompts as one left-padded batch: each row's per-layer features must be what the
    prompt alone gives (padding shifts indices, not values)."""
    from kvproj.cache import pad_token_id, read_cache_internals
    from kvproj.experiments.mode_batch import distances, layer_features, left_pad

    loaded = tiny("llama")
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (30, 22, 41)]
    start, context_end = 4, 15
    ids, mask, offsets = left_pad(seqs, pad_token_id(loaded.model))
    kv, _, _, att = read_cache_internals(loaded.model, ids, mask, geometry=loaded.geometry, attentions=True,
                                         all_logits=False)  # fmt: skip
    for i, seq in enumerate(seqs):
        kv1, _, _, att1 = read_cache_internals(loaded.model, torch.tensor([seq]), geometry=loaded.geometry,
                                               attentions=True)  # fmt: skip
        alone = layer_features(kv1, att1, start, len(seq) - 3, context_end)
        batched = layer_features(kv, att, start, len(seq) - 3, context_end, example=i, offset=offsets[i])
        for name in alone:
            np.testing.assert_allclose(batched[name], alone[name], rtol=1e-3, atol=1e-4, err_msg=name)
    # distance of row 1 to row 0 inside the batch = the distance between the two prompts read alone
    kv0 = read_cache_internals(loaded.model, torch.tensor([seqs[0]]), geometry=loaded.geometry)[0]
    kv1 = read_cache_internals(loaded.model, torch.tensor([seqs[1]]), geometry=loaded.geometry)[0]
    alone = distances(kv1, kv0, start, start, 10)
    batched = distances(kv, kv, start, start, 10, at=(1, offsets[1]), neutral_at=(0, offsets[0]))
    for name in alone:
        np.testing.assert_allclose(batched[name], alone[name], rtol=1e-3, atol=1e-5, err_msg=name)


def test_mode_batch_smoke_reproducible_and_resumable(tmp_path):
    r, folder = experiment("mode-batch", tmp_path)
    for label, per in r["numbers"].items():
        n_layers = len(r["relative_depth"][label])
        eff = per["effects"]["careful-neutral"]
        assert "key_distance" not in eff  # 0 by definition for the neutral cache: not compared
        assert set(eff) == {"key_norm", "value_norm", "attention_entropy", "key_rank", "value_rank"}
        for rows in eff.values():
            assert len(rows) == n_layers and all(x["p_corrected"] >= x["p"] for x in rows)
        assert (
            "key_distance" in per["means"]["careful"]
            and per["means"]["neutral"]["key_distance"] == [0.0] * n_layers
        )
        assert "r" in per["reliability"]["careful-neutral"]
    assert list(r["cross_model"]) == ["0:tiny:llama vs 1:tiny:gemma3_text"]
    assert {"cross_model.png", "effects_model0_careful-neutral.png", "generations.jsonl"} <= {
        p.name for p in folder.iterdir()
    }
    # an interrupted run resumes and gives the same numbers
    (folder / "results.json").unlink()
    units = sorted((folder / "units").glob("*.json"))
    units[3].unlink()
    again, _ = experiment("mode-batch", tmp_path)
    assert again["resumed_units"] == len(units) - 1
    assert again["numbers"] == r["numbers"]


# ------------------------------------------------------------------------------------------------ confab detection
def test_confab_detection_smoke_with_an_exact_projector(tmp_path):
    """The per-model probes run on both tiny models; an identity projector makes the projected caches the
    target's own, so the target's probe scores them as it scores its own caches."""
    from kvproj.projectors import build_projector
    from kvproj.projectors.io import save_projector

    model = tiny("llama")
    spec = model.spec.to_dict()
    folder = save_projector(tmp_path / "identity", build_projector("identity", model.geometry, model.geometry),
                            spec, spec)  # fmt: skip
    r, out = experiment("confab-detection", tmp_path, "--projector", str(folder))
    for per in r["numbers"].values():
        c = per["construction"]
        assert c["positives"] == 8 and c["n"] == 16
        for method in ("cache", "keys", "values", "hidden"):
            assert all(x["auroc"] is None or 0.0 <= x["auroc"] <= 1.0 for x in c[method])
        for b in ("first_token_entropy", "answer_logprob", "answer_length"):
            assert b in c
        assert "layer" in c["best_layer"]
    for layer in r["transfer"]["layers"]:
        assert layer["projected"]["auroc"] == pytest.approx(layer["own"]["auroc"], abs=0.05)
    assert {"transfer.png", "auroc_model0_construction.png", "generations.jsonl"} <= {
        p.name for p in out.iterdir()
    }


def test_help_lists_the_options_of_suite_two(capsys):
    for name, options in (("mode-batch", ("--n_runs", "--correction", "--contrasts", "--models")),
                          ("confab-detection", ("--projector", "--cv_folds", "--probe_c")),
                          ("archaeology", ("--top_tokens", "--attribute_relation", "--n_contexts"))):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        for option in options:
            assert option in out, (name, option)
    smoke = str(CONFIGS / "mode-batch-smoke.yaml")
    assert main(["mode-batch", "--config", smoke, "--contrasts", "[careful-nothing]"]) == 2  # named, not run
    assert main(["confab-detection", "--config", "confab-detection-smoke", "--projector", "/no/such/dir"]) == 2


def test_default_configs_parse():
    """The default (zoo) configs are valid settings; nothing is loaded."""
    from kvproj.experiments import module, parser

    for name in ("mode-batch", "confab-detection", "archaeology"):
        cfg = parser(name).parse_args(["--config", str(CONFIGS / f"{name}.yaml")]).as_dict()
        cfg.pop("config", None)
        cfg.pop("__path__", None)
        settings = module(name).Settings(**cfg)
        assert [m.name for m in settings.models] == ["smollm2-135m-instruct", "gemma3-270m"]
