"""Issue 14, part D: per-layer widths (``layer_widths``, FirstNarrow) and DeBERTa's enhanced mask decoder in full
(``enhanced_mask_decoder_layers``). Each changes what it says and nothing else, keeps padding out of real positions
and (widths, decoders) causality and KV-cache decoding, exports as custom code with equal logits, and trains through
the CLI."""


import pytest
import torch
from torch import nn

from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM, TransformerConfig
from lit_lm.models.layers.widths import layer_config
from tests.models.helpers import (assert_causal_and_cache_equals_full_forward, assert_every_parameter_trains,
                                  assert_padding_never_changes_real_positions, export_and_reload, quickstart_with,
                                  tiny)
from tests.models.test_decoder import GPT2

WIDTHS = {  # tiny(): hidden_size 32, 4 heads, intermediate_size 64
    "first-narrow": dict(num_layers=3, layer_widths=[16, 16, 32]),
    "narrow-wide-narrow": dict(num_layers=3, layer_widths=[16, 48, 24]),
    "t5": dict(layer_widths=[16, 32], position_embedding="none", relative_positions="t5", position_buckets=8),
    "alibi-pre-ln": dict(layer_widths=[8, 24], position_embedding="none", relative_positions="alibi",
                         norm_placement="pre", final_norm=True),
    "primer-moe": dict(layer_widths=[16, 32], qkv_conv_kernel_size=3, moe_experts=2, moe_capacity_factor=4.0),
    "shared-groups": dict(num_layers=4, layer_widths=[16, 16, 32, 32], share_layers="all", share_groups=2),
}
ENCODER_WIDTHS = {  # encoder-only companions
    "ngie": dict(layer_widths=[16, 32], conv_kernel_size=3, conv_groups=2),
    "rotary-at-hidden-size": dict(layer_widths=[32, 32], position_embedding="none", relative_positions="rotary"),
    "disentangled-at-hidden-size": dict(layer_widths=[32, 32], position_embedding="none",
                                        relative_positions="disentangled", position_buckets=8),
}
EMD = {
    "emd-2": dict(enhanced_mask_decoder_layers=2),
    "emd-deberta": dict(enhanced_mask_decoder_layers=2, position_embedding="none", relative_positions="disentangled",
                        position_buckets=8, share_att_key=True, relative_terms=("c2p", "p2c")),
    "emd-pre-ln-sparse": dict(enhanced_mask_decoder_layers=1, norm_placement="pre", final_norm=True,
                              sparse_prediction=True),
    "emd-widths-primer": dict(enhanced_mask_decoder_layers=2, layer_widths=[16, 32], qkv_conv_kernel_size=3),
}
ENCODER_SWITCHES = {**WIDTHS, **ENCODER_WIDTHS, **EMD}


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def encoder(**switches) -> EncoderForMaskedLM:
    return EncoderForMaskedLM(tiny(initializer_range=0.3, **switches)).eval()


def decoder(**switches) -> DecoderForCausalLM:
    return DecoderForCausalLM(tiny(**{**GPT2, "initializer_range": 0.3, **switches})).eval()


def identical(a: nn.Module, b: nn.Module, ids: torch.Tensor) -> bool:
    """The same state dict (names, order, values) and bitwise the same logits."""
    sa, sb = a.state_dict(), b.state_dict()
    return (list(sa) == list(sb) and all(torch.equal(v, sb[k]) for k, v in sa.items())
            and torch.equal(a(ids).logits, b(ids).logits))


# ---- defaults: today's model, bitwise ----
@pytest.mark.parametrize("model_class, extra", [(EncoderForMaskedLM, {}), (DecoderForCausalLM, GPT2)],
                         ids=["encoder", "decoder"])
def test_the_defaults_are_todays_model(model_class, extra):
    config = TransformerConfig()
    assert config.layer_widths is None and config.enhanced_mask_decoder_layers == 0
    ids = torch.randint(5, 50, (2, 12))
    torch.manual_seed(0)
    plain = model_class(tiny(**extra)).eval()
    torch.manual_seed(0)
    explicit = model_class(tiny(**extra, layer_widths=None, enhanced_mask_decoder_layers=0)).eval()
    assert identical(plain, explicit, ids)
    assert plain.body.resize is None and layer_config(plain.config, 0) is plain.config


def test_widths_all_at_hidden_size_change_nothing():
    ids = torch.randint(5, 50, (2, 12))
    torch.manual_seed(0)
    plain = EncoderForMaskedLM(tiny(num_layers=3)).eval()
    torch.manual_seed(0)
    same = EncoderForMaskedLM(tiny(num_layers=3, layer_widths=[32, 32, 32])).eval()
    assert identical(plain, same, ids)  # no projection where the width does not change: no parameter, no op


