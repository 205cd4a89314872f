#!/usr/bin/env python
"""Step time of real training vs. the floor, for each projector, measured in one run (ratios, not absolutes).

A step = frozen source forward (its cache) + projection + frozen target forward with the injected cache + backward
into the projector + AdamW step. The floor is the same step with a zero-FLOP stand-in projector (the source's
features sliced/tiled into the target's shape, one scalar gain), so the frozen forwards and the backward through
the target are the floor. Prints a markdown table: ms/step, overhead vs. floor, tokens/s, trainable parameters.

    python benchmarks/train_throughput.py --pairs smoke default --steps 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from kvproj.callbacks.progress import batch_tokens
from kvproj.data.datamodule import KVPairDataModule
from kvproj.data.facts import FactsConfig
from kvproj.models import ModelSpec
from kvproj.module import KVProjectorModule
from kvproj.pair import FrozenPair
from kvproj.projectors import C2CConfig, LinearConfig, LowRankConfig, Projector, ProjectorConfig

PAIRS = {
    "smoke": (ModelSpec("tiny:llama", seed=1), ModelSpec("tiny:gemma3_text", seed=2)),
    "default": (ModelSpec("smollm2-135m-instruct"), ModelSpec("gemma3-270m")),
}
PROJECTORS = {"linear": LinearConfig(), "lowrank": LowRankConfig(rank=64), "c2c": C2CConfig(hidden=256)}


@dataclass(frozen=True)
class FloorConfig(ProjectorConfig):
    """The floor: see `FloorProjector`."""

    architecture: ClassVar[str] = "floor"

    def build(self, source, target, mode: str = "replace") -> FloorProjector:
        return FloorProjector(source, target, self, mode)


class FloorProjector(Projector):
    """Zero-FLOP stand-in: tile/slice source features to the target width, times one learnable gain."""

    def __init__(self, source, target, config: FloorConfig, mode: str = "replace") -> None:
        super().__init__(source, target, config, mode)
        self.gain = nn.Parameter(torch.ones(()))

    def _shape(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.to_tokens(x)  # [B, T, Hs*Ds]
        width = self.target_geometry.width
        reps = -(-width // feats.shape[-1])
        return self.to_heads(feats.repeat(1, 1, reps)[..., :width])  # [B, Ht, T, Dt]

    def project_layer(self, target_layer, source_keys, source_values, target_keys, target_values):
        return self._shape(source_keys), self._shape(source_values) * self.gain


def time_steps(dm: KVPairDataModule, module: KVProjectorModule, batches: list[dict], warmup: int) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in module.projector.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i, raw in enumerate(batches):
        start = time.perf_counter()
        batch = dm.pair.add_caches(dict(raw), with_target_cache=False)
        out, _, _ = module.losses(batch)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per projector (after 2 warm-up steps)")
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    print("| pair | projector | ms/step (median) | overhead vs floor | tokens/s | trainable params | MB |")
    print("|---|---|---|---|---|---|---|")
    for pair in args.pairs:
        source, target = PAIRS[pair]
        dm = KVPairDataModule(pair=FrozenPair(source, target), facts=FactsConfig(), batch_size=args.batch_size)
        stream = dm.iter_examples(0)
        batches = [
            dm.collate([dm.encode(next(stream)) for _ in range(args.batch_size)]) for _ in range(args.steps + 2)
        ]
        tokens = statistics.mean(batch_tokens(b) for b in batches)
        results = {}
        for name, config in {"floor": FloorConfig(), **PROJECTORS}.items():
            module = KVProjectorModule(pair=dm.pair, projector=config)
            module.train()
            times = time_steps(dm, module, batches, warmup=2)
            results[name] = (statistics.median(times), module.projector.parameter_report())
        floor = results["floor"][0]
        for name, (t, report) in results.items():
            print(
                f"| {pair} | {name} | {1000 * t:.0f} | {t / floor:.3f}x | {tokens / t:.0f} | "
                f"{report['trainable_parameters']:,} | {report['megabytes']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
