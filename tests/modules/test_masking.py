import pytest
import torch

from lit_lm.models import TransformerConfig
from lit_lm.modules.masking import IGNORE_INDEX, TokenMasking, mask_tokens

SPECIAL = torch.tensor([0, 1, 2, 3, 4])  # pad, unk, cls, sep, mask
MASK_ID = 4
VOCAB = 1000


def run(ids, rate=0.15, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return mask_tokens(ids, mask_rate=rate, mask_token_id=MASK_ID, special_token_ids=SPECIAL,
                       replacement_ids=torch.arange(5, VOCAB), generator=g, **kw)


@pytest.fixture
def ids():
    ids = torch.randint(5, VOCAB, (64, 512), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 2  # [CLS]
    ids[:, 100::50] = 3  # [SEP]
    ids[:8, -40:] = 0  # padding
    return ids


@pytest.mark.parametrize("rate", [0.15, 0.25, 0.4])
def test_masking_rate_and_80_10_10_split(ids, rate):
    inputs, labels = run(ids, rate)
    chosen = labels != IGNORE_INDEX
    maskable = ~torch.isin(ids, SPECIAL)
    assert chosen.sum() / maskable.sum() == pytest.approx(rate, abs=0.01)
    n = chosen.sum().item()
    as_mask = (inputs[chosen] == MASK_ID).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n
    assert as_mask == pytest.approx(0.8, abs=0.015)
    # "kept" also counts random draws that happened to pick the original token (about 1 in 1000 here)
    assert kept == pytest.approx(0.1, abs=0.015)
    assert 1 - as_mask - kept == pytest.approx(0.1, abs=0.015)


def test_special_tokens_and_padding_are_never_masked(ids):
    inputs, labels = run(ids, rate=0.9)
    special = torch.isin(ids, SPECIAL)
    assert (labels[special] == IGNORE_INDEX).all()
    assert torch.equal(inputs[special], ids[special])


def test_labels_hold_originals_and_random_replacements_are_never_special(ids):
    inputs, labels = run(ids, rate=0.5)
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], ids[chosen])
    replaced = chosen & (inputs != MASK_ID) & (inputs != ids)
    assert replaced.any()
    assert not torch.isin(inputs[replaced], SPECIAL).any()
    assert torch.equal(inputs[~chosen], ids[~chosen])


def test_masks_are_reproducible_with_a_generator_and_fresh_without(ids):
    a, b = run(ids, seed=7), run(ids, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = run(ids, seed=8)
    assert not torch.equal(a[1], c[1])
    # without a generator (training): the global random stream, so every call draws fresh masks ...
    torch.manual_seed(7)
    fresh = [mask_tokens(ids, mask_rate=0.15, mask_token_id=MASK_ID, special_token_ids=SPECIAL,
                         replacement_ids=torch.arange(5, VOCAB))[1] for _ in range(2)]
    assert not torch.equal(fresh[0], fresh[1])
    torch.manual_seed(7)  # ... and the global seed reproduces them
    assert torch.equal(mask_tokens(ids, mask_rate=0.15, mask_token_id=MASK_ID, special_token_ids=SPECIAL,
                                   replacement_ids=torch.arange(5, VOCAB))[1], fresh[0])


def test_custom_fractions(ids):
    inputs, labels = run(ids, rate=0.3, mask_token_fraction=1.0, random_token_fraction=0.0)
    chosen = labels != IGNORE_INDEX
    assert (inputs[chosen] == MASK_ID).all()


def test_the_draws_are_made_on_the_inputs_device():
    """A CUDA batch must get its masks and replacement ids drawn on CUDA. PyTorch's meta device stands in for it on
    a CPU-only machine: a tensor drawn on the CPU cannot meet a meta tensor, so a draw on the default device fails."""
    ids = torch.randint(5, VOCAB, (4, 16)).to("meta")
    inputs, labels = mask_tokens(ids, mask_rate=0.5, mask_token_id=MASK_ID, special_token_ids=SPECIAL.to("meta"),
                                 replacement_ids=torch.arange(5, VOCAB).to("meta"))
    assert inputs.device.type == labels.device.type == "meta" and inputs.shape == labels.shape == ids.shape


def test_the_replacement_ids_are_drawn_on_the_inputs_device(monkeypatch):
    """The replacement draw too: CUDA may index with CPU indices, so its device is checked where torch is asked."""
    asked, randint = [], torch.randint
    ids = torch.randint(5, VOCAB, (2, 8))

    def recording_randint(high, size, device=None, generator=None):
        asked.append(torch.device(device) if device is not None else None)
        return randint(high, size, generator=generator)

    monkeypatch.setattr(torch, "randint", recording_randint)
    run(ids)
    assert asked == [ids.device]


# ---- TokenMasking: the settings an objective checks once, and its special and replacement ids ----
def config(**overrides) -> TransformerConfig:
    return TransformerConfig(**{**dict(vocab_size=VOCAB, hidden_size=8, num_layers=1, num_heads=2,
                                       intermediate_size=16, pad_token_id=0), **overrides})


def masking(mask_rate=0.15, mask_token_fraction=0.8, random_token_fraction=0.1, mask_token_id=MASK_ID,
            special_token_ids=None, **overrides) -> TokenMasking:
    return TokenMasking(config(**overrides), mask_rate, mask_token_fraction, random_token_fraction, mask_token_id,
                        special_token_ids)


def test_special_ids_default_to_padding_and_mask_and_are_never_drawn_as_replacements():
    default = masking()
    assert default.special_ids.tolist() == [0, MASK_ID]  # padding and [MASK]
    assert default.replacement_ids.tolist() == [i for i in range(VOCAB) if i not in (0, MASK_ID)]
    given = masking(special_token_ids=[3, 1, 0, 2, 4, 2])
    assert given.special_ids.tolist() == [0, 1, 2, 3, 4]  # as given, sorted, once each
    assert given.replacement_ids.tolist() == list(range(5, VOCAB))


def test_the_id_buffers_stay_out_of_checkpoints():
    """They follow from the config and the tokenizer: a checkpoint or an exported model does not carry them."""
    assert masking().state_dict() == {}


def test_ids_outside_the_vocabulary_are_refused():
    masking(mask_token_id=VOCAB - 1)  # the last id is fine
    for bad in (dict(mask_token_id=VOCAB), dict(special_token_ids=[0, VOCAB]), dict(special_token_ids=[-1, 0])):
        with pytest.raises(ValueError, match=rf"fall outside the vocabulary of {VOCAB}; the tokenizer and "
                                             r"model.config.vocab_size disagree"):
            masking(**bad)


def test_a_tokenizer_without_a_mask_token_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"no mask token \(\[MASK\] or <mask>\), which masking needs; use a BERT or "
                                         r"RoBERTa style tokenizer \(data.tokenizer.special_tokens: bert or roberta\)"):
        masking(mask_token_id=None)


