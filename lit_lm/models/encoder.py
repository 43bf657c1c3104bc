"""The encoder family (BERT, RoBERTa, DeBERTa and every switch) and its masked-LM model, in plain torch."""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.block import TransformerBlock
from lit_lm.models.layers.conv import NGramInducedEmbedding
from lit_lm.models.layers.heads import MaskedLMHead
from lit_lm.models.layers.norms import build_norm
from lit_lm.models.layers.positions import LearnedPositionEmbedding, build_relative_positions
from lit_lm.models.output import LMOutput

IGNORE_INDEX = -100


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[batch, seq] 1/0 mask -> bool [batch, 1, 1, seq] for SDPA (True = attend); None when nothing is padded."""
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    if bool(mask.all()):
        return None  # keeps SDPA on its fastest, mask-free path
    return mask[:, None, None, :]


class EncoderOutput(NamedTuple):
    hidden_states: torch.Tensor
    attentions: tuple[torch.Tensor, ...] | None = None
    aux_loss: torch.Tensor | None = None  # summed over the mixture-of-experts blocks, unweighted


class Encoder(nn.Module):
    """Embeddings, a stack of blocks, an optional final norm: token ids in, hidden states out."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embedding = (
            LearnedPositionEmbedding(config) if config.position_embedding == "learned" else None
        )
        self.token_type_embedding = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size else None
        )
        self.embedding_norm = build_norm(config) if config.embedding_norm else nn.Identity()
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.relative_positions = build_relative_positions(config, causal=False)
        self.ngie = NGramInducedEmbedding(config) if config.conv_kernel_size else None
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.final_norm = build_norm(config) if config.final_norm else nn.Identity()

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embedding(input_ids)
        if self.position_embedding is not None:
            x = x + self.position_embedding(input_ids.shape[1])
        if self.token_type_embedding is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embedding(token_type_ids)
        return self.embedding_dropout(self.embedding_norm(x))

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        if self.position_embedding is None and input_ids.shape[1] > self.config.max_sequence_length:
            raise ValueError(
                f"sequence of {input_ids.shape[1]} tokens is longer than model.max_position_embeddings "
                f"({self.config.max_position_embeddings}); shorten data.seq_length or raise max_position_embeddings."
            )
        x = embeddings = self.embed(input_ids, token_type_ids)
        key_mask = padding_mask(attention_mask)
        token_mask = None if key_mask is None else key_mask[:, 0, 0, :, None].to(x.dtype)
        relative = None if self.relative_positions is None else self.relative_positions(input_ids.shape[1])
        attentions, aux_losses = [], []
        for i, block in enumerate(self.blocks):
            x, weights, aux_loss = block(x, key_mask, relative, token_mask, output_attentions)
            if i == 0 and self.ngie is not None:
                x = self.ngie(embeddings, x, token_mask)
            attentions.append(weights)
            if aux_loss is not None:
                aux_losses.append(aux_loss)
        return EncoderOutput(
            self.final_norm(x),
            tuple(attentions) if output_attentions else None,
            torch.stack(aux_losses).sum() if aux_losses else None,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.encode(input_ids, attention_mask, token_type_ids).hidden_states


def prediction_count(positions: int, rate: float) -> int:
    """How many positions sparse prediction keeps for a batch of ``positions``: the expected number of labelled
    ones at ``rate`` plus 3 standard deviations. About one batch in 700 has more (its extra labelled positions are
    left out of that step's loss); 2048 positions at rate 0.15 keep 356, 16% more than the expected 307."""
    return min(positions, math.ceil(rate * positions + 3 * math.sqrt(positions * rate * (1 - rate))))


def select_predictions(
    hidden: torch.Tensor, labels: torch.Tensor, rate: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden states and labels of the labelled positions, flattened to ``[n, hidden]`` and ``[n]``.

    With ``rate`` None, ``n`` is the number of labelled positions (it varies by batch). With a rate, ``n`` is
    ``prediction_count(batch * seq, rate)``: fixed by the batch shape, so the shapes are static and the model
    compiles; slots beyond the labelled positions get label -100 (ignored by the loss).
    """
    hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    labelled = labels != IGNORE_INDEX
    if rate is None:
        return hidden[labelled], labels[labelled]
    n = prediction_count(len(labels), rate)
    index = torch.nonzero_static(labelled, size=n, fill_value=0).squeeze(-1)
    used = torch.arange(n, device=labels.device) < labelled.sum()
    return hidden[index], torch.where(used, labels[index], IGNORE_INDEX)


def init_module(module: nn.Module, std: float) -> None:
    """Normal(0, std) weights, zero biases and padding embedding; layers with their own rule use it."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif hasattr(module, "init_weights"):  # layers with their own parameters: positions, experts, talking heads
        module.init_weights(std)


class EncoderForMaskedLM(nn.Module):
    """Encoder plus MLM head: ``model(input_ids, attention_mask=None, labels=None) -> LMOutput``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.head_position_embedding = (  # DeBERTa's enhanced mask decoder, simplified: He et al. 2021
            LearnedPositionEmbedding(config) if config.head_position_embedding else None
        )
        self.head = MaskedLMHead(config)
        if config.tie_embeddings:  # tied input/output embeddings: Press & Wolf 2017
            self.head.decoder.weight = self.encoder.token_embedding.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        init_module(module, self.config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> LMOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}.")
        encoded = self.encoder.encode(input_ids, attention_mask, token_type_ids, output_attentions)
        hidden = encoded.hidden_states
        head_input = hidden
        if self.head_position_embedding is not None:
            head_input = hidden + self.head_position_embedding(input_ids.shape[1])
        aux_loss = None
        if encoded.aux_loss is not None:
            aux_loss = self.config.moe_aux_loss_weight * encoded.aux_loss
        if labels is None:
            return LMOutput(logits=self.head(head_input), hidden_states=hidden, aux_loss=aux_loss,
                            attentions=encoded.attentions)
        if self.config.sparse_prediction:  # predict only masked tokens: Geiping & Goldstein 2022 (cramming)
            head_input, targets = select_predictions(head_input, labels, self.config.sparse_prediction_rate)
        else:
            targets = labels
        logits = self.head(head_input)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX)
        return LMOutput(logits=logits, loss=loss, labels=targets, hidden_states=hidden, aux_loss=aux_loss,
                        attentions=encoded.attentions)
