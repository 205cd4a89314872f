"""`python -m kvproj experiment NAME --config configs/experiments/NAME.yaml [--option value ...]`.

Each experiment is one module with a typed `Settings` dataclass (its options: the shared ones of
`common.ExperimentSettings` plus its own, documented in its docstring, so `--help` lists them) and
`run(settings, command) -> results`. Outputs go to `OUTPUT_DIR/NAME/RUN/` (see `kvproj.experiments.common`).

Adding an experiment: a module whose `Settings` subclasses `common.ExperimentSettings` (its docstring's Args become
`--help`) and whose `run` does `Run(NAME, settings)`: `check()` before loading models, `start()`, `units(keys,
compute)` for the resumable work (plain JSON per unit), `stat` for every number (bootstrap 95% CI), `line_plot` /
`heatmap` for the PNGs, a `Report`, and `finish(numbers, models, report, generations, extra)`; then an entry in
EXPERIMENTS below and configs/experiments/NAME.yaml + NAME-smoke.yaml.
"""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import sys
from pathlib import Path

EXPERIMENTS: dict[str, str] = {
    "same-model": "kvproj.experiments.same_model",
    "layer-sweep": "kvproj.experiments.layer_sweep",
    "partial-transfer": "kvproj.experiments.partial_transfer",
    "interpolation": "kvproj.experiments.interpolation",
    "mode-transfer": "kvproj.experiments.mode_transfer",
    "mode-batch": "kvproj.experiments.mode_batch",
    "confab-detection": "kvproj.experiments.confab_detection",
    "archaeology": "kvproj.experiments.archaeology",
}
USAGE = """\
usage: python -m kvproj experiment NAME [--config configs/experiments/NAME.yaml] [--option value ...]
  NAME: {names}
  Without --config the shipped default config of NAME is used (zoo models); NAME-smoke uses tiny models.
  python -m kvproj experiment NAME --help lists NAME's options.
"""
CONFIG_FOLDER = "experiments"


def module(name: str):
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])


def shipped_config(name: str) -> Path | None:
    """configs/experiments/NAME.yaml as shipped with kvproj (NAME may carry the -smoke suffix)."""
    from kvproj.cli import PACKAGED_CONFIGS

    stem = Path(name).name.removesuffix(".yaml")
    path = PACKAGED_CONFIGS / CONFIG_FOLDER / f"{stem}.yaml"
    return path if path.is_file() else None


def parser(name: str):
    from jsonargparse import ActionConfigFile, ArgumentParser

    from kvproj.cli import _describe, _shell_note

    mod = module(name)
    p = ArgumentParser(
        prog=f"python -m kvproj experiment {name}",
        description=(mod.__doc__ or "").strip() + "\n\nOptions:\n" + _describe(mod.Settings),
        epilog=_shell_note(mod.Settings, False),
        allow_abbrev=False,
    )
    p.add_argument(
        "--config",
        action=ActionConfigFile,
        help=f"YAML of these options: a file, or a shipped name ({name}, {name}-smoke). Default: {name}.",
    )
    p.add_class_arguments(mod.Settings, as_group=False)
    return p


def resolve_config(name: str, argv: list[str]) -> tuple[list[str], str | None]:
    """`--config NAME` that is no file but a shipped config becomes that file; no --config at all means the
    shipped default config of the experiment. Returns (argv, the config as the user named it)."""
    from kvproj.cli import option_values

    out, at = option_values(argv, ("--config",))
    for i in at:
        if not Path(out[i]).exists():
            found = shipped_config(out[i])
            if found is None:
                raise FileNotFoundError(
                    f"--config {out[i]}: no such file, and no shipped experiment config of that name "
                    f"(configs/{CONFIG_FOLDER}/: {name}.yaml, {name}-smoke.yaml)"
                )
            out[i] = str(found)
    if at:
        return out, argv[argv.index("--config") + 1] if "--config" in argv else out[at[-1]]
    if any(a in ("-h", "--help") or a.startswith("--print_config") for a in out):
        return out, None
    default = shipped_config(name)
    return (["--config", str(default), *out], f"configs/{CONFIG_FOLDER}/{name}.yaml") if default else (out, None)


def main(argv: list[str]) -> int:
    """Parse NAME and its options, then run it. Bad options exit 2 with a message naming them."""
    from kvproj.cli import _call, shell_style

    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE.format(names=", ".join(EXPERIMENTS)))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in EXPERIMENTS:
        sys.stderr.write(f"unknown experiment {name!r}\n" + USAGE.format(names=", ".join(EXPERIMENTS)))
        return 2
    mod = module(name)
    try:
        rest, config = resolve_config(name, rest)
    except FileNotFoundError as err:
        logging.getLogger("kvproj").error("%s", err)
        return 2
    p = parser(name)
    cfg = p.parse_args(shell_style(mod.Settings, rest))
    values = cfg.as_dict()
    values.pop("config", None)
    values.pop("__path__", None)
    shown = " ".join(shlex.quote(a) for a in argv[1:] if a != "--config" and a != config)
    command = (
        f"python -m kvproj experiment {name}"
        + (f" --config {config}" if config else "")
        + (f" {shown}" if shown else "")
    )

    def go() -> int:
        settings = mod.Settings(**values)
        mod.run(settings, command=command)
        return 0

    errors = (ValueError, OSError)
    if os.environ.get("KVPROJ_DEBUG"):
        return go()
    return _call(lambda: go(), {}, errors)