@pytest.mark.parametrize("rate", [0.0, 1.0, 1.5, -0.1])
def test_a_mask_rate_outside_zero_to_one_is_refused(rate):
    with pytest.raises(ValueError, match=r"model.mask_rate must be in \(0, 1\)"):
        TokenMasking.check_rates(rate, 0.8, 0.1)


@pytest.mark.parametrize("fractions", [(-0.1, 0.5), (0.5, -0.1), (0.6, 0.6), (1.5, 0.0)])
def test_fractions_below_zero_or_summing_past_one_are_refused(fractions):
    with pytest.raises(ValueError, match=r"model.mask_token_fraction and model.random_token_fraction must be >= 0 "
                                         r"and sum to <= 1"):
        TokenMasking.check_rates(0.15, *fractions)


@pytest.mark.parametrize("fractions", [(0.0, 0.5), (0.5, 0.0), (0.8, 0.2), (1.0, 0.0), (0.0, 0.0)])
def test_fractions_at_their_bounds_are_allowed(fractions):
    TokenMasking.check_rates(0.15, *fractions)  # 0.8 + 0.2 is exactly 1.0 in binary floating point
    TokenMasking.check_rates(1e-6, *fractions)
    TokenMasking.check_rates(1 - 1e-6, *fractions)


def test_forward_masks_with_its_own_fractions_and_the_generator_it_is_given(ids):
    all_mask = masking(mask_rate=0.5, mask_token_fraction=1.0, random_token_fraction=0.0)
    inputs, labels = all_mask(ids, torch.Generator().manual_seed(0))
    chosen = labels != IGNORE_INDEX
    assert chosen.any() and (inputs[chosen] == MASK_ID).all()
    all_random = masking(mask_rate=0.5, mask_token_fraction=0.0, random_token_fraction=1.0)
    inputs, labels = all_random(ids, torch.Generator().manual_seed(0))
    chosen = labels != IGNORE_INDEX
    assert not (inputs[chosen] == MASK_ID).any()
    # every chosen token is redrawn among VOCAB - 2 ids: it keeps its own id with probability 1/998
    assert (inputs[chosen] != ids[chosen]).float().mean() > 0.99
    # the generator it is given draws everything: two generators seeded alike give the same masks and replacements,
    # whatever the global random stream does in between
    torch.manual_seed(1)
    first = all_random(ids, torch.Generator().manual_seed(5))
    torch.manual_seed(2)
    second = all_random(ids, torch.Generator().manual_seed(5))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