# ---- layer_widths ----
def test_each_block_has_its_width_and_projections_join_them():
    model = EncoderForMaskedLM(tiny(num_layers=3, layer_widths=[16, 16, 48]))
    blocks = model.encoder.blocks
    assert [block.attn.qkv.in_features for block in blocks] == [16, 16, 48]
    assert [block.attn.head_dim for block in blocks] == [4, 4, 12]  # num_heads stays 4
    assert [block.ffn.up.out_features for block in blocks] == [32, 32, 96]  # intermediate_size * width / hidden_size
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if ".resize." in k and k.endswith("weight")}
    assert shapes == {"encoder.resize.projections.0.weight": (16, 32),  # embeddings -> first block
                      "encoder.resize.projections.2.weight": (48, 16),  # where the width changes
                      "encoder.resize.projections.3.weight": (32, 48)}  # last block -> hidden_size
    assert model.encoder.token_embedding.weight.shape == (50, 32) and model.head.dense.in_features == 32
    assert model.head.decoder.weight is model.encoder.token_embedding.weight  # tying unchanged


@pytest.mark.parametrize("placement", ["post", "pre"])
def test_the_body_is_the_blocks_joined_by_the_projections(placement):
    model = encoder(num_layers=3, layer_widths=[16, 48, 24], norm_placement=placement, final_norm=placement == "pre")
    body = model.encoder
    ids = torch.randint(5, 50, (2, 9))
    with torch.no_grad():
        x = body.embed(ids)
        for i, block in enumerate(body.blocks):
            x = block(body.resize.projections[i](x)).hidden
        want = body.final_norm(body.resize.projections[3](x))
        torch.testing.assert_close(body(ids).hidden_states, want, atol=0, rtol=0)


def test_narrow_blocks_have_fewer_parameters():
    def count(model):
        return sum(p.numel() for p in model.encoder.blocks.parameters())

    wide, narrow = EncoderForMaskedLM(tiny(num_layers=3)), EncoderForMaskedLM(tiny(num_layers=3, layer_widths=[16] * 3))
    assert count(narrow) < count(wide) / 3


@pytest.mark.parametrize("bad, message", [
    (dict(layer_widths=[16]), "one width per block"),
    (dict(layer_widths=[16, 18]), r"layer_widths\[1\] = 18 must be a positive multiple of num_heads"),
    (dict(layer_widths=[0, 16]), r"layer_widths\[0\] = 0"),
    (dict(layer_widths=[4, 16], intermediate_size=4), "leaves no feed-forward unit"),
    (dict(layer_widths=[16, 32], position_embedding="none", relative_positions="rotary"), "relative_positions rotary"),
    (dict(layer_widths=[16, 32], position_embedding="none", relative_positions="disentangled"),
     "relative_positions disentangled"),
    (dict(layer_widths=[16, 32], share_layers="all"), "share_layers all .* need one width"),
    (dict(num_layers=4, layer_widths=[16, 32, 32, 32], share_layers="ffn", share_groups=2), "share_layers ffn"),
    (dict(layer_widths=[16, 32], conv_kernel_size=3, conv_groups=32), r"layer_widths\[0\] = 16: .*conv_groups"),
    (dict(enhanced_mask_decoder_layers=-1), "enhanced_mask_decoder_layers must be >= 0"),
    (dict(enhanced_mask_decoder_layers=1, layer_widths=[32, 16]), "layer_widths\\[-1\\] is 16"),
])
def test_bad_values_are_refused_with_the_setting_named(bad, message):
    with pytest.raises(ValueError, match=f"model config: .*{message}"):
        tiny(**bad)


