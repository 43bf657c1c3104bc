"""Issue 14, part A: softmax replacements, ScaleNorm, more activations, sinusoidal positions and ALiBi.

Each switch changes what it should and nothing else, keeps padding out of real positions, keeps decoders causal and
their KV-cache decoding equal to full forwards, exports as custom code with equal logits, and trains for a few steps
through the CLI on the quickstart recipe.
"""

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from lit_lm.hf import save_pretrained
from lit_lm.hf.remote import CODE_FILE
from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM, TransformerConfig
from lit_lm.models.layers import AttentionInputs, SelfAttention
from tests.models import test_decoder as decoder_tests
from tests.models import test_switches as encoder_tests
from tests.models.helpers import padded, tiny
from tests.float_error import model_tolerance

# one entry per switch value (beside the default): the config lines that turn it on
SWITCHES = {
    "attention-probs-relu": dict(attention_probs="relu"),
    "attention-probs-sigmoid": dict(attention_probs="sigmoid"),
    "scalenorm": dict(norm="scalenorm"),
    "pre-scalenorm": dict(norm="scalenorm", norm_placement="pre", final_norm=True),
    **{f"activation-{name}": dict(activation=name) for name in ("glu", "liglu", "elu", "selu", "softplus", "sigmoid")},
    "sinusoidal": dict(position_embedding="sinusoidal"),
    "scaled-sinusoidal": dict(position_embedding="scaled_sinusoidal"),
    "alibi": dict(relative_positions="alibi", position_embedding="none"),
    "alibi-6-heads": dict(relative_positions="alibi", position_embedding="none", hidden_size=48, num_heads=6),
}
DEFAULTS = {"attention_probs": "softmax", "norm": "layernorm", "activation": "gelu", "position_embedding": "learned",
            "relative_positions": "none"}  # today's behaviour, which every switch keeps by default


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


# ---- every switch: defaults, padding, causality, KV cache, training ----
@pytest.mark.parametrize("field, default", DEFAULTS.items())
def test_every_switch_defaults_to_todays_behaviour(field, default):
    assert getattr(TransformerConfig(), field) == default



@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
def test_the_defaults_build_todays_layers(causal):
    from lit_lm.models.layers.activations import activation_fn
    from lit_lm.models.layers.positions.learned import LearnedPositionEmbedding

    model = (DecoderForCausalLM if causal else EncoderForMaskedLM)(tiny())
    body = model.body
    assert type(body.position_embedding) is LearnedPositionEmbedding
    assert type(body.relative_positions).name == "none"
    block = body.blocks[0]
    assert type(block.attn_norm) is torch.nn.LayerNorm and block.attn.probs.fused
    assert block.ffn.act.fn is activation_fn("gelu") is F.gelu and not block.ffn.act.gated


@pytest.mark.parametrize("switches", SWITCHES.values(), ids=SWITCHES.keys())
def test_encoder_padding_never_changes_real_positions(switches):
    encoder_tests.test_padding_never_changes_real_positions(switches)


@pytest.mark.parametrize("switches", SWITCHES.values(), ids=SWITCHES.keys())
def test_encoder_and_decoder_train_every_parameter(switches):
    encoder_tests.test_every_switch_trains_every_parameter(switches)
    decoder_tests.test_every_switch_trains_every_parameter(switches)


@pytest.mark.parametrize("switches", SWITCHES.values(), ids=SWITCHES.keys())
def test_decoder_is_causal_and_decodes_with_a_kv_cache_like_full_forwards(switches):
    decoder_tests.test_future_tokens_never_change_past_logits(switches)
    decoder_tests.test_kv_cache_decoding_equals_the_full_forward(switches)
    decoder_tests.test_padding_never_changes_real_positions_left_or_right(switches)


# ---- HuggingFace: custom code with equal logits ----
def assert_custom_code_round_trip(model, folder, causal: bool) -> None:
    transformers = pytest.importorskip("transformers")
    folder = save_pretrained(model.eval(), folder)
    assert (folder / CODE_FILE).exists()  # no built-in class expresses these switches
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModelForMaskedLM
    hf = auto.from_pretrained(folder, trust_remote_code=True).eval()
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    with torch.no_grad():
        got = hf(input_ids=ids, attention_mask=mask).logits
        want = model(ids, attention_mask=mask).logits
    real = mask.bool()
    assert (got - want)[real].abs().max() <= 1e-5


@pytest.mark.parametrize("switches", SWITCHES.values(), ids=SWITCHES.keys())
@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
def test_to_hf_exports_custom_code_with_equal_logits(switches, causal, tmp_path):
    model_class = DecoderForCausalLM if causal else EncoderForMaskedLM
    extra = decoder_tests.GPT2 if causal else {}
    model = model_class(tiny(**{**extra, "initializer_range": 0.2, **switches}))
    assert_custom_code_round_trip(model, tmp_path / "export", causal)


