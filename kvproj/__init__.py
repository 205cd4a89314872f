"""kvproj: train projectors that move a frozen source model's KV cache into a frozen target model."""

__version__ = "0.1.0"
