import pytest
import torch

from lit_lm.models import EncoderForMaskedLM
from tests.models.helpers import tiny


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def test_logits_cover_every_position_without_labels():
    model = EncoderForMaskedLM(tiny()).eval()
    out = model(torch.randint(5, 50, (3, 16)))
    assert out.logits.shape == (3, 16, 50)
    assert out.loss is None


@pytest.mark.parametrize("placement", ["pre", "post"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_loss_with_labels_is_finite_and_grads_reach_every_parameter(placement, norm):
    model = EncoderForMaskedLM(tiny(norm_placement=placement, norm=norm, final_norm=placement == "pre"))
    ids = torch.randint(5, 50, (2, 12))
    labels = torch.full_like(ids, -100)
    labels[:, ::3] = ids[:, ::3]
    out = model(ids, labels=labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None and "token_type" not in n]
    assert missing == []


def test_sparse_prediction_gives_the_same_loss_on_masked_positions_only():
    dense = EncoderForMaskedLM(tiny()).eval()
    sparse = EncoderForMaskedLM(tiny(sparse_prediction=True)).eval()
    sparse.load_state_dict(dense.state_dict())
    ids = torch.randint(5, 50, (2, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 7], labels[1, 8] = 9, 10, 11
    out_dense, out_sparse = dense(ids, labels=labels), sparse(ids, labels=labels)
    assert out_sparse.logits.shape == (3, 50)
    assert out_sparse.labels.tolist() == [9, 10, 11]
    torch.testing.assert_close(out_sparse.loss, out_dense.loss)
    torch.testing.assert_close(out_sparse.logits, out_dense.logits[labels != -100])


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_padding_does_not_change_real_positions(placement):
    # a wide initialisation makes attention far from uniform, so leaked padding would show
    model = EncoderForMaskedLM(tiny(norm_placement=placement, initializer_range=0.5)).eval()
    real = torch.randint(5, 50, (1, 10))
    padded = torch.cat([real, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 4)], dim=1).long()
    garbage = padded.clone()
    garbage[:, 10:] = torch.randint(5, 50, (1, 4))  # what sits under the mask must not matter
    alone = model(real).logits
    with_pad = model(padded, attention_mask=mask).logits[:, :10]
    with_garbage = model(garbage, attention_mask=mask).logits[:, :10]
    torch.testing.assert_close(with_pad, alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(with_garbage, alone, atol=1e-4, rtol=1e-4)
    unmasked = model(garbage).logits[:, :10]
    assert not torch.allclose(unmasked, alone, atol=1e-3)  # the mask, not luck, kept them equal


def test_tied_and_untied_embeddings():
    tied = EncoderForMaskedLM(tiny(tie_embeddings=True))
    untied = EncoderForMaskedLM(tiny(tie_embeddings=False))
    assert tied.head.decoder.weight is tied.encoder.token_embedding.weight
    assert untied.head.decoder.weight is not untied.encoder.token_embedding.weight
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n_params(untied) - n_params(tied) == 50 * 32


def test_bias_switches_remove_biases():
    with_bias = EncoderForMaskedLM(tiny())
    no_qkv = EncoderForMaskedLM(tiny(qkv_bias=False))
    assert with_bias.encoder.blocks[0].attn.qkv.bias is not None
    assert no_qkv.encoder.blocks[0].attn.qkv.bias is None
    assert no_qkv.encoder.blocks[0].attn.out.bias is not None
    no_bias = EncoderForMaskedLM(tiny(bias=False, qkv_bias=False))
    assert not any(name.endswith("bias") for name, _ in no_bias.named_parameters())


def test_token_types_change_the_output_and_can_be_disabled():
    model = EncoderForMaskedLM(tiny(type_vocab_size=2)).eval()
    ids = torch.randint(5, 50, (1, 8))
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    with_types = model.encoder(ids, token_type_ids=types).hidden_states
    assert not torch.allclose(model.encoder(ids).hidden_states, with_types)
    assert EncoderForMaskedLM(tiny(type_vocab_size=0)).encoder.token_type_embedding is None


def test_sequence_longer_than_the_position_table_is_a_clear_error():
    model = EncoderForMaskedLM(tiny(max_position_embeddings=8))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.randint(5, 50, (1, 9)))


@pytest.mark.parametrize("bad, match", [
    (dict(hidden_size=30, num_heads=4), "divisible by num_heads"),
    (dict(dropout=1.0), "dropout"),
    (dict(pad_token_id=50), "pad_token_id"),
    (dict(num_layers=0), "num_layers"),
])
def test_config_rejects_values_out_of_range(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny(**bad)
