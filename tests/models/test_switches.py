"""Every switch of TransformerConfig changes what it should."""

import math

import pytest
import torch
from torch import nn

from lit_lm.models import EncoderForMaskedLM
from lit_lm.models.layers import AttentionInputs, FeedForward, SelfAttention, TransformerBlock
from lit_lm.models.layers.conv import DepthwiseSequenceConv
from lit_lm.models.layers.heads import prediction_count
from tests.models.helpers import padded, tiny
from tests.float_error import model_tolerance


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


EVERY_SWITCH = {
    "bert": {},
    "pre-rmsnorm-no-bias": dict(norm="rmsnorm", norm_placement="pre", final_norm=True, qkv_bias=False, bias=False),
    "primer": dict(qkv_conv_kernel_size=3, activation="squared_relu"),
    "talking-heads": dict(talking_heads=True),
    "moe": dict(moe_experts=4, moe_top_k=2, moe_capacity_factor=4.0),
    "mixture-of-softmaxes": dict(output_softmaxes=3),
    "swiglu": dict(activation="swiglu"),
    "rotary": dict(relative_positions="rotary", position_embedding="none"),
    "t5-buckets": dict(relative_positions="t5", position_embedding="none", position_buckets=8),
    "deberta": dict(relative_positions="disentangled", position_embedding="none", position_buckets=8,
                    share_att_key=True, relative_embedding_norm=True, conv_kernel_size=3, head_position_embedding=True),
    "ffn-every-2": dict(ffn_every=2),
    "albert-shared-layers": dict(share_layers="all"),
    "synthesizer-dense": dict(token_mixer="synthesizer_dense"),
    "fourier-no-positions": dict(token_mixer="fourier", position_embedding="none"),
}


def randomise_talking_heads(model: nn.Module) -> None:
    """Talking heads start as the identity; mix heads for real so that masking after the mix is exercised."""
    for name, p in model.named_parameters():
        if name.endswith("_mix"):
            with torch.no_grad():
                p.add_(0.5 * torch.randn_like(p))


@pytest.mark.parametrize("switches", EVERY_SWITCH.values(), ids=EVERY_SWITCH.keys())
def test_padding_never_changes_real_positions(switches):
    model = EncoderForMaskedLM(tiny(initializer_range=0.5, **switches)).eval()
    randomise_talking_heads(model)
    real, padded_ids, garbage, mask = padded()
    alone = model(real).logits
    for ids in (padded_ids, garbage):  # what sits under the mask must not matter
        torch.testing.assert_close(model(ids, attention_mask=mask).logits[:, :10], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("switches", EVERY_SWITCH.values(), ids=EVERY_SWITCH.keys())
def test_every_switch_trains_every_parameter(switches):
    model = EncoderForMaskedLM(tiny(**switches, type_vocab_size=0))
    ids = torch.randint(5, 50, (2, 12))
    labels = torch.where(torch.rand(2, 12) < 0.5, ids, -100)
    out = model(ids, labels=labels)
    loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
    loss.backward()
    assert torch.isfinite(loss)
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


# ---- norms ----
@pytest.mark.parametrize("norm, kind", [("layernorm", nn.LayerNorm), ("rmsnorm", nn.RMSNorm)])
def test_norm_type_sets_every_norm(norm, kind):
    model = EncoderForMaskedLM(tiny(norm=norm, final_norm=True))
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))]
    assert len(norms) == 1 + 2 * 2 + 1 + 1  # embeddings, two per block, final, head transform
    assert all(isinstance(m, kind) for m in norms)


