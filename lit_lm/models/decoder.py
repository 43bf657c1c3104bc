"""The decoder family (GPT-2 and every switch that makes sense causally) and its causal-LM model, in plain torch.

Made of the encoder's layers: the same ``TransformerBlock`` with ``causal=True``, the same positions, norms, FFN,
mixture of experts, Primer convolution (causal here), talking heads and output head (without its bias, as GPT-2).
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.encoder import IGNORE_INDEX, init_module
from lit_lm.models.layers.block import TransformerBlock
from lit_lm.models.layers.cache import KVCache
from lit_lm.models.layers.heads import MaskedLMHead
from lit_lm.models.layers.norms import build_norm
from lit_lm.models.layers.positions import LearnedPositionEmbedding, build_relative_positions
from lit_lm.models.output import LMOutput


def check_decoder_config(config: TransformerConfig) -> None:
    """Reject the encoder-only switches, which have no causal meaning."""
    problems = [name for name, on in (
        ("relative_positions: disentangled (use rotary or t5)", config.relative_positions == "disentangled"),
        ("conv_kernel_size (nGiE looks both ways; Primer's causal one is qkv_conv_kernel_size)",
         config.conv_kernel_size),
        ("head_position_embedding", config.head_position_embedding),
        ("sparse_prediction (a decoder predicts every next token)", config.sparse_prediction),
    ) if on]
    if problems:
        raise ValueError(f"model config: a decoder cannot use {'; '.join(problems)}; switch them off.")


def causal_key_mask(attention_mask: torch.Tensor | None, queries: int) -> torch.Tensor | None:
    """[batch, keys] 1/0 mask -> bool [batch, 1, queries, keys] for the last ``queries`` positions, True = attend;
    None when no real position needs it.

    Right padding needs no mask: causal attention already keeps real positions from seeing later padding. Left
    padding (batched prompts of different lengths) masks the padded keys, and lets each position see itself so
    that padded queries (whose outputs are ignored) never have an empty row, whose NaN would spread.
    """
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    if bool((mask[:, 1:] <= mask[:, :-1]).all()):  # every row: real tokens, then padding (or none)
        return None
    keys = mask.shape[1]
    itself = torch.eye(queries, keys, dtype=torch.bool, device=mask.device).roll(keys - queries, dims=1)
    return mask[:, None, None, :] | itself


class DecoderOutput(NamedTuple):
    hidden_states: torch.Tensor
    attentions: tuple[torch.Tensor, ...] | None = None
    aux_loss: torch.Tensor | None = None  # summed over the mixture-of-experts blocks, unweighted


class Decoder(nn.Module):
    """Token (and absolute position) embeddings, causal blocks, an optional final norm. Decoders have no token
    types (``type_vocab_size`` is ignored) and no padding embedding (GPT's pad token is its end-of-text token)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        check_decoder_config(config)
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = LearnedPositionEmbedding(config) if config.position_embedding == "learned" else None
        self.embedding_norm = build_norm(config) if config.embedding_norm else nn.Identity()
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.relative_positions = build_relative_positions(config, causal=True)
        self.blocks = nn.ModuleList(TransformerBlock(config, causal=True) for _ in range(config.num_layers))
        self.final_norm = build_norm(config) if config.final_norm else nn.Identity()

    def decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        output_attentions: bool = False,
    ) -> DecoderOutput:
        """``attention_mask`` covers the cached positions too (``[batch, cache.length + seq]``) with a cache."""
        seq = input_ids.shape[1]
        start = cache.length if cache is not None else 0
        x = self.token_embedding(input_ids)
        if self.position_embedding is not None:
            x = x + self.position_embedding(seq, start)
        x = self.embedding_dropout(self.embedding_norm(x))
        key_mask = causal_key_mask(attention_mask, seq)
        token_mask = None
        if attention_mask is not None and not bool(attention_mask[:, -seq:].bool().all()):
            token_mask = attention_mask[:, -seq:, None].to(x.dtype)  # padding: not routed to experts nor convolved
        relative = self.relative_positions(seq, start) if self.relative_positions is not None else None
        attentions, aux_losses = [], []
        for i, block in enumerate(self.blocks):
            layer_cache = cache.layers[i] if cache is not None else None
            x, weights, aux_loss = block(x, key_mask, relative, token_mask, output_attentions, layer_cache)
            attentions.append(weights)
            if aux_loss is not None:
                aux_losses.append(aux_loss)
        return DecoderOutput(
            self.final_norm(x),
            tuple(attentions) if output_attentions else None,
            torch.stack(aux_losses).sum() if aux_losses else None,
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(input_ids, attention_mask).hidden_states


class DecoderForCausalLM(nn.Module):
    """Decoder plus output head: ``model(input_ids, attention_mask=None, labels=None, cache=None) -> LMOutput``.

    ``labels`` are the input ids themselves (-100 where nothing should be predicted); the loss is the mean
    cross-entropy of predicting ``labels[:, t + 1]`` from the positions up to ``t``. ``logits`` cover every position.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = Decoder(config)
        self.head = MaskedLMHead(config, output_bias=False)
        if config.tie_embeddings:  # tied input/output embeddings: Press & Wolf 2017
            self.head.decoder.weight = self.decoder.token_embedding.weight
        self.apply(self._init_weights)
        # GPT-2 (Radford et al. 2019): residual output projections start smaller, by 1/sqrt(2 * layers)
        for name, param in self.named_parameters():
            if name.endswith(("attn.out.weight", "ffn.down.weight", "ffn.down")):
                nn.init.normal_(param, std=config.initializer_range / math.sqrt(2 * config.num_layers))

    def _init_weights(self, module: nn.Module) -> None:
        init_module(module, self.config.initializer_range)

    def new_cache(self) -> KVCache:
        """An empty cache for incremental decoding (see ``lit_lm.generate``)."""
        return KVCache.empty(self.config.num_layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: KVCache | None = None,
        output_attentions: bool = False,
    ) -> LMOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}.")
        decoded = self.decoder.decode(input_ids, attention_mask, cache, output_attentions)
        logits = self.head(decoded.hidden_states)
        aux_loss = None
        if decoded.aux_loss is not None:
            aux_loss = self.config.moe_aux_loss_weight * decoded.aux_loss
        loss = None
        if labels is not None:  # shift the labels, not the logits: no copy of the largest tensor
            targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return LMOutput(logits=logits, loss=loss, labels=labels, hidden_states=decoded.hidden_states,
                        aux_loss=aux_loss, attentions=decoded.attentions)