# ---- attention_probs ----
@pytest.mark.parametrize("name, fn", [("relu", torch.relu), ("sigmoid", torch.sigmoid)])
def test_a_softmax_replacement_weighs_each_allowed_key_by_its_score_and_masked_ones_by_zero(name, fn):
    config = tiny(attention_probs=name)
    attention = SelfAttention(config).eval()
    x = torch.randn(2, 6, 32)
    allowed = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    allowed[1, ..., 4:] = False
    y, weights = attention(x, AttentionInputs(key_mask=allowed, need_weights=True))
    q, k, v = attention.qkv(x).view(2, 6, 3, 4, 8).permute(2, 0, 3, 1, 4)
    expected = fn(q @ k.transpose(-1, -2) / math.sqrt(8)) * allowed
    torch.testing.assert_close(weights, expected)
    assert torch.all(weights[1, ..., 4:] == 0)  # exactly 0, not merely small
    out = (expected @ v).transpose(1, 2).reshape(2, 6, 32)
    torch.testing.assert_close(y, attention.out(out))
    fast = y  # the replacement never takes SDPA: asking for the weights changes nothing
    torch.testing.assert_close(attention(x, AttentionInputs(key_mask=allowed))[0], fast)


def test_softmax_stays_on_sdpa_and_equals_the_explicit_softmax(monkeypatch):
    attention = SelfAttention(tiny()).eval()
    assert attention.probs.fused and not SelfAttention(tiny(attention_probs="relu")).probs.fused
    x = torch.randn(2, 6, 32)
    allowed = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    allowed[1, ..., 4:] = False
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    fast = attention(x, AttentionInputs(key_mask=allowed))[0]
    explicit, weights = attention(x, AttentionInputs(key_mask=allowed, need_weights=True))
    assert calls == [1]
    q, k, _ = attention.qkv(x).view(2, 6, 3, 4, 8).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~allowed, torch.finfo(torch.float32).min)
    torch.testing.assert_close(weights, scores.softmax(-1))
    torch.testing.assert_close(explicit, fast, atol=1e-6, rtol=1e-5)


def test_a_softmax_replacement_adds_no_parameters_and_changes_the_output():
    plain = EncoderForMaskedLM(tiny(initializer_range=0.3)).eval()
    relu = EncoderForMaskedLM(tiny(initializer_range=0.3, attention_probs="relu")).eval()
    assert list(relu.state_dict()) == list(plain.state_dict())
    relu.load_state_dict(plain.state_dict())
    ids = torch.randint(5, 50, (1, 8))
    assert not torch.allclose(relu(ids).logits, plain(ids).logits, atol=1e-3)


def test_an_unknown_attention_probs_is_refused_with_the_known_ones_listed():
    with pytest.raises(ValueError, match=r"unknown attention_probs 'tanh'; choose one of \['relu', 'sigmoid', "
                                         r"'softmax'\]"):
        SelfAttention(tiny(attention_probs="tanh"))



# ---- norm: scalenorm ----
def test_scalenorm_is_one_learned_scalar_times_the_unit_vector():
    from lit_lm.models.layers.norms import ScaleNorm, build_norm

    norm = build_norm(tiny(norm="scalenorm", norm_eps=1e-6))
    assert isinstance(norm, ScaleNorm) and [p.shape for p in norm.parameters()] == [torch.Size([])]
    torch.testing.assert_close(norm.scale, torch.tensor(math.sqrt(32)))  # unit RMS at the start
    with torch.no_grad():
        norm.scale.fill_(2.5)
    x = torch.randn(3, 5, 32) * 4 + 1
    torch.testing.assert_close(norm(x), 2.5 * x / (x.square().sum(-1, keepdim=True) + 1e-6).sqrt())
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_scalenorm_replaces_every_norm_and_is_not_weight_decayed():
    from lit_lm.models.layers.norms import ScaleNorm
    from lit_lm.modules.optim import decay_param_groups

    model = EncoderForMaskedLM(tiny(norm="scalenorm", final_norm=True, initializer_range=0.3))
    norms = [m for m in model.modules() if isinstance(m, ScaleNorm)]
    assert len(norms) == 1 + 2 * 2 + 1 + 1 and not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert all(m.scale.item() == pytest.approx(math.sqrt(32)) for m in norms)  # init_module keeps its start
    decayed = {id(p) for p in decay_param_groups(model, 0.01)[0]["params"]}
    assert not decayed & {id(m.scale) for m in norms}



