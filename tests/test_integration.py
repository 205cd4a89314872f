"""Integration tier: real pretrained models from the offline zoo (SmolLM2-135M; CI installs it via `make test`).
Heavier zoo models are marked `heavy`."""

from __future__ import annotations

import pytest
import torch

from kvproj import zoo
from kvproj.cache import generate_with_cache, read_cache, to_transformers
from kvproj.doctor import check_model
from kvproj.models import load_model

pytestmark = pytest.mark.integration

SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():
    if not zoo.is_converted(SMOLLM2):
        zoo.install(SMOLLM2)
    return load_model(SMOLLM2)


def test_doctor_checks_pass_on_smollm2(smollm2):
    report = check_model(smollm2)
    assert report["ok"], report
    assert report["injection_max_abs_err"] <= 1e-4 and report["rope_roundtrip_max_abs_err"] <= 1e-4
    assert (report["layers"], report["kv_heads"], report["head_dim"]) == (30, 3, 64)


def test_greedy_text_same_with_and_without_a_round_tripped_cache(smollm2):
    tok, model = smollm2.tokenizer, smollm2.model
    prompts = ["The capital of France is", "def fibonacci(n):\n    "]
    batch = tok(prompts, return_tensors="pt", padding=True)  # left padding
    ids, mask = batch.input_ids, batch.attention_mask
    plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                           pad_token_id=tok.pad_token_id)[:, ids.shape[1]:]  # fmt: skip
    kv = read_cache(model, ids[:, :-1], mask[:, :-1])
    # round trip through transformers' cache class and back into kvproj's format
    hf = to_transformers(kv, model)
    kv.keys = [layer.keys.clone() for layer in hf.layers]
    kv.values = [layer.values.clone() for layer in hf.layers]
    injected = generate_with_cache(model, kv, ids[:, -1:], mask[:, -1:], max_new_tokens=12)
    assert torch.equal(injected, plain), (tok.batch_decode(plain), tok.batch_decode(injected))
    assert "Paris" in tok.decode(plain[0])


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["gemma3-270m", "qwen2.5-coder-0.5b-instruct"])
def test_doctor_checks_pass_on_heavier_zoo_models(name):
    if not zoo.is_converted(name):
        pytest.skip(f"{name} is not installed: python -m kvproj zoo install {name}")
    report = check_model(load_model(name))
    assert report["ok"], report
