"""What each attention head of a lit-lm model looks at on a probe text: the maps, the head statistics of Clark et
al. 2019 ("What Does BERT Look At?"), the "column" score, and a figure of every head.

A *column head* puts its attention on one key position whatever the query: its map is one dark column. Heads that
park their attention on ``[CLS]``/``[SEP]`` are the classic case (Clark et al. 2019's "no-op" heads); a model whose
heads collapse onto the first word because the text lacks the leading space it trained with was how the essay found
RoBERTa's leading-space flaw. Compare ``probe_attention(..., leading_space=True)`` with the plain probe to see it.
"""

from io import BytesIO
from typing import NamedTuple

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.transformer import max_input_length

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "<s>", "</s>", "<|endoftext|>")
"""Tokens counted as special by ``head_statistics``: BERT's, RoBERTa's and GPT-2's."""

DEFAULT_THRESHOLD = 0.5


class AttentionProbe(NamedTuple):
    """One probe's result. ``maps`` is ``[layers, heads, query, key]`` float32 on the CPU, one row per block that
    has attention weights; ``layers`` gives those blocks' indices. Blocks whose token mixer has no weights (the
    Fourier mixer) are left out and named in ``skipped``; with no attention anywhere ``maps`` is ``[0, 0, n, n]``."""

    tokens: list[str]
    maps: torch.Tensor
    layers: list[int]
    skipped: list[int]


class ColumnScores(NamedTuple):
    """``per_layer[l]``: the share of layer l's heads that are column heads (in [0, 1]). ``per_head[l, h]``: the
    head's column value, the mean over queries of its attention share on its most attended key. ``key[l, h]``: that
    key's position. ``per_layer.mean()`` is the model's column score."""

    per_layer: torch.Tensor
    per_head: torch.Tensor
    key: torch.Tensor


def _language_model(model: nn.Module) -> nn.Module:
    """The lit-lm model itself: a LightningModule (MaskedLMModule, CausalLMModule) is unwrapped to its ``.model``."""
    import lightning as L

    return model.model if isinstance(model, L.LightningModule) else model


@torch.no_grad()
def probe_attention(model: nn.Module, tokenizer, text: str, leading_space: bool = False) -> AttentionProbe:
    """Runs ``text`` (one sequence, the tokenizer's special tokens added) through ``model`` and returns every
    block's attention weights.

    ``model``: an ``EncoderForMaskedLM``/``DecoderForCausalLM`` (or the Lightning module that holds one as
    ``.model``); ``tokenizer``: a ``tokenizers.Tokenizer``, the one the model trained with. ``leading_space``
    probes ``" " + text``. A text longer than the model's position table takes its first tokens only. The model runs
    in eval mode without gradients, in a forked random state (the caller's random streams are untouched) and goes
    back to its training mode afterwards.
    """
    model = _language_model(model)
    encoding = tokenizer.encode(" " + text if leading_space else text)
    ids, tokens = list(encoding.ids), list(encoding.tokens)
    config = getattr(model, "config", None)
    limit = max_input_length(config) if isinstance(config, TransformerConfig) else None
    if limit is not None:
        ids, tokens = ids[:limit], tokens[:limit]
    if not ids:
        raise ValueError(f"probe text {text!r} has no tokens.")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            out = model(torch.tensor([ids], device=device), output_attentions=True)
    finally:
        model.train(was_training)
    weights = list(out.attentions or ())
    layers = [i for i, w in enumerate(weights) if w is not None]
    skipped = [i for i, w in enumerate(weights) if w is None]
    n = len(ids)
    maps = (torch.stack([weights[i][0].float().cpu() for i in layers]) if layers
            else torch.zeros(0, 0, n, n))
    return AttentionProbe(tokens, maps, layers, skipped)


def _distributions(maps: torch.Tensor) -> torch.Tensor:
    """Each query's weights as shares of its total (a no-op for softmax; ReLU/sigmoid weights are unnormalised)."""
    total = maps.sum(-1, keepdim=True)
    return torch.where(total > 0, maps / total.clamp_min(1e-12), torch.zeros_like(maps))


