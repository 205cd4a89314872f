"""Evaluation: inject projected caches, score what the target generates, against baselines and controls."""
