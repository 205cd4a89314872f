"""The results file of the small scripts under scripts/: `--output FILE [--overwrite]`, refused before any work when
FILE exists and --overwrite is not given, written atomically (kvproj.atomic) so a killed script leaves no half file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kvproj.atomic import atomic_write


def add_output(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--output", type=Path, default=None, help=f"write {what} as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")


def check_output(args: argparse.Namespace) -> None:
    if args.output is not None and args.output.exists() and not args.overwrite:
        raise SystemExit(f"--output: {args.output} exists; pass --overwrite to replace it")


def write_output(args: argparse.Namespace, out: dict[str, Any], indent: int = 2, echo: bool = True) -> None:
    """Print `out` as JSON (unless `echo` is False) and write it to --output when given."""
    text = json.dumps(out, indent=indent) + "\n"
    if echo:
        print(text, end="")
    if args.output is not None:
        atomic_write(args.output, text)