def head_statistics(maps: torch.Tensor, tokens: list[str],
                    special: tuple[str, ...] = SPECIAL_TOKENS) -> dict[str, torch.Tensor]:
    """Clark et al. 2019's per-head statistics of ``maps`` ``[layers, heads, query, key]``, each ``[layers, heads]``:

    - ``entropy``: nats, averaged over queries (log n is uniform attention, 0 looks at one token);
    - ``special``: the average share of a query's attention on the ``special`` tokens (``[CLS]``, ``[SEP]``, ...);
    - ``self``, ``previous``, ``next``: the average share on the query's own token, the one before, the one after
      (averaged over the queries that have one).

    Weights are normalised per query first, so unnormalised attention (ReLU, sigmoid) reads as shares too.
    """
    if maps.shape[-1] != len(tokens):
        raise ValueError(f"maps cover {maps.shape[-1]} keys but there are {len(tokens)} tokens.")
    p = _distributions(maps.float())
    n = p.shape[-1]
    index = torch.arange(n)
    is_special = torch.tensor([t in special for t in tokens], dtype=torch.bool)
    empty = p.new_zeros(p.shape[:-2])
    return {
        "entropy": -(p * p.clamp_min(1e-12).log()).sum(-1).mean(-1),
        "special": p[..., is_special].sum(-1).mean(-1),
        "self": p[..., index, index].mean(-1),
        "previous": p[..., index[1:], index[:-1]].mean(-1) if n > 1 else empty,
        "next": p[..., index[:-1], index[1:]].mean(-1) if n > 1 else empty,
    }


def column_scores(maps: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> ColumnScores:
    """How much of each layer's attention sits on one key position whatever the query.

    For a head with weights ``p[q, k]`` (normalised per query), its column value is ``max_k mean_q p[q, k]``: the
    mean over all queries of the attention they give to the head's most attended key. It is 1 when every query looks
    at the same key, and 1/n for uniform attention or for a head where each query looks at itself (the diagonal). A
    head is a *column head* when its value is >= ``threshold``; a layer's column score is the share of its heads that
    are column heads, in [0, 1]. Attention to ``[CLS]``/``[SEP]`` counts: such "no-op" heads are column heads
    (``ColumnScores.key`` says which position each head looks at).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"column score threshold must be in (0, 1], got {threshold}.")
    if maps.ndim != 4 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"maps must be [layers, heads, query, key] with as many queries as keys, got "
                         f"{tuple(maps.shape)}.")
    if maps.shape[0] == 0 or maps.shape[1] == 0:
        empty = torch.zeros(maps.shape[0], maps.shape[1])
        return ColumnScores(torch.zeros(maps.shape[0]), empty, empty.long())
    per_head, key = _distributions(maps.float()).mean(-2).max(-1)
    return ColumnScores((per_head >= threshold).float().mean(-1), per_head, key)


def plot_attention(maps: torch.Tensor, tokens: list[str], layers: list[int] | None = None, title: str | None = None,
                   panel_inches: float = 2.4):
    """A matplotlib ``Figure`` with one heatmap per head: a row per layer, a column per head; rows are queries,
    columns the keys they attend to, darker is more attention (0 to 1 on every panel, so figures compare). The
    bottom-left panel carries the token labels (up to 40 tokens); every panel has the same axes.

    ``layers`` names the rows (block indices; default 0, 1, ...). The figure is built without pyplot, so it needs no
    display and leaves no global state behind: save it with ``fig.savefig(path)`` or render it with ``figure_png``.
    """
    from matplotlib.figure import Figure

    if maps.ndim != 4 or maps.shape[0] == 0 or maps.shape[1] == 0:
        raise ValueError(f"no attention maps to plot (shape {tuple(maps.shape)}): the model's token mixer has none.")
    n_layers, n_heads, n, _ = maps.shape
    names = list(layers) if layers is not None else list(range(n_layers))
    labels = tokens if n <= 40 else None
    vmax = max(1.0, float(maps.max()))  # unnormalised (ReLU) weights can exceed 1
    # margins in inches: room for the token labels and the titles (tight_layout would cost seconds per figure)
    side, top = (0.9 if labels else 0.15), (0.65 if title else 0.3)
    width, height = panel_inches * n_heads + side + 0.15, panel_inches * n_layers + side + top
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=side / width, right=1 - 0.15 / width, bottom=side / height, top=1 - top / height,
                        wspace=0.1, hspace=0.25)
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    for row in range(n_layers):
        for head in range(n_heads):
            ax = axes[row][head]
            ax.imshow(maps[row, head].float().cpu().numpy(), cmap="Blues", vmin=0, vmax=vmax)
            ax.set_title(f"layer {names[row]} head {head}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
    if labels:
        axes[-1][0].set_xticks(range(n), labels, rotation=90, fontsize=5)
        axes[-1][0].set_yticks(range(n), labels, fontsize=5)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def figure_png(fig, dpi: int = 100) -> bytes:
    """``fig`` rendered as PNG bytes (with matplotlib's Agg renderer, no display needed)."""
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
