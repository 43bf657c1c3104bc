import pytest
import torch

from lit_lm.models import TransformerConfig
from lit_lm.modules import MaskedLMModule, OptimizerConfig


def module(vocab=60, **kw) -> MaskedLMModule:
    config = TransformerConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                               max_position_embeddings=32, dropout=0.0, attention_dropout=0.0,
                               norm_placement="pre", final_norm=True, sparse_prediction=True)
    return MaskedLMModule(config, OptimizerConfig(lr=3e-3), special_token_ids=[0, 1, 2, 3, 4], mask_token_id=4,
                          seq_length=32, **kw)


def test_a_few_steps_fit_a_fixed_batch():
    torch.manual_seed(0)
    lm = module(mask_rate=0.3)
    batch = {"input_ids": torch.randint(5, 60, (8, 32))}
    batch["input_ids"][:, 0] = 2
    opt = lm.configure_optimizers()
    losses = []
    for _ in range(40):
        inputs, labels = lm._mask(batch["input_ids"], torch.Generator().manual_seed(0))  # one fixed mask
        loss = lm(inputs, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_replacement_ids_exclude_special_tokens():
    lm = module()
    assert not torch.isin(lm.masking.replacement_ids, torch.tensor([0, 1, 2, 3, 4])).any()
    assert len(lm.masking.replacement_ids) == 55


@pytest.mark.parametrize("kw, match", [
    (dict(mask_rate=0.0), "mask_rate"),
    (dict(mask_token_fraction=0.95, random_token_fraction=0.1), "sum to"),
])
def test_bad_masking_settings_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        module(**kw)


def test_seq_length_beyond_the_position_table_is_a_clear_error():
    config = TransformerConfig(vocab_size=60, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                               max_position_embeddings=16)
    with pytest.raises(ValueError, match="data.seq_length"):
        MaskedLMModule(config, seq_length=32, special_token_ids=[0], mask_token_id=4)


def test_checkpoint_from_another_vocabulary_is_a_clear_error():
    saved = module(vocab=60)
    checkpoint = {"state_dict": saved.state_dict(), "hyper_parameters": dict(saved.hparams)}
    with pytest.raises(ValueError, match="vocabulary of 60 tokens but the tokenizer now has 80"):
        module(vocab=80).on_load_checkpoint(checkpoint)


def test_validation_masks_are_fixed_by_their_seed():
    """Two validations, with training's random stream moved in between, mask every batch the same way; another
    val_mask_seed masks it otherwise. Masks redrawn at each validation would make val/loss jump between evaluations."""
    import lightning as L
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(0)
    batches = DataLoader([{"input_ids": torch.randint(5, 60, (4, 32), generator=generator)} for _ in range(2)],
                         batch_size=None)

    def validation_labels(lm: MaskedLMModule, seed: int) -> list[torch.Tensor]:
        seen, mask = [], MaskedLMModule._mask.__get__(lm)  # the module's own, not a recording from before

        def recording(input_ids, generator=None):
            inputs, labels = mask(input_ids, generator)
            seen.append(labels)
            return inputs, labels

        lm._mask = recording
        torch.manual_seed(seed)  # where training left the global random stream
        L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False).validate(lm, batches, verbose=False)
        return seen

    lm = module()
    first, second = validation_labels(lm, seed=0), validation_labels(lm, seed=1)
    assert len(first) == 2 and all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], first[1])  # each batch its own mask (seeded by its index)
    other = validation_labels(module(val_mask_seed=99), seed=0)
    assert not any(torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("mask_rate", [0.05, 0.4])
def test_the_mask_rate_reaches_the_masks_drawn_in_training(mask_rate):
    """The module's own training path (a Trainer's training_step) chooses ``mask_rate`` of the real tokens. The
    chosen count is binomial: n = 64 rows x 27 real tokens = 1728 trials at p = mask_rate, sd = sqrt(n p (1 - p)):
    9.1 at p = 0.05 (mean 86), 20.4 at p = 0.4 (mean 691). The count must lie within 4 sd of n p; any other rate
    lies outside (BERT's 0.15 gives 259 +- 15, 19 sd from the first and 21 sd from the second)."""
    import lightning as L
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (64, 32), generator=generator)
    ids[:, 0] = 2  # [CLS]
    ids[:, 28:] = 0  # padding
    attention_mask = (ids != 0).long()
    real = ~torch.isin(ids, torch.tensor([0, 1, 2, 3, 4]))
    n = int(real.sum())
    assert n == 64 * 27
    lm = module(mask_rate=mask_rate)
    drawn = []
    lm.model.register_forward_pre_hook(lambda model, args, kwargs: drawn.append(kwargs["labels"].clone()),
                                       with_kwargs=True)
    torch.manual_seed(0)
    L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(
        lm, DataLoader([{"input_ids": ids, "attention_mask": attention_mask}], batch_size=None))
    assert len(drawn) == 1  # the one training step's masks
    chosen = drawn[0] != -100
    assert not (chosen & ~real).any()  # never [CLS] nor padding
    assert torch.equal(drawn[0][chosen], ids[chosen])  # the labels are the original tokens
    sd = (n * mask_rate * (1 - mask_rate)) ** 0.5
    assert abs(int(chosen.sum()) - n * mask_rate) <= 4 * sd, (int(chosen.sum()), n * mask_rate, sd)
