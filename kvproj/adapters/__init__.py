"""Where kvproj touches a transformers model's internals (module attributes, not the public forward/generate API).

One module per concern; a transformers upgrade that renames an attribute is a change in one of these files:

- `attention.py`: the decoder layers, each layer's key projection (`self_attn.k_proj`) and key norm
  (`self_attn.k_norm`), and the rotary-embedding module with its frequency tables.
- `heads.py`: the output embedding and the final logit soft-cap (logits from chosen hidden states).

The transformers cache API and every forward/generate call live in `kvproj/cache.py`.
"""
