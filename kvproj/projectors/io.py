"""Export a trained projector as a self-describing folder and rebuild it from that folder alone.

`projector.safetensors` (weights) + `projector_config.json` (architecture, init args, source/target model specs
and cache geometries, layer map, kvproj version; sorted keys). Writes go to a temp folder renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

import kvproj
from kvproj.atomic import atomic_directory
from kvproj.cache import CacheGeometry
from kvproj.projectors.base import Projector, build_projector

WEIGHTS = "projector.safetensors"
CONFIG = "projector_config.json"


class ProjectorFolderError(ValueError):
    """An exported projector folder that cannot be read: missing files, damaged config, weights that do not fit."""


class ProjectorMismatchError(ValueError):
    """An exported projector used with models whose cache geometry differs from the ones it was trained on."""


def projector_config(
    projector: Projector, source_spec: dict, target_spec: dict, extra: dict | None = None
) -> dict:
    return {
        "architecture": projector.architecture,
        "init_args": projector.init_args,
        "layer_map": projector.layer_map,
        "source_layers": projector.source_layers,
        "source_layer_shares": projector.source_layer_shares(),
        "source_token_shares": projector.source_token_shares(),
        "source": {"spec": source_spec, "geometry": projector.source_geometry.to_dict()},
        "target": {"spec": target_spec, "geometry": projector.target_geometry.to_dict()},
        "parameters": projector.parameter_report(),
        "kvproj_version": kvproj.__version__,
        **(extra or {}),
    }


def save_projector(
    directory: str | Path, projector: Projector, source_spec: dict, target_spec: dict, extra: dict | None = None
) -> Path:
    """Write the folder atomically: a crash mid-write leaves the previous export (or nothing), never half."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        config = projector_config(projector, source_spec, target_spec, extra)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / CONFIG
    if not path.is_file() or not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"--projector {directory}: not an exported projector folder (needs {CONFIG} and {WEIGHTS}); "
            f"training writes one to checkpoints/<run>/projector/"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProjectorFolderError(
            f"--projector {directory}: {path} is not valid JSON ({err}); the folder is damaged: re-export it from "
            "the run's last.ckpt or use another projector folder"
        ) from err
    missing = [k for k in ("architecture", "init_args", "source", "target") if k not in config]
    if missing:
        raise ProjectorFolderError(f"--projector {directory}: {path} lacks {', '.join(missing)}")
    _check_version(config, directory)
    return config


def _check_version(config: dict[str, Any], directory: str | Path) -> None:
    """Refuse a folder written by a kvproj with another major.minor version (its format may differ)."""
    found = str(config.get("kvproj_version", "unknown"))
    if found.split(".")[:2] != kvproj.__version__.split(".")[:2]:
        raise ProjectorFolderError(
            f"--projector {directory}: written by kvproj {found}, this is kvproj {kvproj.__version__}; "
            f"use a kvproj {'.'.join(found.split('.')[:2])}.x to read it, or re-export it from its checkpoint"
        )


def check_geometries(
    directory: str | Path,
    trained: tuple[CacheGeometry, CacheGeometry],
    given: tuple[CacheGeometry | None, CacheGeometry | None],
    names: tuple[str, str] = ("given", "given"),
) -> None:
    """Refuse source/target cache geometries (None: not checked) that differ from the ones the projector in
    `directory` was trained for; `names` says which source and target models they are, in the message."""
    for side, expected, found, name in zip(("source", "target"), trained, given, names):
        if found is not None and (problems := expected.mismatches(found)):
            raise ProjectorMismatchError(
                f"projector {directory} was trained for a {side} cache of {expected.summary()}, but the {side} model "
                f"{name} has {found.summary()} ({'; '.join(problems)})"
            )


def load_projector(
    directory: str | Path,
    source_geometry: CacheGeometry | None = None,
    target_geometry: CacheGeometry | None = None,
) -> tuple[Projector, dict[str, Any]]:
    """Rebuild the projector from the folder alone; if geometries are given, refuse ones that don't match."""
    config = read_config(directory)
    source = CacheGeometry.from_dict(config["source"]["geometry"])
    target = CacheGeometry.from_dict(config["target"]["geometry"])
    check_geometries(directory, (source, target), (source_geometry, target_geometry))
    projector = build_projector(config["architecture"], source, target, **config["init_args"])
    weights = Path(directory) / WEIGHTS
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for truncated / foreign files
        raise ProjectorFolderError(f"--projector {directory}: {weights} cannot be read ({err})") from err
    try:
        projector.load_state_dict(state)  # strict: names every tensor missing, extra or of another shape
    except RuntimeError as err:
        raise ProjectorFolderError(
            f"--projector {directory}: {WEIGHTS} does not match {CONFIG} ({config['architecture']} with "
            f"{config['init_args']}); the two files come from different exports: {err}"
        ) from err
    projector.eval()
    return projector, config
