"""The decoder: causal for every switch, KV-cache decoding equal to full forwards, padding-safe, trainable."""

import pytest
import torch
from torch import nn

from lit_lm.models import DecoderForCausalLM
from lit_lm.models.layers.positions.t5 import t5_bucket
from tests.models.helpers import tiny
from tests.models.test_switches import randomise_talking_heads
from tests.float_error import model_tolerance


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


GPT2 = dict(type_vocab_size=0, norm_placement="pre", final_norm=True, embedding_norm=False, head_transform=False,
            activation="gelu_tanh", norm_eps=1e-5)
EVERY_SWITCH = {
    "gpt2": {},
    "post-ln-head-transform": dict(norm_placement="post", final_norm=False, embedding_norm=True, head_transform=True),
    "rmsnorm-no-bias-untied": dict(norm="rmsnorm", qkv_bias=False, bias=False, tie_embeddings=False),
    "rotary": dict(relative_positions="rotary", position_embedding="none"),
    "t5-buckets": dict(relative_positions="t5", position_embedding="none", position_buckets=8,
                       max_relative_positions=16),
    "primer": dict(qkv_conv_kernel_size=3, activation="squared_relu"),
    "talking-heads": dict(talking_heads=True),
    "moe": dict(moe_experts=4, moe_top_k=2, moe_capacity_factor=4.0),  # capacity for every token: no dropping
    "mixture-of-softmaxes": dict(output_softmaxes=3),
    "swiglu": dict(activation="swiglu"),
    "geglu-rotary-primer": dict(activation="geglu", relative_positions="rotary", position_embedding="none",
                                qkv_conv_kernel_size=3),
}


def decoder(**switches) -> DecoderForCausalLM:
    model = DecoderForCausalLM(tiny(**{**GPT2, "initializer_range": 0.3, **switches})).eval()
    randomise_talking_heads(model)
    return model


@pytest.mark.parametrize("switches", EVERY_SWITCH.values(), ids=EVERY_SWITCH.keys())
def test_future_tokens_never_change_past_logits(switches):
    model = decoder(**switches)
    ids = torch.randint(0, 50, (2, 16))
    changed = ids.clone()
    changed[:, 9:] = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        before, after = model(ids).logits, model(changed).logits
    torch.testing.assert_close(after[:, :9], before[:, :9], **model_tolerance(model, before))
    assert (after[:, 9:] - before[:, 9:]).abs().max() > 1e-3  # the changed positions do see the change


@pytest.mark.parametrize("switches", EVERY_SWITCH.values(), ids=EVERY_SWITCH.keys())
def test_kv_cache_decoding_equals_the_full_forward(switches):
    model = decoder(**switches)
    ids = torch.randint(0, 50, (2, 14))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache()
        pieces = [model(ids[:, :5], cache=cache).logits]  # a prompt, then a chunk of 3, then one token at a time
        pieces.append(model(ids[:, 5:8], cache=cache).logits)
        pieces += [model(ids[:, t : t + 1], cache=cache).logits for t in range(8, 14)]
    assert cache.length == 14
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **model_tolerance(model, full))


@pytest.mark.parametrize("switches", EVERY_SWITCH.values(), ids=EVERY_SWITCH.keys())
def test_every_switch_trains_every_parameter(switches):
    model = DecoderForCausalLM(tiny(**{**GPT2, **switches})).train()
    ids = torch.randint(0, 50, (2, 12))
    out = model(ids, labels=ids)
    loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
    loss.backward()
    assert torch.isfinite(loss)
    untouched = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not untouched


@pytest.mark.parametrize("switches", [EVERY_SWITCH[k] for k in ("gpt2", "primer", "moe", "t5-buckets")],
                         ids=["gpt2", "primer", "moe", "t5-buckets"])
def test_padding_never_changes_real_positions_left_or_right(switches):
    model = decoder(**switches)
    real = torch.randint(0, 50, (1, 9))
    garbage = torch.randint(0, 50, (1, 4))
    with torch.no_grad():
        alone = model(real).logits
        right = model(torch.cat([real, garbage], 1), torch.tensor([[1] * 9 + [0] * 4])).logits[:, :9]
    torch.testing.assert_close(right, alone, **model_tolerance(model, alone))
    if switches.get("position_embedding", "learned") == "none":  # relative positions: left padding is harmless too
        with torch.no_grad():
            left = model(torch.cat([garbage, real], 1), torch.tensor([[0] * 4 + [1] * 9])).logits[:, 4:]
        assert torch.isfinite(left).all()
        torch.testing.assert_close(left, alone, **model_tolerance(model, alone))


def test_loss_is_the_next_token_cross_entropy_and_ignores_minus_100():
    model = decoder()
    ids = torch.randint(0, 50, (2, 10))
    labels = ids.clone()
    labels[1, 6:] = -100
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, 50)
    targets = labels[:, 1:].reshape(-1)
    keep = targets != -100
    expected = nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(out.loss, expected)


def test_causal_t5_buckets_are_exact_near_and_logarithmic_far():
    distance = torch.arange(0, 200)
    buckets = t5_bucket(-distance, buckets=32, max_distance=128, bidirectional=False)
    assert buckets[:16].tolist() == list(range(16))  # half the buckets: exact distances
    assert (buckets.diff() >= 0).all() and buckets[128:].eq(31).all() and buckets[100] < 31
    assert t5_bucket(torch.tensor([5]), 32, 128, bidirectional=False).item() == 0  # future keys: masked anyway
    both = t5_bucket(torch.tensor([-3, 3]), 32, 128, bidirectional=True)
    assert both.tolist() == [3, 16 + 3]
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5").T5Attention
    relative = torch.arange(-300, 300)
    for bidirectional in (True, False):  # the same buckets as T5's reference implementation
        reference = t5._relative_position_bucket(relative, bidirectional, num_buckets=32, max_distance=128)
        assert torch.equal(t5_bucket(relative, 32, 128, bidirectional), reference)


@pytest.mark.parametrize("bad", [dict(relative_positions="disentangled", position_embedding="none"),
                                 dict(conv_kernel_size=3), dict(sparse_prediction=True)])
def test_encoder_only_switches_are_refused_with_the_setting_named(bad):
    with pytest.raises(ValueError, match="a decoder cannot use"):
        DecoderForCausalLM(tiny(**{**GPT2, **bad}))


def test_gpt2_init_scales_residual_projections():
    model = DecoderForCausalLM(tiny(**GPT2, num_layers=8, hidden_size=256, intermediate_size=1024, num_heads=4))
    out_std = model.decoder.blocks[0].attn.out.weight.std().item()
    qkv_std = model.decoder.blocks[0].attn.qkv.weight.std().item()
    assert abs(qkv_std - 0.02) < 0.002 and abs(out_std - 0.02 / 4) < 0.001
