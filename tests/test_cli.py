"""The command line: one usage text naming every command; `evaluate`, `doctor` and `zoo` take the options of their
functions' typed signatures (help generated from the docstrings, no abbreviations), keep the flags users type, and
exit 2 with the message, not a traceback, on bad input."""

from __future__ import annotations

import inspect
import json
import logging

import pytest
from test_eval import _eval_file, _export, broken_projector

from kvproj import zoo
from kvproj.cli import command_parser, main, shell_style, zoo_commands
from kvproj.doctor import doctor
from kvproj.eval.run import evaluate


@pytest.fixture
def cli(capsys):
    """Run `python -m kvproj ARGS` in-process: (exit status, stdout, stderr). Restores the kvproj logger after."""
    logger = logging.getLogger("kvproj")
    saved = list(logger.handlers), logger.level, logger.propagate

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # jsonargparse rejects bad options with the usage and exit status 2
            code = exit_.code
        out, err = capsys.readouterr()
        return code, out, " ".join(err.split())  # rich wraps long lines

    yield run
    logger.handlers[:], logger.propagate = saved[0], saved[2]
    logger.setLevel(saved[1])


def test_usage_names_every_command(cli):
    code, out, err = cli()
    assert code == 2 and out == ""
    for command in ("fit", "validate", "test", "predict", "evaluate", "zoo list", "zoo install", "zoo path",
                    "zoo requirements", "doctor", "experiment", "--help"):  # fmt: skip
        assert command in err
    code, _, err = cli("train")
    assert code == 2 and "unknown command 'train'" in err and "zoo requirements" in err
    code, out, _ = cli("--help")
    assert code == 0 and "zoo requirements NAME" in out


COMMAND_FUNCTIONS = {"evaluate": evaluate, "doctor": doctor, **{f"zoo {k}": f for k, f in zoo_commands().items()}}


@pytest.mark.parametrize("command", list(COMMAND_FUNCTIONS))
def test_options_are_the_functions_signature_and_docstring(command):
    func = COMMAND_FUNCTIONS[command]
    positional = command.startswith("zoo")
    text = " ".join(command_parser(func, f"kvproj {command}", positional=positional).format_help().split())
    assert inspect.getdoc(func).split()[0] in text  # the description
    for name, param in inspect.signature(func).parameters.items():
        # zoo commands take their required arguments as words (NAME ...) and the optional ones as --options
        is_word = positional and param.default is inspect.Parameter.empty
        assert (f"--{name}" in text) != is_word, name
        if not is_word:
            default = "null" if param.default is None else param.default
            assert f"default: {default}" in text or param.default is inspect.Parameter.empty, name
    doc = " ".join(inspect.getdoc(func).split("Args:")[-1].split())
    for name in inspect.signature(func).parameters:  # every parameter's docstring line is its help
        first_words = " ".join(doc.split(f"{name}: ", 1)[1].split()[:3])
        assert first_words in text, name


def test_argparse_habits_are_kept():
    assert shell_style(evaluate, ["--projector", "d", "--conditions", "a", "b", "--overwrite", "--limit", "3"]) == [
        "--projector", "d", "--conditions", '["a", "b"]', "--overwrite", "true", "--limit", "3"
    ]  # fmt: skip
    unchanged = ["--conditions", "[a,b]", "--overwrite", "false", "--output", "o.json"]
    assert shell_style(evaluate, unchanged) == unchanged
    assert shell_style(doctor, ["--no-zoo", "--json", "--device", "cuda"]) == [
        "--zoo", "false", "--json", "true", "--device", "cuda"
    ]  # fmt: skip
    assert shell_style(doctor, ["--no_zoo"]) == ["--zoo", "false"]
    assert shell_style(zoo.install_command, ["a", "b"], positional=True) == ['["a", "b"]']
    assert shell_style(zoo.install_command, ["[a,b]"], positional=True) == ["[a,b]"]


def test_abbreviations_and_unknown_values_are_refused(cli, tmp_path):
    code, _, err = cli("evaluate", "--proj", str(tmp_path))
    assert code == 2 and "unrecognized arguments: --proj" in err
    code, _, err = cli("evaluate", "--projector", str(tmp_path), "--task", "qa")
    assert code == 2 and 'key "task"' in err and "Got value: qa" in err and "'lm'" in err
    code, _, err = cli("evaluate", "--projector", str(tmp_path), "--conditions", "projected", "oracle")
    assert code == 2 and "Got value: oracle" in err
    code, _, err = cli("doctor", "--dtype", "float64")
    assert code == 2 and "Got value: float64" in err
    code, _, err = cli("zoo", "req", "x")
    assert code == 2 and "invalid choice: 'req'" in err


