"""Every registered projector maps any geometry A -> B; fuse mode starts as a no-op; export reloads exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny

from kvproj.adapters.attention import key_norms
from kvproj.cache import forward_with_cache, read_cache
from kvproj.projectors import REGISTRY, build_projector, resolve_layer_map
from kvproj.projectors.io import ProjectorMismatchError, load_projector, save_projector
from kvproj.transfer import CacheTransfer

PAIRS = [("llama", "gemma3_text"), ("gpt2", "qwen2"), ("gemma3_text", "phi3"), ("gpt_neox", "mistral")]
LEARNED = sorted(set(REGISTRY) - {"identity"})
SMALL_ARGS = {"lowrank": {"rank": 8}, "c2c": {"hidden": 32}}


def _caches(source_family, target_family, length=12):
    s, t = tiny(source_family), tiny(target_family)
    ids = torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return s, t, read_cache(s.model, ids, mask), read_cache(t.model, ids, mask), ids, mask


@pytest.mark.parametrize("architecture", LEARNED)
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}->{p[1]}")
def test_projector_maps_any_geometry(architecture, pair):
    s, t, source_kv, _, ids, mask = _caches(*pair)
    proj = build_projector(architecture, s.geometry, t.geometry, **SMALL_ARGS.get(architecture, {}))
    index = torch.arange(ids.shape[1]).expand_as(ids).clone()
    out = CacheTransfer(proj, key_norms(t.model))(source_kv, index, mask)
    g = t.geometry
    assert out.num_layers == g.num_layers
    assert all(k.shape == (2, g.num_kv_heads, ids.shape[1], g.head_dim) for k in out.keys)
    logits = forward_with_cache(t.model, out, ids[:, :4])
    assert torch.isfinite(logits).all()
    assert proj.parameter_report()["trainable_parameters"] > 0


@pytest.mark.parametrize("architecture", LEARNED)
def test_fuse_mode_starts_as_a_no_op_and_learns(architecture):
    s, t, source_kv, target_kv, ids, mask = _caches("llama", "gemma3_text")
    proj = build_projector(architecture, s.geometry, t.geometry, mode="fuse", **SMALL_ARGS.get(architecture, {}))
    proj.eval()
    transfer = CacheTransfer(proj, key_norms(t.model))
    index = torch.arange(ids.shape[1]).expand_as(ids).clone()
    fused = transfer(source_kv, index, mask, target_base=target_kv)
    for a, b in zip(fused.keys + fused.values, target_kv.keys + target_kv.values):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # and gradients reach the projector through the frozen target
    proj.train()
    fused = transfer(source_kv, index, mask, target_base=target_kv)
    forward_with_cache(t.model, fused, ids[:, :4]).logsumexp(-1).mean().backward()
    grads = [p.grad for p in proj.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_identity_needs_matching_heads():
    with pytest.raises(ValueError, match="needs equal kv heads and head_dim"):
        build_projector("identity", tiny("llama").geometry, tiny("gemma3_text").geometry)


def test_unknown_projector_lists_valid_ones():
    with pytest.raises(ValueError, match="model.projector: got 'mlp'; valid: c2c, identity, linear, lowrank"):
        build_projector("mlp", tiny("llama").geometry, tiny("qwen2").geometry)


def test_layer_maps():
    assert resolve_layer_map("proportional", 30, 18)[0] == 0
    assert resolve_layer_map("proportional", 30, 18)[-1] == 29
    assert resolve_layer_map("proportional", 16, 32)[-1] == 15
    assert resolve_layer_map("terminal", 16, 32) == [0] * 17 + list(range(1, 16))
    assert resolve_layer_map([0, 0, 1], 2, 3) == [0, 0, 1]
    with pytest.raises(ValueError, match="target layer 2 maps to source layer 40, but the source has 30 layers"):
        resolve_layer_map([0, 1, 40], 30, 3)
    with pytest.raises(ValueError, match="the list has 2 entries but the target has 3 layers"):
        resolve_layer_map([0, 1], 30, 3)
    with pytest.raises(ValueError, match="valid: 'proportional', 'terminal'"):
        resolve_layer_map("middle", 30, 3)


@pytest.mark.parametrize("architecture", LEARNED)
def test_export_reloads_to_identical_outputs(architecture, tmp_path):
    s, t, source_kv, _, ids, mask = _caches("llama", "gemma3_text")
    proj = build_projector(architecture, s.geometry, t.geometry, **SMALL_ARGS.get(architecture, {}))
    with torch.no_grad():
        for p in proj.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the init: a reload must carry trained weights
    proj.eval()
    save_projector(tmp_path / "proj", proj, s.spec.to_dict(), t.spec.to_dict())
    again, config = load_projector(tmp_path / "proj", s.geometry, t.geometry)
    assert config["architecture"] == architecture and config["source"]["spec"]["name"] == "tiny:llama"
    index = torch.arange(ids.shape[1]).expand_as(ids).clone()
    a = CacheTransfer(proj, key_norms(t.model))(source_kv, index, mask)
    b = CacheTransfer(again, key_norms(t.model))(source_kv, index, mask)
    assert all(torch.equal(x, y) for x, y in zip(a.keys + a.values, b.keys + b.values))
    with pytest.raises(ProjectorMismatchError, match="trained for a target cache of gemma3_text"):
        load_projector(tmp_path / "proj", s.geometry, tiny("qwen2").geometry)


def test_export_is_atomic_and_refuses_non_folders(tmp_path):
    s, t = tiny("llama"), tiny("qwen2")
    proj = build_projector("linear", s.geometry, t.geometry)
    save_projector(tmp_path / "p", proj, s.spec.to_dict(), t.spec.to_dict())
    save_projector(tmp_path / "p", proj, s.spec.to_dict(), t.spec.to_dict())  # replace in place
    assert sorted(x.name for x in tmp_path.iterdir()) == ["p"]  # no temp or .old folder left
    with pytest.raises(FileNotFoundError, match="not an exported projector folder"):
        load_projector(tmp_path)
