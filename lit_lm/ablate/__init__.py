"""Ablations: train variants of a recipe under the same wall-clock budget and compare them on one held-out set."""
