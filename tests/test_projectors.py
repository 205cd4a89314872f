"""Every projector architecture maps any geometry A -> B; fuse mode starts as a no-op; typed configs validate and
round-trip through init_args; export reloads exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny

from kvproj.adapters.attention import key_norms
from kvproj.cache import forward_with_cache, read_cache
from kvproj.projectors import (
    ARCHITECTURES,
    C2CConfig,
    IdentityConfig,
    LinearConfig,
    LowRankConfig,
    build_projector,
    config_from_init_args,
    resolve_layer_map,
)
from kvproj.projectors.io import ProjectorMismatchError, load_projector, save_projector
from kvproj.projectors.layer_map import source_windows
from kvproj.transfer import CacheTransfer, gather_source_tokens

PAIRS = [("llama", "gemma3_text"), ("gpt2", "qwen2"), ("gemma3_text", "phi3"), ("gpt_neox", "mistral")]
SMALL = {"linear": LinearConfig(), "lowrank": LowRankConfig(rank=8), "c2c": C2CConfig(hidden=32)}
LEARNED = sorted(SMALL)


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
    proj = SMALL[architecture].build(s.geometry, t.geometry)
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
    proj = SMALL[architecture].build(s.geometry, t.geometry, mode="fuse")
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


def test_identity_needs_matching_heads_and_replace_mode():
    with pytest.raises(ValueError, match="needs equal kv heads and head_dim, got source 2x16 and target 1x32"):
        IdentityConfig().build(tiny("llama").geometry, tiny("gemma3_text").geometry)
    llama = tiny("llama").geometry
    with pytest.raises(ValueError, match="IdentityConfig only works with model.mode 'replace', got 'fuse'"):
        IdentityConfig().build(llama, llama, mode="fuse")


def test_configs_refuse_bad_values_naming_the_setting():
    with pytest.raises(ValueError, match="model.projector.rank: must be an integer >= 1, got 0"):
        LowRankConfig(rank=0)
    with pytest.raises(ValueError, match="model.projector.hidden: must be an integer >= 1, got 0"):
        C2CConfig(hidden=0)
    with pytest.raises(ValueError, match="model.projector.depth: must be an integer >= 1, got 1.5"):
        C2CConfig(depth=1.5)
    with pytest.raises(ValueError, match="model.projector.gate_temperature_end: must be > 0, got 0.0"):
        C2CConfig(gate_temperature_end=0.0)
    with pytest.raises(ValueError, match="model.projector.target_key_norm: must be false for IdentityConfig"):
        IdentityConfig(target_key_norm=True)
    with pytest.raises(ValueError, match=r"model.projector.residual_hidden: got -1; valid: an int >= 0"):
        LinearConfig(residual_hidden=-1)
    with pytest.raises(ValueError, match="model.mode: got 'merge'; valid: replace, fuse"):
        LinearConfig().build(tiny("llama").geometry, tiny("qwen2").geometry, mode="merge")


def test_unknown_architecture_or_init_arg_lists_valid_ones():
    s, t = tiny("llama").geometry, tiny("qwen2").geometry
    assert sorted(ARCHITECTURES) == ["c2c", "identity", "linear", "lowrank"]
    with pytest.raises(
        ValueError, match="unknown projector architecture 'mlp'; valid: c2c, identity, linear, lowrank"
    ):
        build_projector("mlp", s, t)
    with pytest.raises(
        ValueError,
        match="projector 'lowrank': unknown init args hidden; valid: extra_source_layers, layer_map, rank, ",
    ):
        build_projector("lowrank", s, t, hidden=3)


def test_init_args_keep_the_exported_format_and_round_trip():
    # the keys projector_config.json and checkpoints have always had: the config's fields plus the mode
    assert LowRankConfig(rank=8, layer_map="terminal").init_args("fuse") == {
        "layer_map": "terminal", "target_key_norm": True, "source_window": 0, "source_tokens": 1,
        "extra_source_layers": [], "rank": 8, "mode": "fuse",
    }  # fmt: skip
    assert IdentityConfig().init_args("replace") == {
        "layer_map": "proportional", "target_key_norm": False, "source_window": 0, "source_tokens": 1,
        "extra_source_layers": [], "mode": "replace",
    }  # fmt: skip
    with pytest.raises(ValueError, match="source_window: must be 0 for IdentityConfig"):
        IdentityConfig(source_window=1)
    s, t = tiny("llama").geometry, tiny("gemma3_text").geometry
    for config in [*SMALL.values(), C2CConfig(hidden=16, depth=1, gate_init=-1.0, hard_gate_in_eval=False)]:
        proj = config.build(s, t, mode="fuse")
        assert (proj.architecture, proj.mode) == (config.architecture, "fuse")
        assert config_from_init_args(proj.architecture, proj.init_args) == (config, "fuse")
    # a folder written before typed configs (identity's init_args as they were) still builds
    old = {"layer_map": "proportional", "mode": "replace", "target_key_norm": False}
    assert build_projector("identity", s, s, **old).config == IdentityConfig()


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


def test_source_windows():
    assert source_windows([0, 5, 9], 10, 1) == [[0, 1, 2], [4, 5, 6], [7, 8, 9]]  # shifted at the ends
    assert source_windows([3], 10, 0) == [[3]]
    with pytest.raises(
        ValueError, match="source_window: 5 reads 11 source layers per target layer, but the source has 10"
    ):
        source_windows([3], 10, 5)
    with pytest.raises(ValueError, match="source_window: got -1"):
        source_windows([3], 10, -1)
    assert source_windows([0, 5], 10, 1, [0]) == [[0, 1, 2, 0], [4, 5, 6, 0]]  # appended, even if in the window
    with pytest.raises(ValueError, match=r"extra_source_layers: \[10\] not in the source's 10 layers; valid: 0-9"):
        source_windows([3], 10, 0, [2, 10])


def test_extra_source_layers_validate_and_reach_every_target_layer():
    for bad in ([0, 0], [-1], [True], "0"):
        with pytest.raises(ValueError, match="model.projector.extra_source_layers: got"):
            LinearConfig(extra_source_layers=bad)
    with pytest.raises(ValueError, match="extra_source_layers: must be empty for IdentityConfig"):
        IdentityConfig(extra_source_layers=[0])
    s, t, source_kv, _, ids, mask = _caches("llama", "gemma3_text")
    proj = LinearConfig(extra_source_layers=[0]).build(s.geometry, t.geometry)
    assert proj.in_width == 2 * s.geometry.width
    assert all(layers[-1] == 0 for layers in proj.source_layers)
    assert proj.init_args["extra_source_layers"] == [0]
    with torch.no_grad():  # not the start (identity on the mapped layer here): every input block weighs in
        for p in proj.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    index = torch.arange(ids.shape[1]).expand_as(ids).clone()
    out = CacheTransfer(proj, key_norms(t.model))(source_kv, index, mask)
    last = t.geometry.num_layers - 1
    assert proj.source_layers[last][0] != 0
    # the deepest target layer now depends on source layer 0
    bumped = dataclasses.replace(source_kv, values=[source_kv.values[0] + 1.0, *source_kv.values[1:]])
    again = CacheTransfer(proj, key_norms(t.model))(bumped, index, mask)
    assert not torch.allclose(out.values[last], again.values[last])
    shares = proj.source_layer_shares()
    assert all(0 in d and abs(sum(d.values()) - 1) < 1e-6 for d in shares)
    with pytest.raises(ValueError, match=r"extra_source_layers: \[99\] not in the source's"):
        LinearConfig(extra_source_layers=[99]).build(s.geometry, t.geometry)


@pytest.mark.parametrize("architecture", LEARNED)
def test_source_window_reads_several_source_layers(architecture, tmp_path):
    s, t, source_kv, _, ids, mask = _caches("llama", "gemma3_text")
    config = dataclasses.replace(SMALL[architecture], source_window=1)
    proj = config.build(s.geometry, t.geometry)
    assert proj.in_width == 3 * s.geometry.width
    assert all(len(layers) == 3 for layers in proj.source_layers)
    index = torch.arange(ids.shape[1]).expand_as(ids).clone()
    out = CacheTransfer(proj, key_norms(t.model))(source_kv, index, mask)
    assert all(k.shape == (2, t.geometry.num_kv_heads, ids.shape[1], t.geometry.head_dim) for k in out.keys)
    # every source layer in a window reaches the output: the gradient flows to all three blocks of the input
    out.values[0].sum().backward()
    shares = proj.source_layer_shares()
    if architecture == "c2c":
        assert shares is None  # no plain input matrix to read
    else:
        assert len(shares) == t.geometry.num_layers and all(abs(sum(d.values()) - 1) < 1e-6 for d in shares)
    save_projector(tmp_path / "p", proj, s.spec.to_dict(), t.spec.to_dict())
    again, stored = load_projector(tmp_path / "p", s.geometry, t.geometry)
    assert again.source_layers == proj.source_layers and stored["source_layers"] == proj.source_layers


def test_same_model_identity_start_is_exact_with_a_window():
    s, _, source_kv, _, ids, mask = _caches("llama", "llama")
    proj = LinearConfig(source_window=1).build(s.geometry, s.geometry)
    index = torch.arange(ids.shape[1]).expand_as(ids).clone()
    with torch.no_grad():
        out = CacheTransfer(proj, key_norms(s.model))(source_kv, index, mask)
    for a, b in zip(out.keys + out.values, source_kv.keys + source_kv.values):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    shares = proj.source_layer_shares()
    assert all(shares[t][s_] == 1.0 for t, s_ in enumerate(proj.layer_map))


@pytest.mark.parametrize("architecture", LEARNED)
def test_every_architecture_reads_source_tokens(architecture, tmp_path):
    s, t, source_kv, _, ids, mask = _caches("llama", "gemma3_text")
    proj = dataclasses.replace(SMALL[architecture], source_tokens=2).build(s.geometry, t.geometry)
    assert proj.in_width == 2 * s.geometry.width
    index = torch.arange(ids.shape[1]).expand_as(ids).clone()
    out = CacheTransfer(proj, key_norms(t.model))(source_kv, index, mask)
    assert all(k.shape == (2, t.geometry.num_kv_heads, ids.shape[1], t.geometry.head_dim) for k in out.keys)
    save_projector(tmp_path / "p", proj, s.spec.to_dict(), t.spec.to_dict())
    again, stored = load_projector(tmp_path / "p", s.geometry, t.geometry)
    assert again.source_tokens == 2 and stored["init_args"]["source_tokens"] == 2
    shares = stored["source_token_shares"]
    assert shares is None if architecture == "c2c" else abs(sum(shares) - 1) < 1e-6


def test_gather_source_tokens_reads_the_aligned_position_and_those_before_it():
    # [B=2, H=1, Ts=5, D=1]: the value is 5 * row + position
    x = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 1, 5, 1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # row 1 left-padded: its text starts at position 2
    index = torch.tensor([[0, 2, 4], [2, 3, 4]])
    out = gather_source_tokens(x, index, 3, mask)  # heads: aligned, aligned - 1, aligned - 2
    assert out.shape == (2, 3, 3, 1)
    assert out[0, :, :, 0].tolist() == [[0, 2, 4], [0, 1, 3], [0, 0, 2]]  # before position 0: zeros
    assert out[1, :, :, 0].tolist() == [[7, 8, 9], [0, 7, 8], [0, 0, 7]]  # on padding: zeros
    torch.testing.assert_close(gather_source_tokens(x, index, 1, mask)[:, 0], out[:, 0])


def test_source_tokens_reads_earlier_source_positions():
    s, t, source_kv, _, ids, mask = _caches("llama", "llama")
    proj = LinearConfig(source_tokens=2, source_window=1).build(s.geometry, s.geometry)
    assert proj.in_width == 2 * 3 * s.geometry.width
    index = torch.arange(ids.shape[1]).expand_as(ids).clone()
    transfer = CacheTransfer(proj, key_norms(s.model))
    with torch.no_grad():
        out = transfer(source_kv, index, mask)
    for a, b in zip(out.keys + out.values, source_kv.keys + source_kv.values):  # identity start: exact
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert proj.source_token_shares() == [1.0, 0.0]
    # the map moved to the block of the position before: each value becomes the previous position's value
    width = s.geometry.width
    with torch.no_grad():
        for t_, layers in enumerate(proj.source_layers):
            w = proj.values[t_].weight
            w.zero_()
            block = layers.index(proj.layer_map[t_]) * 2 + 1
            w[:, block * width : (block + 1) * width].copy_(torch.eye(width))
        out = transfer(source_kv, index, mask)
    for t_, s_ in enumerate(proj.layer_map):
        v, src = out.values[t_], source_kv.values[s_]
        torch.testing.assert_close(v[0, :, 1:], src[0, :, :-1], atol=1e-5, rtol=0)
        assert v[0, :, 0].abs().max() == 0  # nothing before the first position
        assert v[1, :, 3].abs().max() == 0  # row 1's first real position: the one before it is padding
        torch.testing.assert_close(v[1, :, 4:], src[1, :, 3:-1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="model.projector.source_tokens: got 0; valid: an int >= 1"):
        LinearConfig(source_tokens=0)
    with pytest.raises(ValueError, match="source_tokens: must be 1 for IdentityConfig"):
        IdentityConfig(source_tokens=2)


@pytest.mark.parametrize("architecture", LEARNED)
def test_export_reloads_to_identical_outputs(architecture, tmp_path):
    s, t, source_kv, _, ids, mask = _caches("llama", "gemma3_text")
    proj = SMALL[architecture].build(s.geometry, t.geometry)
    with torch.no_grad():
        for p in proj.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the init: a reload must carry trained weights
    proj.eval()
    save_projector(tmp_path / "proj", proj, s.spec.to_dict(), t.spec.to_dict())
    again, config = load_projector(tmp_path / "proj", s.geometry, t.geometry)
    assert config["architecture"] == architecture and config["source"]["spec"]["name"] == "tiny:llama"
    assert config["init_args"] == SMALL[architecture].init_args("replace")
    assert again.config == SMALL[architecture]
    index = torch.arange(ids.shape[1]).expand_as(ids).clone()
    a = CacheTransfer(proj, key_norms(t.model))(source_kv, index, mask)
    b = CacheTransfer(again, key_norms(t.model))(source_kv, index, mask)
    assert all(torch.equal(x, y) for x, y in zip(a.keys + a.values, b.keys + b.values))
    with pytest.raises(ProjectorMismatchError, match="trained for a target cache of gemma3_text"):
        load_projector(tmp_path / "proj", s.geometry, tiny("qwen2").geometry)


def test_export_is_atomic_and_refuses_non_folders(tmp_path):
    s, t = tiny("llama"), tiny("qwen2")
    proj = LinearConfig().build(s.geometry, t.geometry)
    save_projector(tmp_path / "p", proj, s.spec.to_dict(), t.spec.to_dict())
    save_projector(tmp_path / "p", proj, s.spec.to_dict(), t.spec.to_dict())  # replace in place
    assert sorted(x.name for x in tmp_path.iterdir()) == ["p"]  # no temp or .old folder left
    with pytest.raises(FileNotFoundError, match="not an exported projector folder"):
        load_projector(tmp_path)


@pytest.mark.parametrize("mode", ["replace", "fuse"])
def test_residual_branch_starts_as_the_linear_map_learns_and_reloads(mode, tmp_path):
    s, t, source_kv, target_kv, ids, mask = _caches("llama", "gemma3_text")
    torch.manual_seed(0)
    plain = LinearConfig().build(s.geometry, t.geometry, mode=mode)
    torch.manual_seed(0)
    proj = LinearConfig(residual_hidden=16).build(s.geometry, t.geometry, mode=mode)
    assert len(proj.residual_keys) == len(proj.residual_values) == t.geometry.num_layers
    extra = sum(p.numel() for p in proj.parameters()) - sum(p.numel() for p in plain.parameters())
    d_in, d_out = proj.in_width, t.geometry.width
    assert extra == 2 * t.geometry.num_layers * (d_in * 16 + 16 + 16 * d_out + d_out)
    index = torch.arange(ids.shape[1]).expand_as(ids).clone()
    base = target_kv if mode == "fuse" else None

    def run(p):
        return CacheTransfer(p, key_norms(t.model))(source_kv, index, mask, target_base=base)

    a, b = run(plain), run(proj)
    assert all(torch.equal(x, y) for x, y in zip(a.keys + a.values, b.keys + b.values))  # zero-started branch
    # one optimizer step moves the branch (its output layer gets a gradient at the start) and the output
    out = run(proj)
    loss = sum((k.float() - 1).pow(2).mean() for k in out.keys + out.values)
    loss.backward()
    assert proj.residual_values[0].down.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for r in list(proj.residual_keys) + list(proj.residual_values):
            r.down.weight.sub_(0.1 * r.down.weight.grad)
    c = run(proj)
    assert not all(torch.equal(x, y) for x, y in zip(a.values, c.values))
    save_projector(tmp_path / "proj", proj, s.spec.to_dict(), t.spec.to_dict())
    again, config = load_projector(tmp_path / "proj", s.geometry, t.geometry)
    assert config["init_args"]["residual_hidden"] == 16
    d = run(again)
    assert all(torch.equal(x, y) for x, y in zip(c.keys + c.values, d.keys + d.values))
