"""Evaluation: metrics on constructed cases, the gap arithmetic, the identity projector equals the oracle,
reproducibility, and results never overwritten by accident."""

from __future__ import annotations

import json

import pytest
from conftest import tiny

from kvproj.eval import metrics
from kvproj.eval.facts import derangement
from kvproj.eval.run import evaluate
from kvproj.projectors import build_projector
from kvproj.projectors.io import save_projector


def test_exact_match_and_f1_on_constructed_cases():
    assert metrics.exact_match(" Paris, of course.\nQuestion: next", "paris") == 1.0
    assert metrics.exact_match("The Oakmont Insurance company", "Oakmont Insurance") == 1.0
    assert metrics.exact_match("Parisian food", "Paris") == 0.0  # whole words only
    assert metrics.exact_match("\nLyon", "Lyon") == 1.0  # leading newline is not the answer's end
    assert metrics.exact_match("Lyon", "") == 0.0
    assert metrics.token_f1("the red fox", "red") == pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))
    assert metrics.token_f1("blue", "red") == 0.0
    assert metrics.token_f1("red", "red") == 1.0


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    values = [1.0] * 30 + [0.0] * 70
    lo, hi = metrics.bootstrap_ci(values, seed=3)
    # the normal approximation: 0.3 +- 1.96 * sqrt(0.3 * 0.7 / 100) = [0.210, 0.390]
    assert lo == pytest.approx(0.21, abs=0.02) and hi == pytest.approx(0.39, abs=0.02)
    assert metrics.bootstrap_ci(values, seed=3) == [lo, hi]  # seeded: the same interval every time
    assert isinstance(lo, float) and isinstance(hi, float)  # plain floats: results.json
    assert metrics.bootstrap_ci([0.5] * 10) == [0.5, 0.5]
    assert metrics.bootstrap_ci([1.0, float("nan"), None, 1.0]) == [1.0, 1.0]  # NaN / None dropped
    lo99, hi99 = metrics.bootstrap_ci(values, seed=3, level=0.99, resamples=4000)
    assert lo99 < lo and hi < hi99
    many = [float(i % 2) for i in range(5001)]  # 5001 values x 1000 resamples: drawn in two blocks
    lo, hi = metrics.bootstrap_ci(many, seed=0)
    assert lo == pytest.approx(0.5 - 0.0139, abs=0.004) and hi == pytest.approx(0.5 + 0.0139, abs=0.004)


def test_gap_closed_arithmetic():
    assert metrics.gap_closed(0.3, 0.1, 0.5) == pytest.approx(0.5)
    assert metrics.gap_closed(0.5, 0.1, 0.5) == pytest.approx(1.0)
    assert metrics.gap_closed(3.0, 9.0, 1.0) == pytest.approx(0.75)  # NLL: lower is better, same formula
    assert metrics.gap_closed(0.3, 0.2, 0.2) is None


def test_derangement_has_no_fixed_point():
    for n in (2, 3, 16):
        perm = derangement(n, seed=1)
        assert sorted(perm) == list(range(n)) and all(i != p for i, p in enumerate(perm))


def _export(tmp_path, architecture: str, source: str, target: str):
    s, t = tiny(source), tiny(target)
    proj = build_projector(architecture, s.geometry, t.geometry)
    return save_projector(tmp_path / "proj", proj, s.spec.to_dict(), t.spec.to_dict())


def _eval_file(tmp_path):
    rows = [
        {"id": f"e{i}", "context": f"Mira Tolvane{i} keeps a heron named Quill{i}.", "question": f"What is the name of "
         f"Mira Tolvane{i}'s pet?", "answer": f"Quill{i}"} for i in range(6)
    ]  # fmt: skip
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_same_model_identity_projector_matches_the_oracle_exactly(tmp_path):
    proj = _export(tmp_path, "identity", "llama", "llama")
    results = evaluate(str(proj), eval_file=str(_eval_file(tmp_path)), output=str(tmp_path / "r" / "results.json"),
                       batch_size=4, max_new_tokens=6)  # fmt: skip
    c = results["conditions"]
    assert c["projected"]["answer_nll"] == pytest.approx(c["target_text"]["answer_nll"], abs=1e-5)
    assert c["projected"]["kl_to_oracle"] == pytest.approx(0.0, abs=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "r" / "generations.jsonl").read_text().splitlines()]
    by = {(r["id"], r["condition"]): r["generated"] for r in rows}
    assert all(by[(i, "projected")] == by[(i, "target_text")] for i, _ in by)  # same text, token for token
    assert set(c) == {"target_alone", "target_text", "source_text", "projected", "shuffled_source", "text_to_text",
                      "untrained"}  # fmt: skip
    assert len(rows) == 6 * 7
    assert set(rows[0]) == {"id", "condition", "prompt", "generated", "answer", "correct"}


def test_results_are_reproducible_and_never_overwritten(tmp_path):
    proj = _export(tmp_path, "linear", "llama", "gemma3_text")
    eval_file = str(_eval_file(tmp_path))
    common = dict(eval_file=eval_file, batch_size=3, max_new_tokens=4, seed=5,
                  conditions=("target_alone", "projected", "shuffled_source", "untrained"))  # fmt: skip
    a = evaluate(str(proj), output=str(tmp_path / "a" / "results.json"), **common)
    b = evaluate(str(proj), output=str(tmp_path / "b" / "results.json"), **common)
    for name in a["conditions"]:
        for k in ("exact_match", "f1", "answer_nll", "kl_to_oracle"):
            assert a["conditions"][name][k] == b["conditions"][name][k]
    assert (tmp_path / "a" / "generations.jsonl").read_text() == (tmp_path / "b" / "generations.jsonl").read_text()
    before = (tmp_path / "a" / "results.json").read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        evaluate(str(proj), output=str(tmp_path / "a" / "results.json"), **common)
    assert (tmp_path / "a" / "results.json").read_text() == before


def test_lm_task_reports_perplexity(tmp_path):
    proj = _export(tmp_path, "identity", "qwen2", "qwen2")
    texts = tmp_path / "t.txt"
    texts.write_text(
        "\n".join(f"The ferry from Harwick leaves at {i} and returns before dusk on weekdays." for i in range(5))
    )
    r = evaluate(
        str(proj), task="lm", eval_file=str(texts), output=str(tmp_path / "lm" / "results.json"), batch_size=5
    )
    c = r["conditions"]
    assert c["projected"]["perplexity"] == pytest.approx(c["target_text"]["perplexity"], rel=1e-5)
    assert c["target_alone"]["perplexity"] > 0 and c["projected"]["exact_match"] is None


def test_bad_eval_inputs(tmp_path):
    proj = _export(tmp_path, "linear", "llama", "qwen2")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "x", "question": "y"}\n')
    with pytest.raises(ValueError, match="missing key 'answer'"):
        evaluate(str(proj), eval_file=str(bad), output=str(tmp_path / "x" / "results.json"))
    with pytest.raises(ValueError, match="--task: got 'qa'"):
        evaluate(str(proj), task="qa", output=str(tmp_path / "y" / "results.json"))
