"""The small scripts behind docs/results: scripts/step_times.py reads the progress lines kvproj prints,
scripts/flips.py compares two runs' generations, scripts/near_misses.py counts how near one run's misses come,
and the others."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    if (
        str(ROOT / "scripts") not in sys.path
    ):  # as `python scripts/NAME.py` has it: the scripts share scripts/_output.py
        sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_times_joins_a_resumed_run(tmp_path):
    step_times = _load("step_times")
    first = tmp_path / "a.log"
    first.write_text(
        "INFO ridge start: fitted 2 target layers on 10 aligned positions (lambda 0.01)\n"
        "Training:  5%|5  | 1/20 [00:01<00:19]\r"
        "step 10/20 (50%) | train/loss 2.3140 | val/loss 2.4100 | 1,830 tok/s | 0.40 s/step | elapsed 0:00:08 | "
        "ETA 0:00:04\n"
        "2026-11-28 02:51:58,962 WARNING preempted: checkpoint at step 12 written to x/last.ckpt; exiting\n"
    )
    second = tmp_path / "b.log"
    second.write_text(
        "step 15/20 (75%) | train/loss 1.5000 | 900 tok/s | 0.80 s/step | elapsed 0:01:02 | ETA 0:00:04\n"
        "step 20/20 (100%) | train/loss nan | 900 tok/s | 0.60 s/step | elapsed 0:01:05 | ETA 0:00:00\n"
    )
    out = tmp_path / "st.json"
    assert step_times.main([str(first), str(second), "--command", "cmd", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["command"] == "cmd" and got["steps"] == "10 - 20"
    assert [p["step"] for p in got["progress"]] == [10, 15, 20]
    assert got["progress"][0]["train_loss"] == pytest.approx(2.314)
    assert (got["s_per_step_min"], got["s_per_step_median"], got["s_per_step_max"]) == (0.4, 0.6, 0.8)
    assert [p["tokens_per_step"] for p in got["progress"]] == [732, 720, 540]  # 1,830 x 0.40, 900 x 0.80, ...
    assert got["tokens_per_step_median"] == 720
    assert got["training_wall_clock"] == "0:01:13"  # 8 s before the preemption + 65 s after the resume
    assert len(got["events"]) == 1 and "preempted" in got["events"][0]
    assert got["ridge"] == ["INFO ridge start: fitted 2 target layers on 10 aligned positions (lambda 0.01)"]
    with pytest.raises(SystemExit):  # an existing output is kept unless --overwrite
        step_times.main([str(first), "--command", "cmd", "--json", str(out)])
    assert json.loads(out.read_text()) == got
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    with pytest.raises(SystemExit, match="no progress lines"):
        step_times.main([str(empty), "--command", "cmd", "--json", str(tmp_path / "e.json")])


def _curve_point(folder: Path, tag: str, step: int, em: float, shuffled: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    conditions = {
        "projected": {"exact_match": em, "answer_nll": 3.5, "ci95": {"exact_match": [em - 0.05, em + 0.05]}},
        "shuffled_source": {"exact_match": shuffled, "answer_nll": 9.0, "ci95": {"exact_match": [0.0, 0.01]}},
    }
    (folder / f"{tag}-step{step:07d}.json").write_text(json.dumps({"n": 100, "conditions": conditions}))


def test_gpu_curves_table_rows_per_run_and_step(tmp_path, capsys):
    table = _load("gpu_curves_table")
    (tmp_path / "runs.tsv").write_text("base\t\nwide\t--data.batch_size 64\n")
    _curve_point(tmp_path / "base" / "lightning_logs" / "base" / "eval", "narrative", 400, 0.2, 0.0)
    _curve_point(tmp_path / "base" / "lightning_logs" / "base" / "eval", "passages-test", 400, 0.3, 0.01)
    _curve_point(tmp_path / "base" / "lightning_logs" / "base" / "eval", "narrative", 678, 0.15, 0.0)
    _curve_point(tmp_path / "wide" / "lightning_logs" / "wide" / "eval", "narrative", 400, 0.25, 0.02)
    out = tmp_path / "t.json"
    assert table.main([str(tmp_path), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["run"], r["step"]) for r in rows] == [("base", 400), ("base", 678), ("wide", 400)]
    assert rows[0]["passages-test"]["projected_exact_match"] == 0.3 and rows[1]["passages-test"] is None
    assert rows[2]["overrides"] == "--data.batch_size 64" and rows[2]["narrative"]["shuffled_exact_match"] == 0.02
    printed = capsys.readouterr().out
    assert "| base | `(default)` | 678 | 0.15 [0.10, 0.20] | 3.50 | 0.00 | - | - | - |" in printed
    with pytest.raises(SystemExit, match="--overwrite"):
        table.main([str(tmp_path), "--json", str(out)])


def test_gpu_curves_table_refuses_a_folder_without_runs(tmp_path):
    table = _load("gpu_curves_table")
    with pytest.raises(SystemExit, match="runs.tsv: not found"):
        table.main([str(tmp_path)])


def test_local_corpus_keeps_prose_and_drops_markup(tmp_path):
    corpus = _load("local_corpus")
    body = (
        "# Heading line\n\n"
        "The library reads a file, checks every record against its schema and writes the clean rows to a new table.\n\n"
        "```python\nimport x\nx.run()\n```\n\n"
        "- a list item that says a few words about nothing in particular at all today.\n\n"
        ">>> print('hello')\n\n"
        "| a | b |\n|---|---|\n\n"
        "Installation is one command; the wheel carries its own compiled parts, so no compiler is needed here.\n"
    )
    kept = corpus.paragraphs(body)
    assert kept == [
        "The library reads a file, checks every record against its schema and writes the clean rows to a new table.",
        "Installation is one command; the wheel carries its own compiled parts, so no compiler is needed here.",
    ]
    out = tmp_path / "c.jsonl"
    assert corpus.main([str(out), "--min-chars", "100", "--max-chars", "600"]) == 0
    texts = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    assert texts and all(100 <= len(t) <= 600 for t in texts) and len(set(texts)) == len(texts)
    with pytest.raises(SystemExit, match="--overwrite"):
        corpus.main([str(out)])
    with pytest.raises(SystemExit, match="need 0 < min <= max"):
        corpus.main([str(tmp_path / "d.jsonl"), "--min-chars", "500", "--max-chars", "100"])


def _generations(path: Path, correct: dict[str, bool], condition: str = "projected") -> Path:
    rows = [
        {"id": k, "condition": condition, "answer": f"a-{k}", "generated": f" g-{k}", "correct": ok}
        for k, ok in correct.items()
    ]
    rows.append({"id": "x", "condition": "shuffled_source", "answer": "a-x", "generated": "", "correct": True})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_flips_lists_what_turns_right_and_wrong(tmp_path, capsys):
    flips = _load("flips")
    before = _generations(tmp_path / "before.jsonl", {"1": True, "2": False, "3": False, "4": True})
    after = _generations(tmp_path / "after.jsonl", {"1": True, "2": True, "3": False, "4": False, "5": True})
    out = tmp_path / "flips.json"
    assert flips.main([str(before), str(after), "--output", str(out)]) == 0
    got = json.loads(out.read_text())
    assert (got["examples"], got["correct_before"], got["correct_after"]) == (4, 2, 2)  # id 5 is not in both
    assert [r["id"] for r in got["right"]] == ["2"] and [r["id"] for r in got["wrong"]] == ["4"]
    assert got["right"][0] == {"id": "2", "answer": "a-2", "before": " g-2", "after": " g-2"}
    assert "2 -> 2 correct; 1 turn right, 1 turn wrong" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists"):  # an existing output is kept unless --overwrite
        flips.main([str(before), str(after), "--output", str(out)])
    with pytest.raises(SystemExit, match="no rows for 'text_to_text'"):
        flips.main([str(before), str(after), "--condition", "text_to_text"])
    other = _generations(tmp_path / "other.jsonl", {"9": True})
    with pytest.raises(SystemExit, match="share no example id"):
        flips.main([str(before), str(other)])


def test_read_generations_names_the_conditions_a_file_holds(tmp_path):
    from kvproj.eval.generations import read_generations, write_generations

    path = tmp_path / "generations.jsonl"
    write_generations(path, [{"id": "1", "condition": "projected"}, {"id": "1", "condition": "shuffled_source"}])
    assert read_generations(path, "shuffled_source") == [{"id": "1", "condition": "shuffled_source"}]
    with pytest.raises(ValueError, match="conditions there: projected, shuffled_source"):
        read_generations(path, "oracle")


def test_near_misses_counts_near_misses_overruns_and_listed_hits(tmp_path, capsys):
    rows = [
        ("Hamish Dunleavy", " Hamish Dunlebya, a ferry pilot", False),  # near miss
        ("1911", " 191111", False),  # overrun (and a near miss: "1911" starts it)
        ("Ludo", " Caspian Fairfield, Ludo Fairfield, Colum", True),  # listed, right but not first
        ("Ludo", " Ludo, Caspian, Colum", True),  # listed, right and first
        ("Pewsey Quay", " harbour", False),
    ]
    path = tmp_path / "generations.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": str(i), "condition": "projected", "answer": a, "generated": g, "correct": c}) + "\n"
            for i, (a, g, c) in enumerate(rows)
        )
    )
    out = tmp_path / "near.json"
    assert _load("near_misses").main([str(path), "--output", str(out)]) == 0
    got = json.loads(out.read_text())
    assert (got["examples"], got["correct"], got["correct_answer_first"], got["misses"]) == (5, 2, 1, 3)
    assert (got["near_misses"], got["overruns"], got["listed"], got["listed_correct_not_first"]) == (2, 1, 2, 1)
    assert got["listed_correct_not_first_examples"][0]["answer"] == "Ludo"
    assert json.loads(capsys.readouterr().out) == got
    out.write_text("{}")  # an existing output is kept unless --overwrite
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        _load("near_misses").main([str(path), "--output", str(out)])
    assert out.read_text() == "{}"
    assert _load("near_misses").main([str(path), "--output", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text()) == got


def test_answer_mix_classes_answers_and_reads_eval_and_training_sets(tmp_path):
    answer_mix = _load("answer_mix")
    path = tmp_path / "set.jsonl"
    rows = [("42", "q"), ("The Silver Goat", "q"), ("penguins", "q"), ("RT-884", "q")]
    path.write_text("".join(json.dumps({"context": "c", "question": q, "answer": a}) + "\n" for a, q in rows))
    out = tmp_path / "mix.json"
    sets = [str(path), "train:core", "train:core+balanced"]
    assert answer_mix.main([*sets, "--train_examples", "50", "--output", str(out)]) == 0
    got = json.loads(out.read_text())["sets"]
    assert got[str(path)] == {
        "examples": 4,
        "number": 0.25,
        "code": 0.25,
        "name_or_title": 0.25,
        "common_words": 0.25,
    }
    assert got["train:core"]["examples"] == 50
    for spec in ("train:core", "train:core+balanced"):
        assert sum(v for k, v in got[spec].items() if k != "examples") == pytest.approx(1.0, abs=0.01)
    assert got["train:core+balanced"] != got["train:core"]
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        answer_mix.main([str(path), "--output", str(out)])
    with pytest.raises(SystemExit, match="valid training sets are train:core, train:core\\+balanced, train:wide"):
        answer_mix.main(["train:all"])
    with pytest.raises(SystemExit, match="no such file"):
        answer_mix.main([str(tmp_path / "missing.jsonl")])
    with pytest.raises(SystemExit, match="--limit: got 0"):
        answer_mix.main([str(path), "--limit", "0"])


def test_answer_mix_scores_a_run_by_answer_kind(tmp_path):
    answer_mix = _load("answer_mix")
    gen = tmp_path / "generations.jsonl"
    rows = [("42", " 42", True), ("7", " 6, 7", True), ("RT-884", " RT-88", False), ("Hamish", " Hamish", True)]
    rows.append(("penguins", " penguins", True))
    gen.write_text(
        "".join(
            json.dumps({"id": str(i), "condition": c, "generated": g, "answer": a, "correct": ok}) + "\n"
            for c in ("projected", "target_alone")
            for i, (a, g, ok) in enumerate(rows)
        )
    )
    out = tmp_path / "kinds.json"
    assert answer_mix.main([f"run:{gen}", "--output", str(out)]) == 0
    got = json.loads(out.read_text())["sets"][f"run:{gen}"]
    assert got["examples"] == 5 and got["number"] == 0.4
    assert got["by_kind"] == {
        "number": {
            "examples": 2,
            "exact_match": 1.0,
            "answer_first": 0.5,
        },  # "6, 7" holds 7 but does not start with it
        "code": {"examples": 1, "exact_match": 0.0, "answer_first": 0.0},
        "name_or_title": {"examples": 1, "exact_match": 1.0, "answer_first": 1.0},
        "common_words": {"examples": 1, "exact_match": 1.0, "answer_first": 1.0},
    }
    assert got["exact_match"] == 0.8
    assert answer_mix.main([f"run:{gen}", "--exclude_ids", "0", "2", "--output", str(out), "--overwrite"]) == 0
    subset = json.loads(out.read_text())
    assert subset["exclude_ids"] == ["0", "2"] and subset["sets"][f"run:{gen}"]["examples"] == 3
    assert subset["sets"][f"run:{gen}"]["exact_match"] == 1.0
    with pytest.raises(
        SystemExit, match="--condition: no rows for 'oracle'.*conditions there: projected, target_alone"
    ):
        answer_mix.main([f"run:{gen}", "--condition", "oracle"])
    with pytest.raises(SystemExit, match="no such file; valid: run:GENERATIONS.jsonl"):
        answer_mix.main([f"run:{tmp_path / 'missing.jsonl'}"])


def test_rescore_reports_what_a_metric_change_moves(tmp_path):
    from kvproj.eval.generations import write_generations

    rescore = _load("rescore")
    runs = tmp_path / "runs" / "a"
    runs.mkdir(parents=True)
    rows = [
        {"id": "1", "condition": "target_text", "generated": " £133.50\nQ", "answer": "133.50", "correct": False},
        {"id": "2", "condition": "target_text", "generated": " Lyon", "answer": "Lyon", "correct": True},
        {"id": "1", "condition": "projected", "generated": " 133", "answer": "133.50", "correct": False},
    ]
    write_generations(runs / "x-generations.jsonl", rows)
    out = tmp_path / "rescore.json"
    assert rescore.main([str(tmp_path / "runs"), "--changed_only", "--output", str(out)]) == 0
    got = json.loads(out.read_text())
    assert (got["files"], got["rows_moved"]) == (1, 1)
    (scored,) = got["results"].values()
    assert list(scored) == ["target_text"]  # the condition that did not move is left out with --changed_only
    assert (scored["target_text"]["exact_match_written"], scored["target_text"]["exact_match_now"]) == (0.5, 1.0)
    assert scored["target_text"]["moved"][0]["id"] == "1" and scored["target_text"]["moved"][0]["was"] is False
    with pytest.raises(SystemExit, match="no such file or folder"):
        rescore.main([str(tmp_path / "nope")])
    write_generations(tmp_path / "bad-generations.jsonl", [{"id": "1", "condition": "projected"}])
    with pytest.raises(SystemExit, match="needs"):
        rescore.main([str(tmp_path / "bad-generations.jsonl")])


def test_rescore_rewrite_rebuilds_results_from_generations_and_refuses_before_writing(tmp_path):
    from kvproj.eval.generations import read_rows, write_generations

    rescore = _load("rescore")
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {"id": "1", "condition": "projected", "generated": " 2 degrees", "answer": "-2", "correct": True},
        {"id": "2", "condition": "projected", "generated": " Lyon", "answer": "Lyon", "correct": True},
    ]
    entry = {"exact_match": 1.0, "f1": 0.5, "answer_nll": 2.5, "ci95": {"exact_match": [1.0, 1.0], "f1": [0.0, 1.0],
             "answer_nll": [2.0, 3.0]}}  # fmt: skip
    written = {"task": "facts", "n": 2, "seed": 0, "conditions": {"projected": entry}, "gap_closed": {}}
    (run / "results.json").write_text(json.dumps(written))
    write_generations(run / "generations.jsonl", rows)
    lonely = tmp_path / "other" / "x-generations.jsonl"
    lonely.parent.mkdir()
    write_generations(lonely, rows)
    with pytest.raises(SystemExit, match="none for: .*x-generations.jsonl"):  # checked before anything is written
        rescore.main([str(run), str(lonely.parent), "--rewrite"])
    assert json.loads((run / "results.json").read_text()) == written
    out = tmp_path / "moved.json"
    assert rescore.main([str(run / "generations.jsonl"), "--rewrite", "--output", str(out)]) == 0
    got = json.loads((run / "results.json").read_text())
    assert got["conditions"]["projected"]["exact_match"] == 0.5  # "2 degrees" is no longer "-2"
    assert (
        got["conditions"]["projected"]["answer_nll"] == 2.5
        and "answer_first" not in got["conditions"]["projected"]
    )
    assert got["gap_closed"] == {"exact_match": None, "answer_nll": None}
    (record,) = got["rescored"]
    assert record["rows_moved"] == 1 and "--rewrite" in record["command"]
    assert [r["correct"] for r in read_rows(run / "generations.jsonl")] == [False, True]
    assert json.loads(out.read_text())["rewritten"] == [str(run / "results.json")]
    # a second pass finds nothing to move and writes nothing
    before = (run / "results.json").read_text()
    assert rescore.main([str(run / "generations.jsonl"), "--rewrite"]) == 0
    assert (run / "results.json").read_text() == before
    write_generations(run / "generations.jsonl", [dict(rows[0], condition="oracle"), rows[1]])
    with pytest.raises(SystemExit, match="conditions differ"):
        rescore.main([str(run / "generations.jsonl"), "--rewrite"])


def test_pairs_table_merges_files_of_one_row_and_keeps_an_existing_json(tmp_path, capsys):
    pairs_table = _load("pairs_table")

    def results(name: str, em: dict[str, float]) -> str:
        conditions = {k: {"exact_match": v, "ci95": {"exact_match": [v - 0.1, v + 0.1]}} for k, v in em.items()}
        path = tmp_path / name
        path.write_text(json.dumps({"eval_set": "narrative", "n": 10, "source": "s", "target": "t",
                                    "conditions": conditions}))  # fmt: skip
        return str(path)

    refs = results("refs.json", {"target_alone": 0.0, "target_text": 0.8, "text_to_text": 0.2, "projected": 0.1})
    run = results("run.json", {"projected": 0.5, "shuffled_source": 0.0})
    out = tmp_path / "table.json"
    assert (
        pairs_table.main([f"s -> t={refs}@target_alone+target_text+text_to_text,{run}", "--json", str(out)]) == 0
    )
    (summary,) = json.loads(out.read_text())["rows"]
    assert summary["label"] == "s -> t"
    assert summary["exact_match"]["projected"] == 0.5  # the refs file's projected is not taken
    assert summary["gap_closed"] == pytest.approx(0.625) and summary["over_text_to_text"] == pytest.approx(0.3)
    assert "| **0.50** [0.40, 0.60] | 0.00 | 0.20 | 0.62 | +0.30 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        pairs_table.main([f"A={run}", "--json", str(out)])
    with pytest.raises(SystemExit, match="has no condition"):
        pairs_table.main([f"A={run}@text_to_text"])
    with pytest.raises(SystemExit, match="no such results file"):
        pairs_table.main([f"A={tmp_path / 'nope.json'}"])


def test_curve_table_reads_callback_points_and_adds_gap_closed_from_references(tmp_path, capsys):
    curve_table = _load("curve_table")
    folder = tmp_path / "eval"
    folder.mkdir()

    def point(tag: str, step: int, em: float, n: int = 10) -> None:
        conditions = {
            "projected": {"exact_match": em, "answer_nll": 2.5, "ci95": {"exact_match": [em - 0.1, em + 0.1]}},
            "shuffled_source": {"exact_match": 0.0, "answer_nll": 9.0, "ci95": {"exact_match": [0.0, 0.0]}},
        }
        (folder / f"{tag}-step{step:07d}.json").write_text(
            json.dumps({"eval_set": tag, "global_step": step, "n": n, "conditions": conditions})
        )

    point("narrative", 400, 0.2)
    point("narrative", 800, 0.4)
    point("genres", 800, 0.3, n=6)  # a set evaluated at fewer steps leaves its cells empty at the others
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"n": 10, "conditions": {k: {"exact_match": v} for k, v in
                                {"target_alone": 0.0, "target_text": 0.8, "text_to_text": 0.1, "projected": 0.7}.items()}}))  # fmt: skip
    out = tmp_path / "curve.json"
    assert curve_table.main([str(folder), "--references", f"narrative={refs}", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["step"] for r in rows] == [400, 800] and "genres" not in rows[0]
    assert rows[1]["narrative"]["gap_closed"] == pytest.approx(0.5)
    assert rows[1]["narrative"]["over_text_to_text"] == pytest.approx(0.3)
    assert rows[1]["genres"] == {"n": 6, "projected": 0.3, "ci95": [pytest.approx(0.2), 0.4], "answer_nll": 2.5,
                                 "shuffled": 0.0}  # fmt: skip
    printed = capsys.readouterr().out
    assert "| 400 | - | - | - | 0.20 [0.10, 0.30] | 2.50 | 0.00 | 0.25 | +0.10 |" in printed
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        curve_table.main([str(folder), "--output", str(out)])
    with pytest.raises(SystemExit, match="has n=10, the curve's genres points have n=\\[6\\]"):
        curve_table.main([str(folder), "--references", f"genres={refs}"])
    with pytest.raises(SystemExit, match="no set 'passages-test'"):
        curve_table.main([str(folder), "--references", f"passages-test={refs}"])
    assert curve_table.main([str(folder), "--sets", "narrative"]) == 0
    assert "genres" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--sets: the curve has no set \\['lm'\\]"):
        curve_table.main([str(folder), "--sets", "narrative", "lm"])
    with pytest.raises(SystemExit, match="no <set>-step<N>.json files"):
        curve_table.main([str(tmp_path)])


def test_alignment_stats_counts_target_tokens_over_several_source_tokens(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from kvproj.models import load_tokenizer

    alignment_stats = _load("alignment_stats")
    words = Tokenizer(models.WordLevel({"Ada": 0, "met": 1, "Bob": 2, ".": 3, "[UNK]": 4}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    target = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]")
    source = load_tokenizer("tiny:llama")  # one token per byte
    examples = [{"context": "Ada met Bob.", "question": "Who?", "answer": "Bob"}] * 2  # one context, counted once
    stats = alignment_stats.set_stats(examples, source, target)
    assert stats["contexts"] == 1 and stats["target_tokens"] == 4 and stats["source_tokens"] == 12
    # "Ada", "met" and "Bob" each overlap three byte tokens, "." one; no gathered byte reads past its word
    assert stats["several_sources_share"] == 0.75 and stats["one_to_one_share"] == 0.25
    assert stats["reads_past_share"] == 0.0 and stats["unaligned_share"] == 0.0
    assert (
        stats["answers_stated"] == 2
        and stats["answer_tokens"] == 2
        and stats["answer_several_sources_share"] == 1.0
    )
    # the other way round the gathered source word covers characters after the first two bytes of each word
    back = alignment_stats.set_stats(examples, target, source)
    assert back["several_sources_share"] == 0.0 and back["reads_past_share"] == pytest.approx(6 / 12)

    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps(examples[0]) + "\n")
    out = tmp_path / "stats.json"
    assert alignment_stats.main(["--source", "tiny:llama", "--target", "tiny:qwen2", "--eval_file", str(data),
                                 "--output", str(out)]) == 0  # fmt: skip
    same = json.loads(out.read_text())["sets"][str(data)]
    assert (
        same["one_to_one_share"] == 1.0 and same["several_sources_share"] == 0.0
    )  # one byte tokenizer both sides
    assert "| 1 | 1.000 | 1.000 | 0.000 | 0.000 | 3 | 0.000 | 0.000 |" in capsys.readouterr().out  # "Bob": 3 bytes
    with pytest.raises(SystemExit, match="no such file"):
        alignment_stats.main(["--source", "tiny:llama", "--target", "tiny:llama", "--eval_file", "nope.jsonl"])
    with pytest.raises(SystemExit, match="--limit: got 0"):
        alignment_stats.main(["--source", "tiny:llama", "--target", "tiny:llama", "--eval_file", "narrative",
                              "--limit", "0"])  # fmt: skip
