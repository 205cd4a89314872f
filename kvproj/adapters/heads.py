"""The output head of a transformers causal LM: output embedding and final logit soft-cap (Gemma 2).

Logits are computed only at the positions a caller scores (Gemma-3's vocabulary has 262k entries).
"""

from __future__ import annotations

import torch
from torch import nn


def logits_from_hidden(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Final hidden states [..., H] -> logits [..., V] exactly as the model's head computes them."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config.get_text_config(decoder=True), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
