"""Diagnostics that look inside a model: attention maps and their head statistics (lit_lm.diagnostics.attention),
shared by the AttentionDiagnostics callback and notebooks/attention_maps.ipynb."""

from lit_lm.diagnostics.attention import (SPECIAL_TOKENS, AttentionProbe, ColumnScores, column_scores, figure_png,
                                          head_statistics, plot_attention, probe_attention)

__all__ = ["SPECIAL_TOKENS", "AttentionProbe", "ColumnScores", "column_scores", "figure_png", "head_statistics",
           "plot_attention", "probe_attention"]