# ---- activation: glu | liglu | elu | selu | softplus | sigmoid ----
SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805  # Klambauer et al. 2017
NEW_ACTIVATIONS = {  # each by its formula
    "elu": lambda v: torch.where(v > 0, v, v.exp() - 1),
    "selu": lambda v: SELU_SCALE * torch.where(v > 0, v, SELU_ALPHA * (v.exp() - 1)),
    "softplus": lambda v: v.exp().log1p(),
    "sigmoid": lambda v: 1 / (1 + (-v).exp()),
    "glu": lambda v: (lambda gate, value: value / (1 + (-gate).exp()))(*v.chunk(2, dim=-1)),
    "liglu": lambda v: (lambda gate, value: gate * value)(*v.chunk(2, dim=-1)),
}


@pytest.mark.parametrize("name", NEW_ACTIVATIONS)
def test_feed_forward_computes_the_new_activation_and_gated_ones_widen_the_up_projection(name):
    from lit_lm.models.layers import FeedForward

    ffn = FeedForward(tiny(activation=name)).eval()
    gated = name.endswith("glu")
    assert ffn.up.weight.shape == ((128 if gated else 64), 32) and ffn.down.weight.shape == (32, 64)
    x = torch.randn(3, 32)
    torch.testing.assert_close(ffn(x), ffn.down(NEW_ACTIVATIONS[name](ffn.up(x))), atol=1e-5, rtol=1e-5)


def test_new_activations_work_in_the_mixture_of_experts_too():
    model = EncoderForMaskedLM(tiny(activation="liglu", moe_experts=2, moe_capacity_factor=4.0))
    assert model.encoder.blocks[0].ffn.act.gated
    ids = torch.randint(5, 50, (2, 8))
    assert torch.isfinite(model(ids, labels=ids).loss)



# ---- position_embedding: sinusoidal | scaled_sinusoidal ----
def vaswani(positions: range, width: int) -> torch.Tensor:
    """PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(p / 10000^(2i/d)), one number at a time."""
    table = torch.empty(len(positions), width, dtype=torch.float64)
    for row, p in enumerate(positions):
        for i in range(0, width, 2):
            table[row, i] = math.sin(p / 10000 ** (i / width))
            table[row, i + 1] = math.cos(p / 10000 ** (i / width))
    return table.float()


def test_sinusoidal_positions_are_vaswanis_fixed_table_at_any_offset_and_length():
    model = EncoderForMaskedLM(tiny(position_embedding="sinusoidal", type_vocab_size=0, embedding_norm=False))
    positions = model.encoder.position_embedding
    assert list(positions.parameters()) == [] and list(positions.state_dict()) == []  # nothing to learn or save
    torch.testing.assert_close(positions(10), vaswani(range(10), 32), atol=1e-5, rtol=0)
    torch.testing.assert_close(positions(4, start=7), vaswani(range(7, 11), 32), atol=1e-5, rtol=0)
    assert positions(100).shape == (100, 32)  # no table to run past
    ids = torch.randint(5, 50, (1, 6))
    torch.testing.assert_close(model.encoder.embed(ids), model.encoder.token_embedding(ids) + positions(6))


def test_scaled_sinusoidal_positions_are_the_sinusoids_times_one_learned_scalar():
    from lit_lm.modules.optim import decay_param_groups

    model = DecoderForCausalLM(tiny(position_embedding="scaled_sinusoidal", **decoder_tests.GPT2))
    positions = model.decoder.position_embedding
    assert [name for name, _ in positions.named_parameters()] == ["scale"]
    torch.testing.assert_close(positions.scale, torch.tensor(1 / math.sqrt(32)))  # cramming's start
    with torch.no_grad():
        positions.scale.fill_(3.0)
    torch.testing.assert_close(positions(5, start=2), 3.0 * vaswani(range(2, 7), 32), atol=1e-5, rtol=0)
    assert not {id(positions.scale)} & {id(p) for p in decay_param_groups(model, 0.01)[0]["params"]}


def test_sinusoidal_positions_change_the_output_and_follow_the_models_dtype():
    learned = EncoderForMaskedLM(tiny(position_embedding="none", initializer_range=0.3)).eval()
    sinusoidal = EncoderForMaskedLM(tiny(position_embedding="sinusoidal", initializer_range=0.3)).eval()
    sinusoidal.load_state_dict(learned.state_dict())  # the same weights: only the positions differ
    ids = torch.randint(5, 50, (1, 8))
    assert not torch.allclose(sinusoidal(ids).logits, learned(ids).logits, atol=1e-3)
    assert sinusoidal.to(torch.bfloat16).encoder.position_embedding(4).dtype == torch.bfloat16


