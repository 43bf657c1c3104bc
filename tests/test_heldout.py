"""The fixed held-out set: the same sequences and masks every time, scored as the models' own cross-entropy."""

import torch
import torch.nn.functional as F

from lit_lm.data import PretrainingDataModule
from lit_lm.data.tokenizer import TokenizerConfig
from lit_lm.heldout import HeldOutSet
from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM, TransformerConfig
from lit_lm.models.output import IGNORE_INDEX


def datamodule(corpus, kind="wordpiece"):
    data = PretrainingDataModule(paths=[str(corpus)], split="paragraph", seq_length=32, batch_size=8,
                                 tokenizer=TokenizerConfig(kind=kind, vocab_size=300), progress=False)
    data.prepare_data()
    return data


def tiny(data, **kw):
    return TransformerConfig(vocab_size=data.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                             intermediate_size=64, max_position_embeddings=32, pad_token_id=data.pad_token_id, **kw)


def test_the_masks_are_fixed_by_the_seed_and_follow_berts_rate(corpus, tmp_path):
    data = datamodule(corpus)
    first = HeldOutSet.from_datamodule(data, "masked", sequences=16)
    again = HeldOutSet.load(first.save(tmp_path / "heldout.pt"))
    rebuilt = HeldOutSet.from_datamodule(data, "masked", sequences=16)
    other = HeldOutSet.from_datamodule(data, "masked", sequences=16, seed=1)
    for a, b in ((first, again), (first, rebuilt)):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(first.labels, other.labels)  # the seed, not chance, fixes the masks
    real = first.attention_mask.bool()
    scored = first.labels != IGNORE_INDEX
    assert 0.08 < scored.sum() / real.sum() < 0.22 and not (scored & ~real).any()
    special = torch.isin(first.labels, torch.tensor(data.special_token_ids))
    assert not special.any()  # special tokens are never a target
    assert first.card == data.card and first.scored_tokens == int(scored.sum())


def test_a_masked_lm_scores_its_own_cross_entropy_over_the_masked_tokens(corpus):
    data = datamodule(corpus)
    heldout = HeldOutSet.from_datamodule(data, "masked", sequences=12)
    torch.manual_seed(0)
    model = EncoderForMaskedLM(tiny(data, sparse_prediction=False)).train()
    with torch.no_grad():
        logits = model.eval()(heldout.inputs, attention_mask=heldout.attention_mask).logits
    expected = F.cross_entropy(logits.flatten(0, 1), heldout.labels.flatten(), ignore_index=IGNORE_INDEX)
    model.train()
    assert abs(heldout.score(model, batch_size=5) - expected.item()) < 1e-5  # batches weighted by their tokens
    assert model.training  # its mode is restored


def test_a_causal_lm_scores_every_next_token_but_padding(corpus):
    data = datamodule(corpus, kind="byte_bpe")
    heldout = HeldOutSet.from_datamodule(data, "causal", sequences=12)
    assert torch.equal(heldout.inputs[heldout.attention_mask.bool()], heldout.labels[heldout.attention_mask.bool()])
    torch.manual_seed(0)
    model = DecoderForCausalLM(tiny(data)).eval()
    with torch.no_grad():
        logits = model(heldout.inputs, attention_mask=heldout.attention_mask).logits
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), heldout.labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    assert abs(heldout.score(model, batch_size=5) - expected.item()) < 1e-5
