"""The one KL-to-oracle definition (kvproj.losses), checked against a hand computation."""

import math

import pytest
import torch

from kvproj.losses import kl_per_example, kl_per_token, kl_to_oracle


def _hand_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_kl_per_token_is_kl_of_oracle_to_student():
    oracle = torch.tensor([[2.0, 0.0, -1.0]])
    student = torch.tensor([[0.0, 1.0, 0.5]])
    p = torch.softmax(oracle, -1)[0].tolist()
    q = torch.softmax(student, -1)[0].tolist()
    got = kl_per_token(student, oracle).item()
    assert got == pytest.approx(_hand_kl(p, q), rel=1e-5)
    # the direction matters: KL(student || oracle) is a different number here
    assert abs(got - _hand_kl(q, p)) > 1e-3
    assert kl_per_token(oracle, oracle).item() == pytest.approx(0.0, abs=1e-6)


def test_per_example_mean_and_the_training_loss_weigh_examples_alike():
    torch.manual_seed(0)
    student, oracle = torch.randn(5, 7), torch.randn(5, 7)
    example = torch.tensor([0, 0, 0, 2, 2])  # example 1 has no scored position
    per_token = kl_per_token(student, oracle)
    per_example = kl_per_example(student, oracle, example, 4)
    assert per_example[0].item() == pytest.approx(per_token[:3].mean().item(), rel=1e-6)
    assert math.isnan(per_example[1].item()) and math.isnan(per_example[3].item())
    assert per_example[2].item() == pytest.approx(per_token[3:].mean().item(), rel=1e-6)
    # the loss is the mean over examples (not over tokens): 3 tokens of example 0 do not outweigh example 2
    loss = kl_to_oracle(student, oracle, example, 4).item()
    assert loss == pytest.approx((per_token[:3].mean() + per_token[3:].mean()).item() / 2, rel=1e-6)
    assert loss != pytest.approx(per_token.mean().item(), rel=1e-3)
