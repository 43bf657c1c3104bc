"""Ablations: train variants of a recipe under the same wall-clock budget and compare them on one held-out set
(``python -m lit_lm.ablate``); ``hf_peer`` is the peer row, transformers' own masked-LM recipe."""
