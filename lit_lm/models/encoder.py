"""BERT-style bidirectional encoder and its masked-LM model, in plain torch."""

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers import LearnedPositionEmbedding, MaskedLMHead, TransformerBlock, build_norm
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


class Encoder(nn.Module):
    """Embeddings, a stack of blocks, an optional final norm: token ids in, hidden states out."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embedding = LearnedPositionEmbedding(config)
        self.token_type_embedding = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size else None
        )
        self.embedding_norm = build_norm(config) if config.embedding_norm else nn.Identity()
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.final_norm = build_norm(config) if config.final_norm else nn.Identity()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.token_embedding(input_ids) + self.position_embedding(input_ids.shape[1])
        if self.token_type_embedding is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embedding(token_type_ids)
        x = self.embedding_dropout(self.embedding_norm(x))
        mask = padding_mask(attention_mask)
        for block in self.blocks:
            x = block(x, mask)
        return self.final_norm(x)


class EncoderForMaskedLM(nn.Module):
    """Encoder plus MLM head: ``model(input_ids, attention_mask=None, labels=None) -> LMOutput``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.head = MaskedLMHead(config)
        if config.tie_embeddings:  # tied input/output embeddings: Press & Wolf 2017
            self.head.decoder.weight = self.encoder.token_embedding.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, LearnedPositionEmbedding):
            nn.init.normal_(module.weight, std=std)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> LMOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}.")
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        if labels is None:
            return LMOutput(logits=self.head(hidden), hidden_states=hidden)
        if self.config.sparse_prediction:  # predict only masked tokens: Geiping & Goldstein 2022 (cramming)
            selected = labels != IGNORE_INDEX
            logits, targets = self.head(hidden[selected]), labels[selected]
        else:
            logits, targets = self.head(hidden), labels
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX)
        return LMOutput(logits=logits, loss=loss, labels=targets, hidden_states=hidden)
