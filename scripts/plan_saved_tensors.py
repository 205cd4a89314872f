"""What autograd saves for the backward of one training batch, against plan's activation terms.

    python scripts/plan_saved_tensors.py --config default --json docs/results/plan_saved_tensors_default.json

Loads the config's frozen pair, encodes its first training batch exactly as training does, runs the module's losses
under `torch.autograd.graph.saved_tensors_hooks` and sums the bytes of the distinct storages saved, leaving out the
weights and the caches (plan counts those separately and exactly). Compares the sum with plan's
projector_activations + target_kv + target_activations + logits for the lengths of that same batch.
"""

from __future__ import annotations

import argparse
import collections
import json

import torch

from kvproj.atomic import atomic_write
from kvproj.data.facts import FactsConfig, train_example
from kvproj.module import KVProjectorModule
from kvproj.pair import FrozenPair
from kvproj.plan import resolve_config
from kvproj.plan.estimate import estimate, read_settings
from kvproj.plan.shapes import Lengths

TERMS = ("projector_activations", "target_kv", "target_activations", "logits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    s = read_settings(resolve_config(args.config))
    pair = FrozenPair(s.source, s.target, s.chat_template, s.question_template).to(torch.device(args.device))
    codec = pair.codec(max_context_tokens=s.max_context_tokens)
    examples = [train_example(FactsConfig(**s.data.get("facts", {})), i).to_dict() for i in range(s.batch_size)]
    batch = codec.collate([codec.encode(e) for e in examples])
    batch = {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    batch = pair.add_caches(batch, with_target_cache=False)
    scored = int((batch["labels"][:, 1:] != -100).sum())
    shape = (batch["source_ids"].shape[1], batch["target_prefix_ids"].shape[1], batch["continuation_ids"].shape[1])
    lengths = Lengths(*shape, scored, 0, 0, 0, 0, True, 0.0, len(examples), "the first training batch")
    est = estimate(s, args.device, lengths)
    module = KVProjectorModule(pair, s.projector, s.mode).to(args.device)
    storages: dict[int, tuple[int, tuple[int, ...], str]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        storages[st.data_ptr()] = (st.nbytes(), tuple(t.shape), str(t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, projected, _ = module.losses(dict(batch))
    models = [pair.source.model, pair.target.model, module]
    excluded = {t.untyped_storage().data_ptr() for m in models for t in [*m.parameters(), *m.buffers()]}
    cache = batch["source_cache"]
    excluded |= {
        t.untyped_storage().data_ptr() for t in [*projected.keys, *projected.values, *cache.keys, *cache.values]
    }
    saved = {k: v for k, v in storages.items() if k not in excluded}
    by_shape: collections.Counter = collections.Counter()
    for nbytes, shp, dtype in saved.values():
        by_shape[f"{list(shp)} {dtype}"] += nbytes
    result = {
        "config": args.config,
        "device": args.device,
        "batch_lengths": {"source": shape[0], "prefix": shape[1], "continuation": shape[2], "scored": scored},
        "saved_bytes": sum(v[0] for v in saved.values()),
        "predicted_bytes": sum(est.terms[k] for k in TERMS),
        "predicted_terms": {k: est.terms[k] for k in TERMS},
        "largest_saved": dict(by_shape.most_common(10)),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
