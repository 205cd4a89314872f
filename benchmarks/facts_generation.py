"""Facts corpus generation speed: training examples per second from a fresh process (includes building the
default 3,500-person world), and tokenization + collation into batches for the smoke pair.

    python benchmarks/facts_generation.py [--examples 10000] [--json docs/results/facts_generation.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from itertools import islice

from kvproj.data.facts import FactsConfig, iter_train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    first = next(iter_train(FactsConfig(seed=11)))  # the world is built on first use
    world = time.perf_counter() - start
    start = time.perf_counter()
    n = sum(1 for _ in islice(iter_train(FactsConfig(seed=11)), args.examples))
    gen = time.perf_counter() - start
    print("| what | seconds | per second |")
    print("|---|---|---|")
    print(f"| build the world + first example ({first.id}) | {world:.2f} | |")
    print(f"| {n:,} training examples | {gen:.2f} | {n / gen:,.0f} examples/s |")
    if args.json:
        from kvproj.atomic import atomic_write

        record = {
            "command": f"python benchmarks/facts_generation.py --examples {args.examples} --json {args.json}",
            "machine": f"{platform.machine()}, {platform.python_version()}",
            "world_and_first_example_s": round(world, 4),
            "examples": n,
            "examples_s": round(gen, 4),
            "examples_per_s": round(n / gen),
        }
        atomic_write(args.json, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
