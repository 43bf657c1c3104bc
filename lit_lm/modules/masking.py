"""BERT's masking of input tokens for masked-language-model pretraining (Devlin et al. 2018)."""

import torch

from lit_lm.models.config import TransformerConfig
from lit_lm.models.output import IGNORE_INDEX


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_rate: float,
    mask_token_id: int,
    special_token_ids: torch.Tensor,
    replacement_ids: torch.Tensor,
    mask_token_fraction: float = 0.8,
    random_token_fraction: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``mask_rate`` of the non-special tokens; of those, replace ``mask_token_fraction`` by [MASK],
    ``random_token_fraction`` by a random non-special token, and keep the rest.

    Returns ``(inputs, labels)``: labels hold the original id at chosen positions and -100 elsewhere.
    Special tokens (and padding) are never chosen. Called on every step, so a sequence gets a new mask
    every time it is seen (RoBERTa's dynamic masking).
    """
    def uniform() -> torch.Tensor:
        return torch.rand(input_ids.shape, device=input_ids.device, generator=generator)

    maskable = ~torch.isin(input_ids, special_token_ids)
    chosen = (uniform() < mask_rate) & maskable
    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    action = uniform()
    to_mask = chosen & (action < mask_token_fraction)
    to_random = chosen & (action >= mask_token_fraction) & (action < mask_token_fraction + random_token_fraction)
    random_ids = replacement_ids[
        torch.randint(len(replacement_ids), input_ids.shape, device=input_ids.device, generator=generator)
    ]
    inputs = torch.where(to_mask, mask_token_id, input_ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


class TokenMasking(torch.nn.Module):
    """The masking settings of an objective that masks its inputs (masked-LM, replaced-token detection's generator),
    checked once, with the special ids never chosen and the ids a random replacement may take as buffers.

    Args:
        config: The model's config (its vocabulary and padding id).
        mask_rate: Fraction of non-special tokens chosen.
        mask_token_fraction: Of the chosen tokens, the fraction replaced by [MASK].
        random_token_fraction: Of the chosen tokens, the fraction replaced by a random token; the rest stay.
        mask_token_id: Id of [MASK]; None (a tokenizer without one) is refused.
        special_token_ids: Ids never chosen nor drawn; None: padding and [MASK].
    """

    def __init__(self, config: TransformerConfig, mask_rate: float, mask_token_fraction: float,
                 random_token_fraction: float, mask_token_id: int | None,
                 special_token_ids: list[int] | None) -> None:
        super().__init__()
        self.check_rates(mask_rate, mask_token_fraction, random_token_fraction)
        if mask_token_id is None:
            raise ValueError("the tokenizer has no mask token ([MASK] or <mask>), which masking needs; use a BERT or "
                             "RoBERTa style tokenizer (data.tokenizer.special_tokens: bert or roberta).")
        special = sorted(set(special_token_ids or [config.pad_token_id, mask_token_id]))
        if not all(0 <= i < config.vocab_size for i in [*special, mask_token_id]):
            raise ValueError(f"special token ids {special} / mask id {mask_token_id} fall outside the vocabulary of "
                             f"{config.vocab_size}; the tokenizer and model.config.vocab_size disagree.")
        self.mask_rate, self.mask_token_id = mask_rate, mask_token_id
        self.mask_token_fraction, self.random_token_fraction = mask_token_fraction, random_token_fraction
        self.register_buffer("special_ids", torch.tensor(special), persistent=False)
        allowed = torch.ones(config.vocab_size, dtype=torch.bool)
        allowed[self.special_ids] = False
        self.register_buffer("replacement_ids", allowed.nonzero().squeeze(1), persistent=False)

    @staticmethod
    def check_rates(mask_rate: float, mask_token_fraction: float, random_token_fraction: float) -> None:
        """One clear error for rates out of range (before anything else reads them)."""
        if not 0.0 < mask_rate < 1.0:
            raise ValueError(f"model.mask_rate must be in (0, 1), got {mask_rate}.")
        if mask_token_fraction < 0 or random_token_fraction < 0 or mask_token_fraction + random_token_fraction > 1:
            raise ValueError("model.mask_token_fraction and model.random_token_fraction must be >= 0 and sum to <= 1.")

    def forward(self, input_ids: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``mask_tokens`` with these settings: ``(inputs, labels)``."""
        return mask_tokens(input_ids, mask_rate=self.mask_rate, mask_token_id=self.mask_token_id,
                           special_token_ids=self.special_ids, replacement_ids=self.replacement_ids,
                           mask_token_fraction=self.mask_token_fraction,
                           random_token_fraction=self.random_token_fraction, generator=generator)
