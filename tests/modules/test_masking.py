import pytest
import torch

from lit_lm.modules.masking import IGNORE_INDEX, mask_tokens

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