@pytest.mark.parametrize("bad", [dict(hidden_size=27, num_heads=3), dict(position_offset=2)])
def test_sinusoidal_positions_refuse_an_odd_width_or_an_offset(bad):
    with pytest.raises(ValueError, match="position_embedding scaled_sinusoidal needs an even hidden_size"):
        tiny(position_embedding="scaled_sinusoidal", **bad)



# ---- relative_positions: alibi ----
def test_alibi_slopes_are_the_papers_geometric_sequences():
    from lit_lm.models.layers.positions.alibi import alibi_slopes

    assert alibi_slopes(8) == [2.0 ** -i for i in range(1, 9)]
    assert alibi_slopes(4) == [2.0 ** -i for i in (2, 4, 6, 8)]
    assert alibi_slopes(6) == [2.0 ** -i for i in (2, 4, 6, 8, 1, 3)]  # 4 heads' slopes, then odd ones of 8 heads'
    assert alibi_slopes(1) == [2.0 ** -8]


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
def test_alibi_adds_minus_slope_times_distance_to_each_heads_scores_and_has_no_parameters(causal):
    config = tiny(relative_positions="alibi", position_embedding="none")
    model = (DecoderForCausalLM if causal else EncoderForMaskedLM)(config)
    scheme = model.body.relative_positions
    assert list(scheme.state_dict()) == [] and list(scheme.parameters()) == []
    slopes = torch.tensor([2.0 ** -i for i in (2, 4, 6, 8)])
    i, j = torch.arange(2, 5)[:, None], torch.arange(5)[None, :]  # queries 2..4 after 2 cached positions
    torch.testing.assert_close(scheme(3, start=2), (-slopes[:, None, None] * (i - j).abs())[None])
    attention = SelfAttention(config, causal=causal).eval()
    with torch.no_grad():
        attention.qkv.weight.zero_()  # every content score 0: the weights are the softmax of the bias alone
    _, weights = attention(torch.randn(1, 5, 32), AttentionInputs(relative=scheme(5), need_weights=True))
    bias = -slopes[:, None, None] * (torch.arange(5)[:, None] - torch.arange(5)[None, :]).abs()
    if causal:  # the paper's -slope * (i - j) over the keys at or before the query
        bias = bias.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(weights[0], bias.softmax(-1))


def test_alibi_makes_an_encoder_see_order_without_absolute_positions():
    plain = EncoderForMaskedLM(tiny(position_embedding="none", initializer_range=0.5)).eval()
    alibi = EncoderForMaskedLM(tiny(position_embedding="none", relative_positions="alibi", initializer_range=0.5))
    alibi.load_state_dict(plain.state_dict())
    alibi.eval()
    ids = torch.randint(5, 50, (1, 10))
    order = torch.randperm(10)
    assert not torch.allclose(alibi(ids[:, order]).logits, alibi(ids).logits[:, order], atol=1e-3)
    flipped = ids.flip(1)  # symmetric in distance: reversing the sequence reverses the outputs
    reference = alibi(ids).logits
    torch.testing.assert_close(alibi(flipped).logits, reference.flip(1), **model_tolerance(alibi, reference))


# ---- through the CLI: the quickstart recipe trains with each switch on, exports and reloads ----
CLI_SWITCHES = {"attention-probs-relu": dict(attention_probs="relu"), "scalenorm": dict(norm="scalenorm"),
                "activation-glu": dict(activation="glu"), "activation-selu": dict(activation="selu"),
                "scaled-sinusoidal": dict(position_embedding="scaled_sinusoidal"),
                "alibi": dict(relative_positions="alibi", position_embedding="none")}


@pytest.mark.parametrize("switches", CLI_SWITCHES.values(), ids=CLI_SWITCHES.keys())
@pytest.mark.slow
def test_quickstart_trains_with_the_switch_on_exports_and_reloads_with_equal_logits(switches, corpus, tmp_path,
                                                                                     monkeypatch):
    transformers = pytest.importorskip("transformers")
    from lit_lm.cli import main
    from lit_lm.hf.__main__ import main as hf_main
    from tests.conftest import ROOT
    from tests.test_recipes import TINY

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    overrides = [arg for name, value in switches.items() for arg in (f"--model.init_args.config.{name}", str(value))]
    cli = main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY, *overrides,
                "--data.init_args.paths", f"[{corpus}]", "--trainer.max_steps", "2",
                "--trainer.limit_val_batches", "0"])
    trained = cli.model.model.eval()
    for name, value in switches.items():
        assert getattr(trained.config, name) == value
    checkpoint = tmp_path / "runs" / "quickstart" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    hf_main(["export", str(checkpoint), str(tmp_path / "export"), "--tokenizer", str(cli.datamodule.store_dir)])
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "export", trust_remote_code=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "export", trust_remote_code=True)
    ids = tokenizer("the careful teacher watches the masked river.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - trained(ids).logits).abs().max() <= 1e-5