def test_post_norm_normalises_block_outputs_and_pre_norm_leaves_the_residual_stream():
    x = 3.0 + 5.0 * torch.randn(2, 8, 32)
    post = TransformerBlock(tiny(norm_placement="post")).eval()
    pre = TransformerBlock(tiny(norm_placement="pre")).eval()
    y_post, y_pre = post(x).hidden, pre(x).hidden
    torch.testing.assert_close(y_post.mean(-1), torch.zeros(2, 8), atol=1e-4, rtol=0)
    torch.testing.assert_close(y_post.std(-1, unbiased=False), torch.ones(2, 8), atol=1e-3, rtol=0)
    assert (y_pre.mean(-1) - x.mean(-1)).abs().max() < 1.0  # x + small updates: still centred near 3
    assert y_pre.mean().item() > 2.0


@pytest.mark.parametrize("final_norm", [True, False])
def test_final_norm_normalises_the_encoder_output(final_norm):
    model = EncoderForMaskedLM(tiny(norm_placement="pre", norm="rmsnorm", final_norm=final_norm,
                                    initializer_range=0.5)).eval()
    hidden = model(torch.randint(5, 50, (2, 8))).hidden_states
    rms = hidden.square().mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3) == final_norm


# ---- biases and embeddings ----
def test_no_biases_anywhere_with_every_layer_switched_on():
    config = tiny(bias=False, qkv_bias=False, relative_positions="disentangled", position_embedding="none",
                  conv_kernel_size=3, qkv_conv_kernel_size=3, moe_experts=2, output_softmaxes=2)
    assert not any("bias" in name for name, _ in EncoderForMaskedLM(config).named_parameters())
    with_bias = dict(EncoderForMaskedLM(tiny(relative_positions="disentangled", moe_experts=2)).named_parameters())
    assert "encoder.blocks.0.attn.relative.pos_key.bias" in with_bias
    assert "encoder.blocks.0.ffn.up_bias" in with_bias


def test_position_offset_reads_the_table_from_the_offset():
    plain = EncoderForMaskedLM(tiny(type_vocab_size=0)).eval()
    offset = EncoderForMaskedLM(tiny(type_vocab_size=0, position_offset=2, max_position_embeddings=26)).eval()
    state = plain.state_dict()
    table = state["encoder.position_embedding.weight"]
    state["encoder.position_embedding.weight"] = torch.cat([torch.randn(2, 32), table])
    offset.load_state_dict(state)
    ids = torch.randint(5, 50, (1, 24))
    torch.testing.assert_close(offset(ids).logits, plain(ids).logits)
    with pytest.raises(ValueError, match="longer than the model takes"):
        offset(torch.randint(5, 50, (1, 25)))


def test_without_any_positions_the_encoder_is_permutation_equivariant():
    model = EncoderForMaskedLM(tiny(position_embedding="none", initializer_range=0.5)).eval()
    ids = torch.randint(5, 50, (1, 10))
    order = torch.randperm(10)
    reference = model(ids).logits
    torch.testing.assert_close(model(ids[:, order]).logits, reference[:, order], **model_tolerance(model, reference))
    learned = EncoderForMaskedLM(tiny(initializer_range=0.5)).eval()
    assert not torch.allclose(learned(ids[:, order]).logits, learned(ids).logits[:, order], atol=1e-3)


# ---- activations ----
def reference_activation(name: str, x: torch.Tensor) -> torch.Tensor:
    formulas = {
        "gelu": lambda v: 0.5 * v * (1 + torch.erf(v / math.sqrt(2))),
        "gelu_tanh": lambda v: 0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
        "relu": lambda v: v.clamp(min=0),
        "squared_relu": lambda v: v.clamp(min=0) ** 2,
        "silu": lambda v: v * torch.sigmoid(v),
    }
    gates = {"geglu": "gelu", "swiglu": "silu", "reglu": "relu"}
    if name in gates:
        gate, value = x.chunk(2, dim=-1)
        return formulas[gates[name]](gate) * value
    return formulas[name](x)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "relu", "squared_relu", "silu", "geglu", "swiglu", "reglu"])