def test_evaluate_from_the_command_line(cli, tmp_path):
    proj = _export(tmp_path, "linear", "llama", "qwen2")
    out = tmp_path / "r" / "results.json"
    args = ("evaluate", "--projector", str(proj), "--eval_file", str(_eval_file(tmp_path)), "--output", str(out),
            "--limit", "2", "--batch_size", "2", "--max_new_tokens", "2",
            "--conditions", "target_alone", "target_text", "projected")  # fmt: skip
    code, _, err = cli(*args)
    assert code == 0, err
    assert f"loading the source model named by {proj}/projector_config.json: tiny:llama" in err  # default level
    results = json.loads(out.read_text())
    assert results["n"] == 2 and list(results["conditions"]) == ["target_alone", "target_text", "projected"]
    before = out.read_text()
    code, _, err = cli(*args)
    assert code == 2 and "pass --overwrite to replace them" in err and "Traceback" not in err
    assert out.read_text() == before
    assert cli(*args, "--overwrite")[0] == 0


@pytest.mark.parametrize(
    "projector, extra, message",
    [
        ("missing", (), "not an exported projector folder"),
        ("truncated", (), "is not valid JSON"),
        ("weights", (), "does not match projector_config.json"),
        ("tiny", (), "above the limit of 50M for tiny models"),
        ("geometry", (), "was trained for a source cache of"),
        ("good", ("--eval_file", "BAD"), "bad.jsonl:2:"),
        ("good", ("--batch_size", "0"), "--batch_size: must be a whole number >= 1, got 0"),
    ],
)
def test_evaluate_errors_exit_2_with_the_message(cli, tmp_path, projector, extra, message):
    from test_eval import bad_eval_file

    extra = tuple(bad_eval_file(tmp_path) if a == "BAD" else a for a in extra)
    code, out, err = cli("evaluate", "--projector", broken_projector(tmp_path, projector),
                         "--eval_file", str(_eval_file(tmp_path)), "--output", str(tmp_path / "r" / "results.json"),
                         *extra)  # fmt: skip
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_doctor_flags(cli, monkeypatch):
    calls = []

    def fake_run(**kwargs):
        calls.append(kwargs)
        return {"ok": len(calls) == 1, "models": []}

    monkeypatch.setattr("kvproj.doctor.run", fake_run)
    code, out, _ = cli("doctor", "--no-zoo", "--json", "--device", "cuda", "--dtype", "bfloat16",
                       "--quantization", "4bit")  # fmt: skip
    assert code == 0 and json.loads(out) == {"ok": True, "models": []}
    assert calls[0] == dict(include_zoo=False, dtype="bfloat16", device="cuda", quantization="4bit")
    code, out, _ = cli("doctor", "--json", "true")  # a failed check exits 1
    assert code == 1 and calls[1] == dict(include_zoo=True, dtype="float32", device="cpu", quantization=None)


def test_doctor_checks_tiny_models(cli):
    code, out, _ = cli("doctor", "--no_zoo", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and {m["name"] for m in report["models"]} >= {"tiny:llama", "tiny:gpt2"}


def test_zoo_commands(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("KVPROJ_HOME", str(tmp_path))
    code, out, _ = cli("zoo", "path", "gemma3-270m")
    assert code == 0 and out == f"{tmp_path / 'zoo' / 'gemma3-270m'}\n"
    installed = []
    monkeypatch.setattr(zoo, "install", lambda name, gguf=None: installed.append((name, gguf)) or tmp_path / name)
    assert cli("zoo", "install", "gemma3-270m", "smollm2-135m-instruct")[0] == 0
    assert cli("zoo", "install", "[gemma3-270m]")[0] == 0
    assert cli("zoo", "install", "gemma3-270m", "--gguf", "/data/g.gguf")[0] == 0
    assert installed == [
        ("gemma3-270m", None),
        ("smollm2-135m-instruct", None),
        ("gemma3-270m", None),
        ("gemma3-270m", "/data/g.gguf"),
    ]
    code, _, err = cli("zoo", "install", "gemma3-270m", "smollm2-135m-instruct", "--gguf", "/data/g.gguf")
    assert code == 2 and "give exactly one zoo name with a GGUF file, got 2" in err
    code, _, err = cli("zoo", "install", "gemma3-270m", "llama-7b")
    assert code == 2 and "zoo model 'llama-7b' is not in the offline zoo" in err
    assert len(installed) == 4  # no name is installed when one is unknown
    code, _, err = cli("zoo", "path", "llama-7b")
    assert code == 2 and "valid names: smollm2-135m-instruct" in err


def test_projector_by_architecture_name_and_bad_names_list_the_choices():
    from kvproj.cli import resolve_projector

    assert resolve_projector(["--model.projector", "lowrank", "--model.projector.rank", "8"]) == [
        "--model.projector", "kvproj.projectors.LowRankConfig", "--model.projector.rank", "8",
    ]  # fmt: skip
    assert resolve_projector(["--model.projector=C2CConfig"]) == [
        "--model.projector",
        "kvproj.projectors.C2CConfig",
    ]
    kept = ["--model.projector", "kvproj.projectors.LinearConfig", "--trainer.max_steps", "3"]
    assert resolve_projector(kept) == kept
    with pytest.raises(ValueError, match=r"model.projector: got 'Bogus'; valid: c2c \(C2CConfig\), identity"):
        resolve_projector(["--model.projector", "Bogus"])
    assert main(["fit", "--config", "smoke", "--model.projector", "Bogus", "--print_config"]) == 2
