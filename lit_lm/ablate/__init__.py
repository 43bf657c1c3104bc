"""Ablations: variants of a recipe trained under one wall-clock budget and scored on one held-out set."""