def test_feed_forward_computes_its_activation(name):
    ffn = FeedForward(tiny(activation=name)).eval()
    gated = name.endswith("glu")
    assert ffn.up.weight.shape == ((128 if gated else 64), 32) and ffn.down.weight.shape == (32, 64)
    x = torch.randn(3, 32)
    expected = ffn.down(reference_activation(name, ffn.up(x)))
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)


# ---- attention switches ----
def test_talking_heads_start_as_plain_attention_and_mix_heads():
    plain = SelfAttention(tiny()).eval()
    talking = SelfAttention(tiny(talking_heads=True)).eval()
    talking.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(talking(x)[0], plain(x)[0], atol=1e-5, rtol=1e-5)
    swap = torch.eye(4)[[1, 0, 2, 3]]
    with torch.no_grad():
        talking.talking_heads.weights_mix.copy_(swap)  # head 0 now uses head 1's attention weights, and back
    _, plain_weights = plain(x, AttentionInputs(need_weights=True))
    _, mixed_weights = talking(x, AttentionInputs(need_weights=True))
    torch.testing.assert_close(mixed_weights, plain_weights[:, [1, 0, 2, 3]])
    assert not torch.allclose(talking(x)[0], plain(x)[0], atol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_primer_convolution_is_a_depthwise_three_tap_filter(causal):
    conv = DepthwiseSequenceConv(channels=4, kernel_size=3, causal=causal)
    x = torch.randn(1, 7, 4)
    y = conv(x)
    w, b = conv.conv.weight[:, 0, :], conv.conv.bias  # [channels, 3]
    padded_x = torch.cat([torch.zeros(1, 2 if causal else 1, 4), x, torch.zeros(1, 0 if causal else 1, 4)], dim=1)
    expected = torch.stack([(padded_x[0, i : i + 3] * w.t()).sum(0) + b for i in range(7)])[None]
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    mask = torch.ones(1, 7, 1)
    mask[:, 5:] = 0
    torch.testing.assert_close(conv(x, mask)[:, :5], conv(x[:, :5]), atol=1e-6, rtol=0)  # padding reads as zeros


@pytest.mark.parametrize("switches", [{}, dict(qkv_conv_kernel_size=3), dict(talking_heads=True),
                                      dict(relative_positions="disentangled", position_embedding="none")],
                         ids=["plain", "primer", "talking-heads", "disentangled"])
def test_causal_attention_never_looks_ahead(switches):
    attention = SelfAttention(tiny(**switches), causal=True).eval()
    relative = None
    if switches.get("relative_positions"):
        from lit_lm.models.layers import RelativePositionEmbedding
        relative = RelativePositionEmbedding(tiny(**switches))(8)
    x = torch.randn(1, 8, 32)
    changed = x.clone()
    changed[:, 5:] = torch.randn(1, 3, 32)
    inputs = AttentionInputs(relative=relative)
    y, y_changed = attention(x, inputs)[0], attention(changed, inputs)[0]
    torch.testing.assert_close(y[:, :5], y_changed[:, :5])
    assert not torch.allclose(y[:, 5:], y_changed[:, 5:])
    y_explicit, weights = attention(x, inputs._replace(need_weights=True))
    torch.testing.assert_close(y_explicit, y, atol=1e-5, rtol=1e-5)
    assert torch.all(weights.triu(diagonal=1) == 0)


def test_attention_maps_are_returned_and_match_the_fast_path():
    model = EncoderForMaskedLM(tiny(initializer_range=0.3, relative_positions="disentangled")).eval()
    _, ids, _, mask = padded()
    fast = model(ids, attention_mask=mask)
    out = model(ids, attention_mask=mask, output_attentions=True)
    assert fast.attentions is None and len(out.attentions) == 2
    torch.testing.assert_close(out.logits, fast.logits, **model_tolerance(model, fast.logits))
    for weights in out.attentions:
        assert weights.shape == (1, 4, 14, 14)
        torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 14))
        assert torch.all(weights[..., 10:] == 0)  # nothing attends to padding


