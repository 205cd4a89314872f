"""Invariants of the cache core, for every supported family (one table through one tester)."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import FAMILIES, tiny

from kvproj.cache import (
    CacheGeometry,
    KVCache,
    forward_with_cache,
    generate_with_cache,
    read_cache,
    to_transformers,
)
from kvproj.rope import apply_rope, undo_rope

# prompts longer than the tiny sliding windows (8) so truncation bugs show
PREFIX, SUFFIX = 13, 6


def _ids(model, batch=2, length=PREFIX + SUFFIX, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, length), generator=g)


@pytest.mark.parametrize("family", FAMILIES)
def test_read_cache_is_full_length_and_matches_geometry(family):
    m = tiny(family)
    ids = _ids(m)
    kv = read_cache(m.model, ids)
    g = m.geometry
    assert kv.num_layers == g.num_layers
    for k, v in zip(kv.keys, kv.values):
        assert k.shape == (2, g.num_kv_heads, ids.shape[1], g.head_dim)  # sliding layers NOT truncated
        assert v.shape == k.shape


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_round_trip_is_exact(family):
    m = tiny(family)
    kv = read_cache(m.model, _ids(m))
    hf = to_transformers(kv, m.model)
    assert len(hf.layers) == kv.num_layers
    for i, layer in enumerate(hf.layers):
        assert torch.equal(layer.keys, kv.keys[i])
        assert torch.equal(layer.values, kv.values[i])


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_cache_plus_suffix_equals_full_forward(family):
    m = tiny(family)
    ids = _ids(m)
    full = m.model(ids).logits
    kv = read_cache(m.model, ids[:, :PREFIX])
    logits = forward_with_cache(m.model, kv, ids[:, PREFIX:])
    torch.testing.assert_close(logits, full[:, PREFIX:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_matches_unpadded_examples(family):
    """Two prefixes of different length, left-padded together, continue exactly like each one alone."""
    m = tiny(family)
    ids = _ids(m, batch=2)
    short = 9
    prefix = ids[:, :PREFIX].clone()
    mask = torch.ones_like(prefix)
    mask[1, : PREFIX - short] = 0  # example 1 has only `short` real prefix tokens
    prefix[1, : PREFIX - short] = 258  # pad id
    suffix = ids[:, PREFIX:]
    kv = read_cache(m.model, prefix, mask)
    batched = forward_with_cache(m.model, kv, suffix)
    for b, n in ((0, PREFIX), (1, short)):
        alone_ids = torch.cat([ids[b : b + 1, PREFIX - n : PREFIX], suffix[b : b + 1]], dim=1)
        alone = m.model(alone_ids).logits[:, n:]
        torch.testing.assert_close(batched[b : b + 1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_with_injected_cache_equals_plain_generate(family):
    m = tiny(family)
    ids = _ids(m, batch=2)
    prompt, tail = ids[:, : PREFIX + 2], ids[:, PREFIX : PREFIX + 2]
    plain = m.model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False, pad_token_id=258
    )[:, prompt.shape[1] :]
    kv = read_cache(m.model, ids[:, :PREFIX])
    injected = generate_with_cache(m.model, kv, tail, max_new_tokens=8)
    assert injected.shape == plain.shape
    assert torch.equal(injected, plain)


@pytest.mark.parametrize("family", FAMILIES)
def test_injection_does_not_mutate_the_kvcache(family):
    m = tiny(family)
    ids = _ids(m)
    kv = read_cache(m.model, ids[:, :PREFIX])
    before = kv.clone()
    forward_with_cache(m.model, kv, ids[:, PREFIX:])
    generate_with_cache(m.model, kv, ids[:, PREFIX : PREFIX + 1], max_new_tokens=3)
    assert all(torch.equal(a, b) for a, b in zip(kv.keys, before.keys))
    assert kv.length == before.length


def _capture_pre_rope_keys(model, family):
    """Patch the family's apply_rotary_pos_emb to record the keys it is given (= pre-RoPE key projections)."""
    module = sys.modules[type(model).__module__]
    seen = []
    original = module.apply_rotary_pos_emb

    def spy(q, k, cos, sin, *args, **kwargs):
        seen.append(k.detach().clone())
        return original(q, k, cos, sin, *args, **kwargs)

    return module, original, spy, seen


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gpt2"])
def test_unrotated_keys_equal_pre_rope_key_projection(family, monkeypatch):
    m = tiny(family)
    ids = _ids(m)
    module, original, spy, seen = _capture_pre_rope_keys(m.model, family)
    monkeypatch.setattr(module, "apply_rotary_pos_emb", spy)
    kv = read_cache(m.model, ids)
    assert len(seen) == m.geometry.num_layers
    for layer in range(kv.num_layers):
        torch.testing.assert_close(kv.unrotated_keys(layer), seen[layer], atol=1e-5, rtol=0)