def test_allowed_combinations_build():
    """Each allowed combination builds the model its config asks for: each block at its width (the feed-forward
    scaled alike: intermediate_size * width // hidden_size), projections only where the width changes, the parts
    shared within a group and nothing across groups, and logits over the vocabulary at every position."""
    ids = torch.randint(5, 50, (2, 9))
    # a width per group: blocks 0-1 (group 0) at 16, blocks 2-3 (group 1) at 32, attention shared within each group
    model = encoder(num_layers=4, layer_widths=[16, 16, 32, 32], share_layers="attention", share_groups=2)
    blocks = model.encoder.blocks
    for block, width in zip(blocks, [16, 16, 32, 32]):
        assert (block.attn.qkv.in_features, block.attn.qkv.out_features, block.attn.out.out_features) == \
            (width, 3 * width, width)
        assert (block.ffn.up.in_features, block.ffn.up.out_features, block.ffn.down.out_features) == \
            (width, 2 * width, width)  # 64 * width // 32
    assert blocks[1].attn is blocks[0].attn and blocks[3].attn is blocks[2].attn
    assert blocks[2].attn is not blocks[0].attn
    assert len({id(block.ffn) for block in blocks}) == 4  # only the attention is shared
    projections = [(p.in_features, p.out_features) if isinstance(p, nn.Linear) else None
                   for p in model.encoder.resize.projections]
    assert projections == [(32, 16), None, (16, 32), None, None]  # into 16, 16 -> 16, into 32, 32 -> 32, back to 32
    with torch.no_grad():
        assert model(ids).logits.shape == (2, 9, 50)
    # rotary at hidden_size: every block at 32, no projection, no learned position table
    model = encoder(layer_widths=[32, 32], position_embedding="none", relative_positions="rotary")
    assert [block.attn.qkv.in_features for block in model.encoder.blocks] == [32, 32]
    assert all(isinstance(p, nn.Identity) for p in model.encoder.resize.projections)
    assert type(model.encoder.relative_positions).__name__ == "RotaryEmbedding"
    assert not any("position_embedding" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        assert model(ids).logits.shape == (2, 9, 50)


# ---- the enhanced mask decoder ----
def test_enhanced_mask_decoder_adds_no_parameters_but_the_position_table():
    torch.manual_seed(0)
    simplified = EncoderForMaskedLM(tiny(head_position_embedding=True))
    torch.manual_seed(0)
    full = EncoderForMaskedLM(tiny(enhanced_mask_decoder_layers=2))
    keys = list(full.state_dict())
    assert keys == list(simplified.state_dict())  # the one table: head_position_embedding.weight
    assert "head_position_embedding.weight" in keys and not [k for k in keys if "enhanced" in k]
    assert all(torch.equal(v, simplified.state_dict()[k]) for k, v in full.state_dict().items())


def test_enhanced_mask_decoder_is_the_last_block_again_with_positioned_queries():
    model = encoder(enhanced_mask_decoder_layers=2)
    ids = torch.randint(5, 50, (2, 11))
    with torch.no_grad():
        hidden = model.encoder(ids).hidden_states
        positions = model.head_position_embedding(11)
        last = model.encoder.blocks[-1]
        query = last(hidden, query=hidden + positions).hidden  # queries: hidden + positions; keys, values: hidden
        query = last(hidden, query=query).hidden
        torch.testing.assert_close(model(ids).logits, model.head(query), atol=0, rtol=0)
        simplified = model.head(hidden + positions)  # head_position_embedding alone: the simplified variant
        assert not torch.allclose(model(ids).logits, simplified)


@pytest.mark.parametrize("placement", ["post", "pre"])
def test_a_query_equal_to_the_input_is_plain_self_attention(placement):
    block = EncoderForMaskedLM(tiny(norm_placement=placement, qkv_conv_kernel_size=3)).encoder.blocks[0].eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(block(x, query=x.clone()).hidden, block(x).hidden, atol=0, rtol=0)


def test_enhanced_mask_decoder_brings_absolute_positions_to_a_position_free_body():
    ids = torch.randint(5, 50, (1, 10))
    order = torch.randperm(10)
    for layers, equivariant in ((0, True), (1, False)):
        model = encoder(position_embedding="none", enhanced_mask_decoder_layers=layers)
        with torch.no_grad():  # without positions the encoder is a function of the token set: permutation-equivariant
            permuted = model(ids[:, order]).logits
            same = torch.allclose(permuted, model(ids).logits[:, order], atol=1e-5)
        assert same == equivariant


def test_sparse_prediction_with_the_enhanced_mask_decoder_gives_the_dense_loss():
    ids = torch.randint(5, 50, (3, 12))
    labels = torch.full_like(ids, -100)
    labels[:, ::3] = ids[:, ::3]
    torch.manual_seed(0)
    dense = EncoderForMaskedLM(tiny(initializer_range=0.3, enhanced_mask_decoder_layers=2)).eval()
    for rate in (None, 0.4):
        torch.manual_seed(0)
        sparse = EncoderForMaskedLM(tiny(initializer_range=0.3, enhanced_mask_decoder_layers=2,
                                         sparse_prediction=True, sparse_prediction_rate=rate)).eval()
        with torch.no_grad():
            out = sparse(ids, labels=labels)
            torch.testing.assert_close(out.loss, dense(ids, labels=labels).loss)
        assert out.logits.shape[0] < ids.numel()


def test_a_decoder_refuses_the_enhanced_mask_decoder():
    with pytest.raises(ValueError, match="a decoder cannot use enhanced_mask_decoder_layers"):
        DecoderForCausalLM(tiny(**GPT2, enhanced_mask_decoder_layers=1))


def test_the_classifier_ignores_the_enhanced_mask_decoder():
    from lit_lm.models.classifier import SequenceClassifier

    model = SequenceClassifier(tiny(enhanced_mask_decoder_layers=2), num_labels=3).eval()
    assert model(torch.randint(5, 50, (2, 8))).logits.shape == (2, 3)


# ---- every switch: padding, causality, KV cache, training ----
@pytest.mark.parametrize("switches", ENCODER_SWITCHES.values(), ids=ENCODER_SWITCHES.keys())
def test_padding_never_changes_real_positions(switches):
    assert_padding_never_changes_real_positions(encoder(**switches))


@pytest.mark.parametrize("switches", WIDTHS.values(), ids=WIDTHS.keys())
def test_decoder_is_causal_and_kv_cache_decoding_equals_the_full_forward(switches):
    assert_causal_and_cache_equals_full_forward(decoder(**switches))


TRAINED = [(EncoderForMaskedLM, name) for name in (*WIDTHS, *EMD)] + [(DecoderForCausalLM, name) for name in WIDTHS]


@pytest.mark.parametrize("model_class, name", TRAINED,
                         ids=[f"{'decoder' if c is DecoderForCausalLM else 'encoder'}-{n}" for c, n in TRAINED])
def test_every_switch_trains_every_parameter(model_class, name):
    switches = ENCODER_SWITCHES[name]
    extra = GPT2 if model_class is DecoderForCausalLM else {}
    model = model_class(tiny(**{**extra, "initializer_range": 0.3, **switches})).train()
    assert_every_parameter_trains(model)


# ---- HuggingFace: custom code, equal logits ----
EXPORTS = [(False, s) for s in ("first-narrow", "t5", "ngie", "emd-2", "emd-deberta", "emd-widths-primer")]
EXPORTS += [(True, s) for s in ("narrow-wide-narrow", "alibi-pre-ln")]


@pytest.mark.parametrize("causal, name", EXPORTS, ids=[f"{'decoder' if c else 'encoder'}-{n}" for c, n in EXPORTS])
def test_custom_code_export_round_trips_with_equal_logits(causal, name, tmp_path):
    from lit_lm.hf import load_pretrained

    switches = ENCODER_SWITCHES[name]
    model = decoder(**switches) if causal else encoder(**switches)
    ids = torch.randint(5, 50, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    hf = export_and_reload(model, tmp_path / "export", causal)
    with torch.no_grad():
        want = model(ids, attention_mask=mask).logits
        assert (hf(input_ids=ids, attention_mask=mask).logits - want)[mask.bool()].abs().max() <= 1e-5
        if not causal:  # lit-lm reads its own export directly (a strict state dict load)
            assert torch.equal(load_pretrained(tmp_path / "export").eval()(ids, attention_mask=mask).logits, want)


# ---- through the CLI: the quickstart trains with the switch on, exports and reloads ----
CLI_SWITCHES = {
    "first-narrow": ({"layer_widths": "[16, 32]"}, dict(layer_widths=[16, 32])),
    "enhanced-mask-decoder": ({"enhanced_mask_decoder_layers": "2"}, dict(enhanced_mask_decoder_layers=2)),
}


@pytest.mark.parametrize("switches, expected", CLI_SWITCHES.values(), ids=CLI_SWITCHES.keys())
@pytest.mark.slow
def test_quickstart_trains_with_the_switch_and_its_export_reloads_with_equal_logits(switches, expected, corpus,
                                                                                     tmp_path, monkeypatch):
    trained = quickstart_with(switches, corpus, tmp_path, monkeypatch)
    for name, value in expected.items():
        assert getattr(trained.config, name) == value


def test_the_enhanced_mask_decoder_needs_attention_and_limits_the_length_to_its_table():
    from lit_lm.models.transformer import max_input_length

    with pytest.raises(ValueError, match="enhanced_mask_decoder_layers needs attention"):
        tiny(enhanced_mask_decoder_layers=1, token_mixer="fourier", position_embedding="none")
    config = tiny(enhanced_mask_decoder_layers=1, position_embedding="none", relative_positions="t5",
                  position_buckets=8)
    assert max_input_length(config) == config.max_sequence_length
