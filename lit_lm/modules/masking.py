"""BERT's masking of input tokens for masked-language-model pretraining (Devlin et al. 2018)."""

import torch

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
