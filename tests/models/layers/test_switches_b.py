"""Issue 14, part B, the depth switches: ffn_every, stochastic_depth, residual: rezero, zero_init_residual and
share_layers / share_groups. Each changes what it says and nothing else, keeps padding out of real positions and
(decoders) causality and KV-cache decoding, exports as custom code with equal logits, and trains through the CLI."""

import copy

import pytest
import torch
from torch import nn

from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM, TransformerConfig
from lit_lm.models.layers import TransformerBlock
from lit_lm.models.layers.sharing import layer_group
from lit_lm.models.layers.stochastic_depth import StochasticDepth, drop_rate
from lit_lm.modules.optim import decay_param_groups
from tests.models.helpers import (assert_causal_and_cache_equals_full_forward, assert_every_parameter_trains,
                                  assert_padding_never_changes_real_positions, export_and_reload, quickstart_with,
                                  tiny)
from tests.models.test_decoder import GPT2

SWITCHES = {
    "ffn-every-2": dict(num_layers=4, ffn_every=2),
    "no-ffn": dict(ffn_every=0),
    "stochastic-depth": dict(stochastic_depth=0.5),
    "rezero": dict(residual="rezero"),
    "zero-init-residual": dict(zero_init_residual=True, norm_placement="pre", final_norm=True),
    "albert": dict(share_layers="all"),
    "share-attention-2-groups": dict(num_layers=4, share_layers="attention", share_groups=2),
    "share-ffn-every-2": dict(num_layers=4, share_layers="ffn", ffn_every=2),
    "rezero-albert-moe": dict(residual="rezero", share_layers="all", moe_experts=2, moe_capacity_factor=4.0),
}
DEFAULTS = dict(ffn_every=1, stochastic_depth=0.0, residual="standard", zero_init_residual=False, share_layers="none",
                share_groups=1)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def perturbed(model: nn.Module, scale: float = 0.2) -> nn.Module:
    """Move every parameter off its initial value (ReZero's 0, zero-initialised projections, identity blocks), so
    that every branch computes something."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn_like(param))
    return model


def encoder(**switches) -> EncoderForMaskedLM:
    return perturbed(EncoderForMaskedLM(tiny(initializer_range=0.3, **switches))).eval()


def decoder(**switches) -> DecoderForCausalLM:
    return perturbed(DecoderForCausalLM(tiny(**{**GPT2, "initializer_range": 0.3, **switches}))).eval()


def unique_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ---- defaults: today's model, bitwise ----
def test_the_defaults_are_todays_model():
    assert {name: getattr(TransformerConfig(), name) for name in DEFAULTS} == DEFAULTS
    for model_class, extra in ((EncoderForMaskedLM, {}), (DecoderForCausalLM, GPT2)):
        ids = torch.randint(5, 50, (2, 12))
        torch.manual_seed(0)
        plain = model_class(tiny(**extra)).eval()
        torch.manual_seed(0)
        explicit = model_class(tiny(**extra, **DEFAULTS)).eval()
        assert list(plain.state_dict()) == list(explicit.state_dict())
        assert all(torch.equal(v, explicit.state_dict()[k]) for k, v in plain.state_dict().items())
        assert torch.equal(plain(ids).logits, explicit(ids).logits)


# ---- ffn_every ----
@pytest.mark.parametrize("every, with_ffn", [(1, [0, 1, 2, 3, 4, 5]), (2, [1, 3, 5]), (3, [2, 5]), (0, [])])
def test_ffn_every_puts_feed_forward_layers_only_in_every_kth_block(every, with_ffn):
    model = EncoderForMaskedLM(tiny(num_layers=6, ffn_every=every))
    blocks = model.encoder.blocks
    assert [i for i, block in enumerate(blocks) if block.ffn is not None] == with_ffn
    without = [i for i in range(6) if i not in with_ffn]
    assert not [n for n in model.state_dict() if any(n.startswith(f"encoder.blocks.{i}.ffn") for i in without)]
    every_block = EncoderForMaskedLM(tiny(num_layers=6))
    ffn_size = sum(p.numel() for p in (*every_block.encoder.blocks[0].ffn.parameters(),
                                       *every_block.encoder.blocks[0].ffn_norm.parameters()))
    assert unique_parameter_count(every_block) - unique_parameter_count(model) == len(without) * ffn_size


@pytest.mark.parametrize("placement", ["post", "pre"])
def test_a_block_without_feed_forward_is_attention_and_its_norm_alone(placement):
    block = TransformerBlock(tiny(ffn_every=2, norm_placement=placement), index=0).eval()
    x = torch.randn(2, 6, 32)
    attention = block.attn(block.attn_norm(x) if placement == "pre" else x)[0]
    expected = x + attention if placement == "pre" else block.attn_norm(x + attention)
    torch.testing.assert_close(block(x).hidden, expected)


# ---- stochastic depth ----
def test_stochastic_depth_rate_rises_linearly_to_p_at_the_top():
    config = tiny(num_layers=4, stochastic_depth=0.4)
    assert [drop_rate(config, i) for i in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    model = EncoderForMaskedLM(config)
    assert [block.drop_branch.rate for block in model.encoder.blocks] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert list(model.state_dict()) == list(EncoderForMaskedLM(tiny(num_layers=4)).state_dict())  # no parameters


def test_stochastic_depth_drops_whole_samples_and_scales_the_survivors():
    drop = StochasticDepth(0.25).train()
    branch = torch.randn(4000, 3, 5)
    out = drop(branch)
    kept = out.flatten(1).ne(0).all(1)
    assert torch.equal(out.flatten(1).eq(0).all(1), ~kept)  # per sample: all or nothing
    torch.testing.assert_close(out[kept], branch[kept] / 0.75)
    assert abs((~kept).float().mean().item() - 0.25) < 0.03
    assert drop.eval()(branch) is branch and StochasticDepth(0.0).train()(branch) is branch


def test_stochastic_depth_acts_in_training_only():
    ids = torch.randint(5, 50, (8, 12))
    torch.manual_seed(0)
    plain = EncoderForMaskedLM(tiny())
    torch.manual_seed(0)
    dropping = EncoderForMaskedLM(tiny(stochastic_depth=0.5))
    assert torch.equal(plain.eval()(ids).logits, dropping.eval()(ids).logits)  # eval: the identity, bitwise
    dropping.train()
    assert not torch.equal(dropping(ids).logits, dropping(ids).logits)  # training: a new draw each forward
    assert torch.equal(plain.train()(ids).logits, plain(ids).logits)  # tiny() has no dropout: only the switch varies


# ---- ReZero and zero-initialised residual branches ----
def test_rezero_blocks_have_no_norms_one_zero_gate_each_and_start_as_the_identity():
    model = EncoderForMaskedLM(tiny(residual="rezero", num_layers=3)).eval()
    blocks = model.encoder.blocks
    assert not [m for m in blocks.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))]
    assert [n for n in model.state_dict() if "rezero" in n] == [f"encoder.blocks.{i}.rezero.alpha" for i in range(3)]
    assert all(block.rezero.alpha.item() == 0.0 for block in blocks)
    x = torch.randn(2, 6, 32)
    assert torch.equal(blocks[0](x).hidden, x)
    block = blocks[0]
    with torch.no_grad():
        block.rezero.alpha.fill_(0.5)
    after_attention = x + 0.5 * block.attn(x)[0]
    torch.testing.assert_close(block(x).hidden, after_attention + 0.5 * block.ffn(after_attention))
    model(torch.randint(5, 50, (2, 8))).logits.sum().backward()
    assert all(block.rezero.alpha.grad is not None for block in blocks)


@pytest.mark.parametrize("model_class, extra", [(EncoderForMaskedLM, {}), (DecoderForCausalLM, GPT2),
                                                (EncoderForMaskedLM, dict(moe_experts=2))],
                         ids=["encoder", "decoder", "moe"])
def test_zero_init_residual_zeroes_the_branch_outputs_and_nothing_else(model_class, extra):
    torch.manual_seed(0)
    plain = model_class(tiny(**extra)).state_dict()
    torch.manual_seed(0)
    model = model_class(tiny(**extra, zero_init_residual=True))
    zeroed = [name for name, value in model.state_dict().items() if not torch.equal(value, plain[name])]
    assert zeroed and all(name.endswith(("attn.out.weight", "ffn.down.weight", "ffn.down")) for name in zeroed)
    assert all(model.state_dict()[name].eq(0).all() for name in zeroed)
    assert len(zeroed) == 2 * model.config.num_layers


def test_zero_init_residual_pre_ln_blocks_start_as_the_identity():
    model = EncoderForMaskedLM(tiny(zero_init_residual=True, norm_placement="pre", final_norm=True, bias=False))
    x = torch.randn(2, 6, 32)
    for block in model.encoder.blocks:
        assert torch.equal(block(x).hidden, x)


# ---- cross-layer sharing ----
def test_layer_groups_are_consecutive_blocks():
    assert [layer_group(tiny(num_layers=6, share_groups=2), i) for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert [layer_group(tiny(num_layers=6, share_groups=4), i) for i in range(6)] == [0, 0, 1, 2, 2, 3]
    assert [layer_group(tiny(num_layers=3, share_groups=1), i) for i in range(3)] == [0, 0, 0]


@pytest.mark.parametrize("share, groups, owners", [
    ("all", 1, {"attn": [0, 0, 0, 0], "ffn": [0, 0, 0, 0]}),
    ("attention", 2, {"attn": [0, 0, 2, 2], "ffn": [0, 1, 2, 3]}),
    ("ffn", 2, {"attn": [0, 1, 2, 3], "ffn": [0, 0, 2, 2]}),
])
def test_share_layers_shares_the_named_sublayers_within_each_group(share, groups, owners):
    model = EncoderForMaskedLM(tiny(num_layers=4, share_layers=share, share_groups=groups))
    blocks = model.encoder.blocks
    for part, owner in owners.items():
        assert [getattr(blocks[owner[i]], part) is getattr(block, part) for i, block in enumerate(blocks)] == [True] * 4
        norm = f"{part}_norm"
        assert [getattr(blocks[owner[i]], norm) is getattr(block, norm) for i, block in enumerate(blocks)] == [True] * 4
    keys = model.state_dict()
    for part, owner in owners.items():  # each shared tensor once, under the group's first block
        assert {i for i in range(4) if f"encoder.blocks.{i}.{part}.qkv.weight" in keys
                or f"encoder.blocks.{i}.{part}.up.weight" in keys} == set(owner)
    plain = EncoderForMaskedLM(tiny(num_layers=4))
    block = plain.encoder.blocks[0]
    saved = sum((4 - len(set(owner))) * sum(p.numel() for name in (part, f"{part}_norm")
                                            for p in getattr(block, name).parameters())
                for part, owner in owners.items())  # the borrowers' copies, which exist nowhere
    assert unique_parameter_count(plain) - unique_parameter_count(model) == saved
    assert sum(v.numel() for v in plain.state_dict().values()) - sum(v.numel() for v in keys.values()) == saved
    grouped = decay_param_groups(model, 0.01)
    assert sum(p.numel() for group in grouped for p in group["params"]) == unique_parameter_count(model)


def test_share_ffn_with_ffn_every_the_first_block_with_one_owns_it():
    model = EncoderForMaskedLM(tiny(num_layers=4, share_layers="ffn", ffn_every=2))
    blocks = model.encoder.blocks
    assert blocks[0].ffn is None and blocks[2].ffn is None and blocks[1].ffn is blocks[3].ffn
    assert [n for n in model.state_dict() if n.endswith("ffn.up.weight")] == ["encoder.blocks.1.ffn.up.weight"]


def test_sharing_changes_nothing_but_the_weights_it_shares():
    ids = torch.randint(5, 50, (2, 12))
    torch.manual_seed(0)
    plain = EncoderForMaskedLM(tiny(num_layers=3)).eval()
    torch.manual_seed(0)
    unshared = EncoderForMaskedLM(tiny(num_layers=3, share_layers="all", share_groups=3)).eval()  # a group each
    assert list(plain.state_dict()) == list(unshared.state_dict())
    assert torch.equal(plain(ids).logits, unshared(ids).logits)
    shared = EncoderForMaskedLM(tiny(num_layers=3, share_layers="all")).eval()
    with torch.no_grad():  # the same as an unshared model whose every block holds block 0's weights
        for block in unshared.encoder.blocks:
            block.load_state_dict(shared.encoder.blocks[0].state_dict())
        for name, value in shared.state_dict().items():
            if ".blocks." not in name:
                unshared.state_dict()[name].copy_(value)
    torch.testing.assert_close(shared(ids).logits, unshared(ids).logits, atol=0, rtol=0)


def test_shared_weights_survive_state_dict_round_trips_copies_and_training():
    model = encoder(num_layers=3, share_layers="attention")
    ids = torch.randint(5, 50, (2, 10))
    fresh = EncoderForMaskedLM(tiny(num_layers=3, share_layers="attention"))
    fresh.load_state_dict(model.state_dict())  # strict: the same keys, each shared tensor once
    assert fresh.encoder.blocks[2].attn is fresh.encoder.blocks[0].attn
    torch.testing.assert_close(fresh.eval()(ids).logits, model(ids).logits, atol=0, rtol=0)
    twin = copy.deepcopy(model)
    assert twin.encoder.blocks[1].attn is twin.encoder.blocks[0].attn is not model.encoder.blocks[0].attn
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    assert model.encoder.blocks[2].attn is model.encoder.blocks[0].attn  # still one module after a step


# ---- bad values: a clear error naming the setting ----
@pytest.mark.parametrize("bad, setting", [
    (dict(ffn_every=-1), "ffn_every"), (dict(ffn_every=3), "ffn_every"),
    (dict(stochastic_depth=1.0), "stochastic_depth"), (dict(stochastic_depth=-0.1), "stochastic_depth"),
    (dict(residual="highway"), "residual"), (dict(share_layers="heads"), "share_layers"),
    (dict(share_groups=0), "share_groups"), (dict(share_groups=3), "share_groups"),
])
def test_bad_values_are_refused_with_the_setting_named(bad, setting):
    with pytest.raises(ValueError, match=f"model config: {setting}"):
        tiny(**bad)


# ---- every switch: padding, causality, KV cache, training, export ----
@pytest.mark.parametrize("switches", SWITCHES.values(), ids=SWITCHES.keys())
def test_padding_never_changes_real_positions(switches):
    assert_padding_never_changes_real_positions(encoder(**switches))


@pytest.mark.parametrize("switches", SWITCHES.values(), ids=SWITCHES.keys())
def test_decoder_is_causal_and_kv_cache_decoding_equals_the_full_forward(switches):
    assert_causal_and_cache_equals_full_forward(decoder(**switches))


@pytest.mark.parametrize("model_class", [EncoderForMaskedLM, DecoderForCausalLM], ids=["encoder", "decoder"])
@pytest.mark.parametrize("switches", SWITCHES.values(), ids=SWITCHES.keys())
def test_every_switch_trains_every_parameter(switches, model_class):
    extra = GPT2 if model_class is DecoderForCausalLM else {}
    model = perturbed(model_class(tiny(**{**extra, **switches}))).train()
    assert_every_parameter_trains(model)


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
@pytest.mark.parametrize("switches", SWITCHES.values(), ids=SWITCHES.keys())
def test_custom_code_export_round_trips_with_equal_logits(switches, causal, tmp_path):
    from lit_lm.hf import load_pretrained

    model = decoder(**switches) if causal else encoder(**switches)
    ids = torch.randint(5, 50, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    hf = export_and_reload(model, tmp_path / "export", causal)
    assert sum(p.numel() for p in hf.parameters()) == unique_parameter_count(model)  # shared weights stay shared
    with torch.no_grad():
        want = model(ids, attention_mask=mask).logits
        assert (hf(input_ids=ids, attention_mask=mask).logits - want)[mask.bool()].abs().max() <= 1e-5
        if not causal:  # lit-lm reads its own export directly (a strict state dict load)
            assert torch.equal(load_pretrained(tmp_path / "export").eval()(ids, attention_mask=mask).logits, want)


# ---- through the CLI: the quickstart trains with the switch on, exports and reloads ----
CLI_SWITCHES = {
    "ffn-every-2": {"ffn_every": "2"},
    "stochastic-depth": {"stochastic_depth": "0.2"},
    "rezero": {"residual": "rezero"},
    "zero-init-residual": {"zero_init_residual": "true"},
    "albert": {"share_layers": "all"},
    "share-attention-2-groups": {"share_layers": "attention", "share_groups": "2", "num_layers": "4"},
}


@pytest.mark.parametrize("switches", CLI_SWITCHES.values(), ids=CLI_SWITCHES.keys())
@pytest.mark.slow
def test_quickstart_trains_with_the_switch_and_its_export_reloads_with_equal_logits(switches, corpus, tmp_path,
                                                                                     monkeypatch):
    trained = quickstart_with(switches, corpus, tmp_path, monkeypatch)
    for name, value in {"num_layers": "2", **switches}.items():
        assert str(getattr(trained.config, name)).lower() == value