# ---- heads ----
def test_mixture_of_softmaxes_returns_normalised_log_probabilities():
    plain = EncoderForMaskedLM(tiny(output_softmaxes=1)).eval()
    mixture = EncoderForMaskedLM(tiny(output_softmaxes=3)).eval()
    assert plain.head.mixture is None and mixture.head.mixture.components == 3
    ids = torch.randint(5, 50, (2, 8))
    log_probs = mixture(ids).logits
    torch.testing.assert_close(log_probs.logsumexp(-1), torch.zeros(2, 8), atol=1e-5, rtol=0)
    hidden = torch.randn(5, 32)  # a mixture of K softmaxes, by hand
    head = mixture.head.mixture
    prior = head.prior(hidden).softmax(-1)
    latent = torch.tanh(head.latent(hidden)).view(5, 3, 32)
    expected = (prior[..., None] * mixture.head.decoder(latent).softmax(-1)).sum(1).log()
    torch.testing.assert_close(head(hidden, mixture.head.decoder), expected, atol=1e-5, rtol=1e-5)


def test_head_position_embedding_adds_positions_before_the_head_only():
    model = EncoderForMaskedLM(tiny(position_embedding="none", relative_positions="disentangled",
                                    head_position_embedding=True)).eval()
    ids = torch.randint(5, 50, (1, 8))
    out = model(ids)
    expected = model.head(out.hidden_states + model.head_position_embedding.weight[:8])
    torch.testing.assert_close(out.logits, expected)
    with torch.no_grad():
        model.head_position_embedding.weight.zero_()
    again = model(ids)
    torch.testing.assert_close(again.hidden_states, out.hidden_states)
    assert not torch.allclose(again.logits, out.logits)


# ---- sparse prediction ----
def test_sparse_prediction_with_a_rate_has_a_fixed_number_of_slots_and_the_same_loss():
    dense = EncoderForMaskedLM(tiny()).eval()
    sparse = EncoderForMaskedLM(tiny(sparse_prediction=True, sparse_prediction_rate=0.15)).eval()
    sparse.load_state_dict(dense.state_dict())
    ids = torch.randint(5, 50, (4, 16))
    n = prediction_count(64, 0.15)
    for p in (0.05, 0.15, 0.2):
        labels = torch.where(torch.rand(4, 16) < p, ids, -100)
        out, reference = sparse(ids, labels=labels), dense(ids, labels=labels)
        assert out.logits.shape == (n, 50)  # static: the same whatever the number of masked tokens
        labelled = int((labels != -100).sum())
        assert out.labels[:labelled].tolist() == labels[labels != -100].tolist()
        assert (out.labels[labelled:] == -100).all()
        torch.testing.assert_close(out.loss, reference.loss)


def test_static_sparse_prediction_compiles_without_graph_breaks():
    model = EncoderForMaskedLM(tiny(sparse_prediction=True, sparse_prediction_rate=0.25))
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: fails on any dynamic shape
    ids = torch.randint(5, 50, (2, 16))
    labels = torch.where(torch.rand(2, 16) < 0.25, ids, -100)
    out = compiled(ids, labels=labels)
    torch.testing.assert_close(out.loss, model(ids, labels=labels).loss)


# ---- dropout ----
def test_dropout_only_acts_in_training_and_only_when_set():
    ids = torch.randint(5, 50, (2, 8))
    noisy = EncoderForMaskedLM(tiny(dropout=0.1, attention_dropout=0.1)).train()
    assert not torch.allclose(noisy(ids).logits, noisy(ids).logits)
    noisy.eval()
    torch.testing.assert_close(noisy(ids).logits, noisy(ids).logits)
    quiet = EncoderForMaskedLM(tiny(dropout=0.0, attention_dropout=0.0)).train()
    torch.testing.assert_close(quiet(ids).logits, quiet(ids).logits)
