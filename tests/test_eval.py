"""Evaluation: metrics on constructed cases, the gap arithmetic, the identity projector equals the oracle,
reproducibility, and results never overwritten by accident."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import tiny

from kvproj.data.facts import EvalFileError
from kvproj.eval import metrics
from kvproj.eval.facts import derangement
from kvproj.eval.rescore import RescoreError, rescore_results
from kvproj.eval.run import evaluate
from kvproj.projectors import build_projector
from kvproj.projectors.io import ProjectorFolderError, ProjectorMismatchError, save_projector


def test_exact_match_and_f1_on_constructed_cases():
    assert metrics.exact_match(" Paris, of course.\nQuestion: next", "paris") == 1.0
    assert metrics.exact_match("The Oakmont Insurance company", "Oakmont Insurance") == 1.0
    assert metrics.exact_match("Parisian food", "Paris") == 0.0  # whole words only
    assert metrics.exact_match("\nLyon", "Lyon") == 1.0  # leading newline is not the answer's end
    assert metrics.exact_match("Lyon", "") == 0.0
    # currency signs and Unicode punctuation separate words like ASCII punctuation does
    assert metrics.exact_match(" £133.50\nQuestion: next", "133.50") == 1.0
    assert metrics.exact_match(" €40 and ¥900", "40") == 1.0 and metrics.exact_match(" ¥900", "900") == 1.0
    assert metrics.exact_match(" the ferry—Marigold", "Marigold") == 1.0
    assert metrics.exact_match(" “Marigold”…", "marigold") == 1.0
    assert metrics.exact_match(" £1335", "133") == 0.0  # still whole words only
    # a minus sign that starts a number is part of it; a hyphen between words or digits is not
    assert metrics.exact_match(" 13 degrees, with a 23 km/h in 2", "-2") == 0.0
    assert metrics.exact_match(" -2 degrees", "-2") == 1.0 and metrics.exact_match(" at \u22122 °C", "-2") == 1.0
    assert metrics.exact_match(" -2 degrees", "2") == 0.0 and metrics.exact_match(" (-4.5)", "-4.5") == 1.0
    assert metrics.exact_match(" 3-5 days", "5") == 1.0 and metrics.exact_match(" AB-12", "AB 12") == 1.0
    assert metrics.exact_match(" well-known", "known") == 1.0
    assert metrics.token_f1("the red fox", "red") == pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))
    assert metrics.token_f1("blue", "red") == 0.0
    assert metrics.token_f1("red", "red") == 1.0
    # a near miss names the entity, not its exact spelling; the first line only; short words do not count
    assert metrics.near_miss(" Hamish Dunlebya, Hamish", "Hamish Dunleavy")
    assert metrics.near_miss(" Tessalville, Alabama", "Tessaluna")
    assert not metrics.near_miss(" 412 pounds", "412 kilograms")  # no answer word of 4+ characters in the line
    assert not metrics.near_miss(" leeks, leeks\nRoman coin", "a Roman coin")
    assert not metrics.near_miss(" pink", "red")
    assert metrics.answer_first(" Oriel Tamsworth, surveyor", "Oriel Tamsworth") == 1.0
    assert metrics.answer_first(" The Ticking Gull\nmore", "The Ticking Gull") == 1.0
    assert (
        metrics.answer_first(" 13 degrees, 32 degrees, 37 degrees", "32") == 0.0
    )  # a list: exact_match credits it
    assert metrics.exact_match(" 13 degrees, 32 degrees, 37 degrees", "32") == 1.0
    assert metrics.answer_first(" 321", "32") == 0.0 and metrics.answer_first("", "32") == 0.0
    assert metrics.overrun(" Oriel Tamsworthsmith Surveyor", "Oriel Tamsworth")
    assert metrics.overrun(" 191111111", "1911") and metrics.overrun(" 477, bed 477", "47")
    assert not metrics.overrun(" Oriel Tamsworth, surveyor", "Oriel Tamsworth")  # an exact match
    assert not metrics.overrun(" jigsaw puzzle jigsaw books", "jigsaw puzzles")  # short, not run on
    assert not metrics.overrun(" Ramona Poskitt", "Henrietta Poskitt")
    assert not metrics.overrun(" 312\n3122", "312")  # only the first line counts
    assert metrics.listed(" Caspian Fairfield, Ludo Fairfield, Colum") and not metrics.listed(" Ludo, the dog")
    assert not metrics.listed(" Ludo\nA, B, C") and metrics.listed(" A, B\n", items=2)


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


def test_derangement_by_context_never_hands_an_example_its_own_passage():
    contexts = ["a", "a", "a", "b", "b", "c", "d", "e"]
    for seed in range(20):
        perm = derangement(len(contexts), seed, contexts)
        assert sorted(perm) == list(range(len(contexts)))
        assert all(contexts[i] != contexts[p] for i, p in enumerate(perm))
    distinct = [str(i) for i in range(16)]
    assert derangement(16, 3, distinct) == derangement(16, 3)  # distinct contexts: the permutation as before
    with pytest.raises(ValueError, match=r"shuffled_source: 2 of the 2 examples of a batch share one context"):
        derangement(2, 0, ["a", "a"])
    with pytest.raises(ValueError, match=r"3 of the 5 examples"):
        derangement(5, 0, ["a", "a", "a", "b", "c"])


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
    assert set(rows[0]) == {
        "id",
        "condition",
        "prompt",
        "generated",
        "answer",
        "correct",
        "answer_nll",
        "kl_to_oracle",
    }

    # scored again from its own generations, the run's results come back exactly (intervals' seeds included)
    written = json.loads((tmp_path / "r" / "results.json").read_text())
    assert rescore_results(written, rows) == (written, rows, 0)
    # a metric that now reads 4 oracle answers and 2 projected ones right: means, intervals, gap and rows follow
    edited = [dict(r) for r in rows]
    now_right = {("target_text", f"e{i}") for i in range(4)} | {("projected", "e0"), ("projected", "e5")}
    for r in edited:
        if (r["condition"], r["id"]) in now_right:
            r["generated"] = f" {r['answer']}.\nQuestion:"
    again, scored, moved = rescore_results(written, edited)
    assert moved == 6 and sum(r["correct"] for r in scored) == 6 and not any(r["correct"] for r in rows)
    order = list(written["conditions"])
    for name, right in (("target_text", [1.0] * 4 + [0.0] * 2), ("projected", [1.0, 0, 0, 0, 0, 1.0])):
        got = again["conditions"][name]
        assert got["exact_match"] == pytest.approx(sum(right) / 6)
        seed = metrics.condition_seed(0, order.index(name))
        assert got["ci95"]["exact_match"] == metrics.bootstrap_ci(right, seed=seed, resamples=1000)
        assert got["answer_nll"] == written["conditions"][name]["answer_nll"]  # model numbers kept
    assert again["gap_closed"]["exact_match"] == pytest.approx(0.5)
    assert written == json.loads((tmp_path / "r" / "results.json").read_text())  # inputs untouched
    with pytest.raises(RescoreError, match="conditions differ"):
        rescore_results(written, [r for r in rows if r["condition"] != "untrained"])
    with pytest.raises(RescoreError, match="projected: 5 generations for n=6"):
        rescore_results(written, [r for r in rows if (r["condition"], r["id"]) != ("projected", "e5")])


def test_fuse_projector_adds_to_the_target_reading_the_text(tmp_path):
    # the shared-context protocol: a fuse projector at its zero start adds nothing, so `projected` is the oracle
    s, t = tiny("llama"), tiny("gemma3_text")
    proj = build_projector("linear", s.geometry, t.geometry, mode="fuse")
    folder = save_projector(tmp_path / "proj", proj, s.spec.to_dict(), t.spec.to_dict())
    conditions = ("target_alone", "target_text", "projected", "shuffled_source")
    results = evaluate(str(folder), eval_file=str(_eval_file(tmp_path)), output=str(tmp_path / "r" / "results.json"),
                       batch_size=4, max_new_tokens=6, conditions=conditions)  # fmt: skip
    c = results["conditions"]
    assert c["projected"]["answer_nll"] == pytest.approx(c["target_text"]["answer_nll"], abs=1e-5)
    # the fuse control keeps the target's own cache of this context: with nothing added it is the oracle too
    assert c["shuffled_source"]["answer_nll"] == pytest.approx(c["target_text"]["answer_nll"], abs=1e-5)
    assert c["projected"]["answer_nll"] != pytest.approx(c["target_alone"]["answer_nll"], abs=1e-3)
    rows = [json.loads(line) for line in (tmp_path / "r" / "generations.jsonl").read_text().splitlines()]
    by = {(r["id"], r["condition"]): r["generated"] for r in rows}
    assert all(by[(i, "projected")] == by[(i, "target_text")] for i, _ in by)
    # a nonzero residual moves it away from the oracle: the projection is really added
    with torch.no_grad():
        for p in proj.parameters():
            p.normal_(std=0.5)
    moved = save_projector(tmp_path / "moved", proj, s.spec.to_dict(), t.spec.to_dict())
    again = evaluate(str(moved), eval_file=str(_eval_file(tmp_path)), output=str(tmp_path / "m" / "results.json"),
                     batch_size=4, max_new_tokens=6, conditions=conditions)  # fmt: skip
    c = again["conditions"]
    assert c["projected"]["answer_nll"] != pytest.approx(c["target_text"]["answer_nll"], abs=1e-3)
    # another example's source, added to this example's own cache: not the same as the projected cache
    assert c["shuffled_source"]["answer_nll"] != pytest.approx(c["projected"]["answer_nll"], abs=1e-4)


def test_fuse_text_to_text_reads_the_context_and_the_hint(tmp_path, monkeypatch):
    # shared-context protocol: the target reads head + context + hint; masked: head + hint only
    from kvproj.eval.facts import FactsEvaluator

    lengths: list[int] = []
    real = FactsEvaluator._hint_prefix

    def spy(self, batch, raw):
        cache, hints = real(self, batch, raw)
        lengths.append(cache.length)
        return cache, hints

    monkeypatch.setattr(FactsEvaluator, "_hint_prefix", spy)
    s, t = tiny("llama"), tiny("gemma3_text")
    found = {}
    for mode in ("replace", "fuse"):
        proj = build_projector("linear", s.geometry, t.geometry, mode=mode)
        folder = save_projector(tmp_path / mode, proj, s.spec.to_dict(), t.spec.to_dict())
        lengths.clear()
        evaluate(str(folder), eval_file=str(_eval_file(tmp_path)), output=str(tmp_path / f"r{mode}" / "results.json"),
                 batch_size=6, max_new_tokens=4, conditions=("text_to_text",))  # fmt: skip
        rows = [
            json.loads(line) for line in (tmp_path / f"r{mode}" / "generations.jsonl").read_text().splitlines()
        ]
        found[mode] = (lengths[0], rows)
    rows = [json.loads(line) for line in _eval_file(tmp_path).read_text().splitlines()]
    shortest_context = min(len(t.tokenizer(r["context"], add_special_tokens=False).input_ids) for r in rows)
    # same seeded hints in both modes; the fuse prefix holds every context token on top (+1 for the line break)
    assert found["fuse"][0] >= found["replace"][0] + shortest_context
    assert all(r["prompt"].startswith("[hint] ") for r in found["replace"][1])
    assert all(r["prompt"].startswith("Mira Tolvane") and "\n[hint] " in r["prompt"] for r in found["fuse"][1])


def test_results_are_reproducible_and_never_overwritten(tmp_path):
    proj = _export(tmp_path, "linear", "llama", "gemma3_text")
    eval_file = str(_eval_file(tmp_path))
    common = dict(eval_file=eval_file, batch_size=3, max_new_tokens=4, seed=5,
                  conditions=("target_alone", "projected", "shuffled_source", "untrained"))  # fmt: skip
    a = evaluate(str(proj), output=str(tmp_path / "a" / "results.json"), **common)
    b = evaluate(str(proj), output=str(tmp_path / "b" / "results.json"), **common)
    for name in a["conditions"]:
        for k in ("exact_match", "answer_first", "f1", "answer_nll", "kl_to_oracle"):
            assert a["conditions"][name][k] == b["conditions"][name][k]
        assert a["conditions"][name]["answer_first"] <= a["conditions"][name]["exact_match"]
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


# --- every cheap input is checked before a model is loaded ----------------------------------------------------------


def broken_projector(tmp_path, kind: str) -> str:
    """A projector folder with one thing wrong: "missing", "truncated" config, "weights" of another export,
    "tiny" overrides of absurd size, "geometry" (names models of another geometry than it was trained for)."""
    import shutil

    proj = _export(tmp_path / "good", "linear", "llama", "qwen2")
    config = proj / "projector_config.json"
    if kind == "missing":
        return str(tmp_path / "no-such-projector")
    if kind == "truncated":
        config.write_text(config.read_text()[:200])
    elif kind == "weights":
        other = _export(tmp_path / "other", "linear", "llama", "llama")
        shutil.copy(other / "projector.safetensors", proj / "projector.safetensors")
    elif kind in ("tiny", "geometry"):
        data = json.loads(config.read_text())
        if kind == "tiny":
            data["source"]["spec"]["tiny"] = {"hidden_size": 8192, "num_hidden_layers": 64}
        else:
            data["source"]["spec"]["name"] = "tiny:qwen2"  # trained on tiny:llama's cache
        config.write_text(json.dumps(data))
    return str(proj)


def bad_eval_file(tmp_path) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"context": "a", "question": "b", "answer": "c"}\n{"context": "a", "question": "b"\n')
    return str(path)


# (evaluate kwargs, error, message); "P" = a good projector folder, "E" = a good eval file
CHEAP_INPUT_CASES = {
    "batch_size": (dict(batch_size=0), ValueError, "--batch_size: must be a whole number >= 1, got 0"),
    "max_new_tokens": (dict(max_new_tokens=0), ValueError, "--max_new_tokens: must be a whole number >= 1, got 0"),
    "limit": (dict(limit=0), ValueError, "--limit: must be a whole number >= 1"),
    "split": (dict(eval_file=None, split="train"), ValueError, "--split: got 'train'; valid: test, "),
    "task": (dict(task="qa"), ValueError, "--task: got 'qa'; valid: facts, lm"),
    "conditions": (dict(conditions=("projected", "oracle")), ValueError, r"unknown: \['oracle'\]"),
    "no conditions": (dict(conditions=()), ValueError, "--conditions: got \\[\\]; give one or more of"),
    "twice": (dict(conditions=("projected", "projected")), ValueError, "names a condition twice"),
    "lm conditions": (
        dict(task="lm", conditions=("source_text",)),
        ValueError,
        "none of them applies to --task lm",
    ),
    "lm without file": (dict(task="lm", eval_file=None), ValueError, "--task lm needs --eval_file"),
    "eval file missing": (
        dict(eval_file="nope.jsonl"),
        FileNotFoundError,
        "--eval_file .*nope.jsonl: no such file; give a JSONL file .*, a bundled set \\(narrative, genres\\) or "
        "generated passages of held-out genres \\(passages:val, passages:test\\)",
    ),
    "eval file bad": (dict(eval_file="BAD"), EvalFileError, r"bad.jsonl:2: "),
    "output exists": (dict(output="EXISTS"), FileExistsError, "pass --overwrite to replace them"),
    "output in a file": (dict(output="FILE/r/results.json"), ValueError, "is a file, so no folder can be made"),
    "output named generations": (dict(output="out/generations.jsonl"), ValueError, "generations.jsonl is written"),
    "no projector": (dict(projector="missing"), FileNotFoundError, "not an exported projector folder"),
    "truncated config": (dict(projector="truncated"), ProjectorFolderError, "is not valid JSON"),
    "weights of another export": (dict(projector="weights"), ProjectorFolderError, "does not match"),
    "absurd tiny overrides": (dict(projector="tiny"), ValueError, "tiny overrides .* above the limit of 50M"),
}


def cheap_case(tmp_path, kwargs: dict) -> dict:
    """Fill in the placeholders of a CHEAP_INPUT_CASES entry."""
    kwargs = dict(projector="good", eval_file="E", output="out/results.json") | kwargs
    (tmp_path / "FILE").write_text("a file, not a folder")
    (tmp_path / "EXISTS").write_text("earlier results")
    kwargs["projector"] = broken_projector(tmp_path, kwargs["projector"])
    if kwargs["eval_file"]:
        special = {"E": str(_eval_file(tmp_path)), "BAD": bad_eval_file(tmp_path)}
        kwargs["eval_file"] = special.get(kwargs["eval_file"], str(tmp_path / kwargs["eval_file"]))
    kwargs["output"] = str(tmp_path / kwargs["output"])
    return kwargs


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(spec):
        raise AssertionError(f"a model was loaded ({spec}) before the inputs were checked")

    monkeypatch.setattr("kvproj.pair.load_model", refuse)


@pytest.mark.parametrize("case", list(CHEAP_INPUT_CASES))
def test_cheap_inputs_are_checked_before_any_model_loads(tmp_path, no_model_loads, case):
    overrides, error, message = CHEAP_INPUT_CASES[case]
    kwargs = cheap_case(tmp_path, overrides)
    with pytest.raises(error, match=message):
        evaluate(**kwargs)
    assert not (tmp_path / "out").exists()  # nothing written, not even a folder
    assert (tmp_path / "EXISTS").read_text() == "earlier results"


def test_models_of_another_geometry_are_refused(tmp_path):
    with pytest.raises(ProjectorMismatchError, match="trained for a source cache of .* model 'tiny:qwen2' has"):
        evaluate(broken_projector(tmp_path, "geometry"), eval_file=str(_eval_file(tmp_path)),
                 output=str(tmp_path / "out" / "results.json"))  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_the_projector_folder_names_its_models_before_they_load(tmp_path, monkeypatch, caplog):
    from kvproj import pair

    proj = _export(tmp_path, "linear", "llama", "qwen2")
    logged_before: list[list[str]] = []
    real = pair.load_model

    def spy(spec):
        logged_before.append([r.getMessage() for r in caplog.records if r.name == "kvproj.pair"])
        return real(spec)

    monkeypatch.setattr(pair, "load_model", spy)
    with caplog.at_level(logging.INFO, logger="kvproj"):
        pair.load_transfer(proj)
    first = logged_before[0]
    assert len(first) == 2 and all(r.startswith(f"loading the {side} model named by {proj}") for r, side in
                                   zip(first, ("source", "target")))  # fmt: skip
    assert "tiny:llama" in first[0] and "tiny:qwen2" in first[1]


def test_progress_lines_when_not_a_terminal(tmp_path, caplog):
    proj = _export(tmp_path, "identity", "llama", "llama")
    with caplog.at_level(logging.INFO, logger="kvproj"):
        evaluate(str(proj), eval_file=str(_eval_file(tmp_path)), output=str(tmp_path / "p" / "results.json"),
                 batch_size=2, max_new_tokens=2, conditions=("target_alone", "projected"))  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluated ")]
    assert [line.split(",")[0] for line in lines] == ["evaluated 2/6 examples", "evaluated 4/6 examples",
                                                      "evaluated 6/6 examples"]  # fmt: skip


def test_ttft_benchmark_times_every_condition_at_every_length(tmp_path):
    """benchmarks/ttft.py on tiny models: one row per condition and length, contexts at least as long as asked,
    ratios to target_text, and an existing --json is not overwritten by accident."""
    import importlib.util
    import json

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("ttft", ROOT / "benchmarks" / "ttft.py")
    ttft = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ttft)
    out = tmp_path / "ttft.json"
    args = ["--source", "tiny:llama", "--target", "tiny:qwen2", "--lengths", "80", "200", "--repeats", "1",
            "--hint_tokens", "4", "--json", str(out)]  # fmt: skip
    assert ttft.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["length"], r["condition"]) for r in rows] == [
        (n, c) for n in (80, 200) for c in ("target_text", "projected", "text_to_text")
    ]
    assert all(r["context_tokens"] >= r["length"] and r["ms"] > 0 for r in rows)
    assert all(r["ratio_to_target_text"] == 1.0 for r in rows if r["condition"] == "target_text")
    with pytest.raises(SystemExit):
        ttft.main(args)  # --json exists, no --overwrite