def test_gpt2_keys_are_not_rotated():
    m = tiny("gpt2")
    kv = read_cache(m.model, _ids(m))
    assert all(spec is None for spec in m.geometry.rope)
    assert torch.equal(kv.unrotated_keys(0), kv.keys[0])


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gpt2"])
def test_rope_round_trip_and_partial_rotary(family):
    m = tiny(family)
    kv = read_cache(m.model, _ids(m))
    for layer, spec in enumerate(m.geometry.rope):
        k = kv.keys[layer]
        undone = undo_rope(k, kv.positions, spec)
        torch.testing.assert_close(apply_rope(undone, kv.positions, spec), k, atol=1e-5, rtol=0)
        # dims past rotary_dim are never touched (GPT-NeoX rotates 1/4, Phi-3 here 1/2)
        assert torch.equal(undone[..., spec.rotary_dim :], k[..., spec.rotary_dim :])
        assert spec.rotary_dim <= m.geometry.head_dim


def test_gemma3_layers_have_their_own_rotary_base():
    g = tiny("gemma3_text").geometry
    bases = {t: s.inv_freq[1] for t, s in zip(g.layer_types, g.rope)}
    assert bases["sliding_attention"] != bases["full_attention"]
    assert g.sliding_windows == (8, 8, None, 8)


def test_scaled_rope_inverts_exactly():
    from kvproj.rope import RopeSpec

    spec = RopeSpec(inv_freq=(1.0, 0.1, 0.01, 0.001), attention_scaling=1.3, rope_type="yarn")
    k = torch.randn(2, 3, 5, 12)
    pos = torch.arange(5).expand(2, 5)
    torch.testing.assert_close(undo_rope(apply_rope(k, pos, spec), pos, spec), k, atol=1e-5, rtol=0)


def test_geometry_serializes_and_reports_mismatch():
    a, b = tiny("llama").geometry, tiny("gemma3_text").geometry
    assert CacheGeometry.from_dict(a.to_dict()) == a
    problems = a.mismatches(b)
    assert any("num_layers" in p for p in problems) and any("head_dim" in p for p in problems)
    assert a.mismatches(a) == []


def test_bad_shapes_get_clear_errors():
    m = tiny("llama")
    kv = read_cache(m.model, _ids(m))
    with pytest.raises(ValueError, match="must both be"):
        KVCache(
            keys=[kv.keys[0]],
            values=[kv.values[0][:, :, :3]],
            attention_mask=kv.attention_mask,
            positions=kv.positions,
        )
    other = tiny("gemma3_text")
    with pytest.raises(ValueError, match="cannot inject a 3-layer cache into gemma3_text with 4 layers"):
        to_transformers(kv, other.model)
    wrong_heads = KVCache(
        keys=[k[:, :1] for k in kv.keys],
        values=[v[:, :1] for v in kv.values],
        attention_mask=kv.attention_mask,
        positions=kv.positions,
    )
    with pytest.raises(ValueError, match="1 kv heads"):
        to_transformers(wrong_heads, m.model)


def test_gradients_flow_from_target_into_injected_cache():
    m = tiny("gemma3_text")
    ids = _ids(m)
    kv = read_cache(m.model, ids[:, :PREFIX])
    leaf = [k.clone().requires_grad_(True) for k in kv.keys]
    kv.keys = leaf
    loss = forward_with_cache(m.model, kv, ids[:, PREFIX:]).logsumexp(-1).mean()
    loss.backward()
    assert all(k.grad is not None and k.grad.abs().sum() > 0 for k in leaf)


def test_bf16_target_accepts_fp32_cache():
    m = tiny("llama", dtype="bfloat16")
    ids = _ids(m)
    kv = read_cache(m.model, ids[:, :PREFIX]).to(dtype=torch.float32)
    logits = forward_with_cache(m.model, kv, ids[:, PREFIX:])
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
