"""Output heads."""

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.activations import activation_fn
from lit_lm.models.layers.norms import build_norm


class MixtureOfSoftmaxes(nn.Module):
    """Mixture of softmaxes (Yang et al. 2018): K softmaxes over the vocabulary, from K tanh projections of the
    hidden state, mixed by weights predicted from it. Lifts the rank limit of one softmax. Returns log-probabilities,
    which serve as logits: their log-softmax is themselves."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.components = config.output_softmaxes
        self.prior = nn.Linear(config.hidden_size, self.components, bias=False)
        self.latent = nn.Linear(config.hidden_size, self.components * config.hidden_size, bias=config.bias)

    def forward(self, hidden: torch.Tensor, decoder: nn.Linear) -> torch.Tensor:
        log_prior = F.log_softmax(self.prior(hidden).float(), dim=-1)  # [..., K]
        latent = torch.tanh(self.latent(hidden)).unflatten(-1, (self.components, -1))  # [..., K, hidden]
        log_probs = F.log_softmax(decoder(latent).float(), dim=-1)  # [..., K, vocab]
        return torch.logsumexp(log_prior.unsqueeze(-1) + log_probs, dim=-2)


class MaskedLMHead(nn.Module):
    """BERT's MLM head: optional transform (dense, activation, norm), then a projection onto the vocabulary.
    Decoders use it too, with ``output_bias=False`` (GPT-2's output projection has no bias)."""

    def __init__(self, config: TransformerConfig, output_bias: bool | None = None) -> None:
        super().__init__()
        self.transform = config.head_transform
        if self.transform:
            self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
            self.act = activation_fn(config.head_activation)
            self.norm = build_norm(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size,
                                 bias=config.bias if output_bias is None else output_bias)
        self.mixture = MixtureOfSoftmaxes(config) if config.output_softmaxes > 1 else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.transform:
            hidden = self.norm(self.act(self.dense(hidden)))
        if self.mixture is not None:
            return self.mixture(hidden, self.decoder)
        return self.decoder(hidden)
