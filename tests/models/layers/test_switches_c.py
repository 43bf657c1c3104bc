"""Issue 14, part C: token mixers (synthesizers, FNet's Fourier mixing) and longer sequences with relative positions.

Each mixer replaces the self-attention sublayer and nothing else, keeps padding out of real positions, is refused in a
decoder with the reason, exports as custom code with equal logits and trains through the CLI. A model without
absolute positions takes sequences longer than max_position_embeddings: trained at 128 tokens, it runs at 512.
"""

import sys

import pytest
import torch

from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM, TransformerConfig
from lit_lm.models.layers import AttentionInputs, SelfAttention
from lit_lm.models.layers.token_mixers import DenseSynthesizer, FourierMixer, RandomSynthesizer
from lit_lm.models.transformer import max_input_length
from tests.models import test_switches as encoder_tests
from tests.models.helpers import padded, tiny
from tests.models.layers import test_switches_a as part_a
from tests.models.test_decoder import GPT2
from tests.float_error import model_tolerance

MIXERS = {
    "synthesizer-dense": dict(token_mixer="synthesizer_dense"),
    "synthesizer-random": dict(token_mixer="synthesizer_random"),
    "fourier": dict(token_mixer="fourier"),
    "fourier-pre-ln-no-positions": dict(token_mixer="fourier", norm_placement="pre", final_norm=True,
                                        position_embedding="none"),
    "synthesizer-dense-pre-ln-ffn-every-2": dict(token_mixer="synthesizer_dense", norm_placement="pre",
                                                 final_norm=True, ffn_every=2),
}
MIXER_CLASSES = {"synthesizer_dense": DenseSynthesizer, "synthesizer_random": RandomSynthesizer,
                 "fourier": FourierMixer}


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def encoder(**switches) -> EncoderForMaskedLM:
    return EncoderForMaskedLM(tiny(initializer_range=0.3, **switches)).eval()


# ---- token_mixer: defaults, what changes, padding, training ----
def test_the_default_token_mixer_is_todays_attention_bitwise():
    assert TransformerConfig().token_mixer == "attention"
    ids = torch.randint(5, 50, (2, 12))
    for model_class, extra in ((EncoderForMaskedLM, {}), (DecoderForCausalLM, GPT2)):
        torch.manual_seed(0)
        plain = model_class(tiny(**extra)).eval()
        torch.manual_seed(0)
        explicit = model_class(tiny(**extra, token_mixer="attention")).eval()
        assert all(type(block.attn) is SelfAttention for block in explicit.body.blocks)
        assert list(plain.state_dict()) == list(explicit.state_dict())
        assert all(torch.equal(v, explicit.state_dict()[k]) for k, v in plain.state_dict().items())
        assert torch.equal(plain(ids).logits, explicit(ids).logits)


@pytest.mark.parametrize("name", MIXER_CLASSES)
def test_a_mixer_replaces_the_attention_sublayer_only(name):
    plain, mixed = encoder(), encoder(token_mixer=name)
    assert all(type(block.attn) is MIXER_CLASSES[name] for block in mixed.encoder.blocks)
    outside = [k for k in plain.state_dict() if ".attn." not in k]
    assert [k for k in mixed.state_dict() if ".attn." not in k] == outside  # norms, FFN, embeddings, head unchanged
    mixed.load_state_dict({k: plain.state_dict()[k] for k in outside}, strict=False)
    ids = torch.randint(5, 50, (1, 10))
    assert not torch.allclose(mixed(ids).logits, plain(ids).logits, atol=1e-3)
    block = mixed.encoder.blocks[0]
    x = torch.randn(2, 10, 32)
    h, _ = block.attn(x)  # post-LN, as BERT: the mixer's output takes attention's place in the residual sum
    after_mixer = block.attn_norm(x + h)
    torch.testing.assert_close(block(x).hidden, block.ffn_norm(after_mixer + block.ffn(after_mixer)))


@pytest.mark.parametrize("switches", MIXERS.values(), ids=MIXERS.keys())
def test_encoder_padding_never_changes_real_positions(switches):
    encoder_tests.test_padding_never_changes_real_positions(switches)


@pytest.mark.parametrize("switches", MIXERS.values(), ids=MIXERS.keys())
def test_encoder_trains_every_parameter(switches):
    encoder_tests.test_every_switch_trains_every_parameter(switches)


# ---- synthesizers ----
def allowed_keys() -> torch.Tensor:
    allowed = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    allowed[1, ..., 4:] = False
    return allowed


def test_the_dense_synthesizer_weighs_keys_by_an_mlp_of_the_query_token_alone():
    mixer = DenseSynthesizer(tiny(token_mixer="synthesizer_dense")).eval()
    assert mixer.to_logits.weight.shape == (4 * 24, 32)  # hidden -> heads * max_position_embeddings
    x = torch.randn(2, 6, 32)
    allowed = allowed_keys()
    y, weights = mixer(x, AttentionInputs(key_mask=allowed, need_weights=True))
    rows = mixer.to_logits(torch.relu(mixer.hidden(x))).view(2, 6, 4, 24)[..., :6].transpose(1, 2)
    expected = rows.masked_fill(~allowed, float("-inf")).softmax(-1)
    torch.testing.assert_close(weights, expected)
    assert torch.all(weights[1, ..., 4:] == 0)  # masked keys: exactly 0 weight
    v = mixer.value(x).view(2, 6, 4, 8).transpose(1, 2)
    torch.testing.assert_close(y, mixer.out((expected @ v).transpose(1, 2).reshape(2, 6, 32)))
    changed = x.clone()
    changed[:, 3] += 1.0  # a token's row of weights is its own business: the others keep theirs
    _, after = mixer(changed, AttentionInputs(key_mask=allowed, need_weights=True))
    torch.testing.assert_close(after[:, :, [0, 1, 2, 4, 5]], weights[:, :, [0, 1, 2, 4, 5]])
    assert not torch.allclose(after[:, :, 3], weights[:, :, 3])


def test_the_random_synthesizer_weighs_keys_by_one_learned_matrix_whatever_the_input():
    mixer = RandomSynthesizer(tiny(token_mixer="synthesizer_random", initializer_range=0.5)).eval()
    model = EncoderForMaskedLM(tiny(token_mixer="synthesizer_random", initializer_range=0.5))
    assert model.encoder.blocks[0].attn.matrix.std().item() == pytest.approx(0.5, rel=0.1)  # init_weights ran
    assert mixer.matrix.shape == (4, 24, 24)
    allowed = allowed_keys()
    _, weights = mixer(torch.randn(2, 6, 32), AttentionInputs(key_mask=allowed, need_weights=True))
    _, again = mixer(torch.randn(2, 6, 32), AttentionInputs(key_mask=allowed, need_weights=True))
    torch.testing.assert_close(weights, again)
    expected = mixer.matrix[:, :6, :6].expand(2, -1, -1, -1).masked_fill(~allowed, float("-inf")).softmax(-1)
    torch.testing.assert_close(weights, expected)
    assert torch.all(weights[1, ..., 4:] == 0)


@pytest.mark.parametrize("name", ["synthesizer_dense", "synthesizer_random"])
def test_a_synthesizer_refuses_sequences_longer_than_its_weights(name):
    model = encoder(token_mixer=name, position_embedding="none")
    assert model(torch.randint(5, 50, (1, 24))).logits.shape == (1, 24, 50)
    with pytest.raises(ValueError, match=r"longer than a synthesizer's fixed mixing weights span \(model"
                                         r".max_position_embeddings = 24\)"):
        model(torch.randint(5, 50, (1, 25)))
    assert max_input_length(model.config) == 24


@pytest.mark.parametrize("name, reason", [("synthesizer_dense", "KV cache"), ("synthesizer_random", "KV cache"),
                                          ("fourier", "not causal")])
def test_a_decoder_refuses_the_encoder_only_mixers_and_says_why(name, reason):
    with pytest.raises(ValueError, match=rf"a decoder cannot use token_mixer: {name} \(.*{reason}"):
        DecoderForCausalLM(tiny(**GPT2, token_mixer=name))


@pytest.mark.parametrize("switch", [dict(relative_positions="rotary"), dict(attention_probs="relu"),
                                    dict(talking_heads=True), dict(qkv_conv_kernel_size=3)])
def test_a_mixer_without_attention_scores_refuses_the_attention_switches(switch):
    with pytest.raises(ValueError, match=rf"token_mixer fourier has no attention scores for {next(iter(switch))}"):
        tiny(token_mixer="fourier", position_embedding="none", **switch)


def test_an_unknown_token_mixer_is_refused_with_the_known_ones_listed():
    with pytest.raises(ValueError, match=r"unknown token_mixer 'lstm'; choose one of \['attention', 'fourier', "):
        tiny(token_mixer="lstm")


# ---- fourier ----
def test_fourier_mixing_is_the_real_part_of_a_2d_dft_and_has_no_parameters():
    model = encoder(token_mixer="fourier")
    assert not [k for k in model.state_dict() if ".attn." in k]
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    n, d = torch.arange(6.0, dtype=torch.float64), torch.arange(32.0, dtype=torch.float64)
    seq_angle = 2 * torch.pi * torch.outer(n, n) / 6
    hid_angle = 2 * torch.pi * torch.outer(d, d) / 32
    # Re(F_seq X F_hid) = C_seq X C_hid - S_seq X S_hid
    expected = seq_angle.cos() @ x @ hid_angle.cos() - seq_angle.sin() @ x @ hid_angle.sin()
    y, weights = FourierMixer(model.config)(x.float())
    assert weights is None
    torch.testing.assert_close(y, expected.float(), atol=1e-4, rtol=1e-4)
    assert FourierMixer(model.config)(x.bfloat16())[0].dtype == torch.bfloat16


def test_fourier_mixing_transforms_each_row_over_its_real_positions_only():
    mixer = FourierMixer(tiny())
    x = torch.randn(3, 8, 32)
    real = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [0] * 2 + [1] * 6]).bool()  # none, right and left padding
    y, _ = mixer(x, AttentionInputs(token_mask=real[..., None].float()))
    for row in range(3):
        torch.testing.assert_close(y[row, real[row]], mixer(x[row : row + 1, real[row]])[0][0])
        assert torch.all(y[row, ~real[row]] == 0)


def test_fourier_left_padding_never_changes_real_positions():
    model = encoder(token_mixer="fourier", position_embedding="none")
    real, _, garbage, _ = padded()
    left = torch.cat([garbage[:, 10:], real], dim=1)
    mask = torch.tensor([[0] * 4 + [1] * 10])
    torch.testing.assert_close(model(left, attention_mask=mask).logits[:, 4:], model(real).logits)


# ---- HuggingFace custom code, and the quickstart through the CLI ----
@pytest.mark.parametrize("switches", MIXERS.values(), ids=MIXERS.keys())
def test_to_hf_exports_custom_code_with_equal_logits(switches, tmp_path):
    model = EncoderForMaskedLM(tiny(initializer_range=0.2, **switches))
    part_a.assert_custom_code_round_trip(model, tmp_path / "export", causal=False)


CLI_MIXERS = {name: MIXERS[name] for name in ("synthesizer-dense", "synthesizer-random", "fourier")}


@pytest.mark.parametrize("switches", CLI_MIXERS.values(), ids=CLI_MIXERS.keys())
@pytest.mark.slow
def test_quickstart_trains_with_the_mixer_exports_and_reloads_with_equal_logits(switches, corpus, tmp_path,
                                                                                 monkeypatch):
    part_a.test_quickstart_trains_with_the_switch_on_exports_and_reloads_with_equal_logits(
        switches, corpus, tmp_path, monkeypatch)


# ---- longer sequences with relative positions ----
RELATIVE_ONLY = {
    "t5": dict(relative_positions="t5", position_buckets=8),
    "disentangled-log-buckets": dict(relative_positions="disentangled", position_buckets=8),
    "disentangled-clipped": dict(relative_positions="disentangled"),
    "rotary": dict(relative_positions="rotary"),
    "alibi": dict(relative_positions="alibi"),
    "no-positions": dict(relative_positions="none"),
    "fourier-no-positions": dict(token_mixer="fourier"),
}
CAUSAL = ("t5", "rotary", "alibi", "no-positions")


@pytest.mark.parametrize(("config", "limit"), [
    (dict(), 24), (dict(position_offset=2), 22), (dict(position_embedding="sinusoidal"), None),
    (dict(position_embedding="none", relative_positions="t5", position_buckets=8), None),
    (dict(position_embedding="none", head_position_embedding=True), 24),
    (dict(position_embedding="none", token_mixer="synthesizer_random"), 24),
], ids=["learned", "learned-offset", "sinusoidal", "t5", "positions-before-the-head", "synthesizer"])
def test_only_tables_limit_the_input_length(config, limit):
    assert max_input_length(tiny(**config)) == limit


@pytest.mark.parametrize("switches", RELATIVE_ONLY.values(), ids=RELATIVE_ONLY.keys())
def test_an_encoder_without_absolute_positions_runs_past_max_position_embeddings_padding_safe(switches):
    model = encoder(position_embedding="none", **switches)
    real, padded_ids, garbage, mask = padded(real_len=70, pad=6)  # 3 x max_position_embeddings (24)
    with torch.no_grad():
        alone = model(real).logits
        assert torch.isfinite(alone).all()
        for ids in (padded_ids, garbage):
            torch.testing.assert_close(model(ids, attention_mask=mask).logits[:, :70], alone, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="longer than the model takes"):  # learned positions still refuse
        encoder()(real)


@pytest.mark.parametrize("switches", [RELATIVE_ONLY[name] for name in CAUSAL], ids=CAUSAL)
def test_a_decoder_without_absolute_positions_runs_and_decodes_past_max_position_embeddings(switches):
    model = DecoderForCausalLM(tiny(**{**GPT2, "initializer_range": 0.3, "position_embedding": "none",
                                       **switches})).eval()
    ids = torch.randint(0, 50, (2, 60))
    with torch.no_grad():
        full = model(ids).logits
        right = model(torch.cat([ids, ids[:, :5]], 1), torch.tensor([[1] * 60 + [0] * 5] * 2)).logits[:, :60]
        cache = model.new_cache()
        pieces = [model(ids[:, :50], cache=cache).logits]
        pieces += [model(ids[:, t : t + 1], cache=cache).logits for t in range(50, 60)]
    assert torch.isfinite(full).all()
    torch.testing.assert_close(right, full, **model_tolerance(model, full))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **model_tolerance(model, full))


def test_the_training_modules_take_any_seq_length_without_a_table_and_refuse_it_with_one():
    from lit_lm.modules import CausalLMModule, MaskedLMModule

    relative = tiny(vocab_size=60, position_embedding="none", relative_positions="t5", position_buckets=8)
    MaskedLMModule(relative, seq_length=64, special_token_ids=[0], mask_token_id=4)
    CausalLMModule(tiny(**GPT2, vocab_size=60, position_embedding="none", relative_positions="alibi"), seq_length=64)
    for config in (tiny(vocab_size=60), tiny(vocab_size=60, position_embedding="none", token_mixer="fourier",
                                             head_position_embedding=True)):
        with pytest.raises(ValueError, match=r"data.seq_length \(64\) exceeds the 24 tokens"):
            MaskedLMModule(config, seq_length=64, special_token_ids=[0], mask_token_id=4)
    with pytest.raises(ValueError, match=r"data.seq_length \(64\) exceeds the 24 tokens"):
        CausalLMModule(tiny(**GPT2, vocab_size=60), seq_length=64)


LONGER = {  # t5 and alibi run past the table in the model-level tests above
    "encoder-disentangled": ("quickstart.yaml", dict(relative_positions="disentangled", position_buckets=32)),
    "decoder-rotary": ("quickstart-decoder.yaml", dict(relative_positions="rotary")),
}


@pytest.mark.parametrize("recipe, switches", LONGER.values(), ids=LONGER.keys())
@pytest.mark.slow
def test_relative_positions_only_trained_at_128_tokens_runs_at_512(recipe, switches, corpus, tmp_path, monkeypatch):
    from lit_lm.cli import main
    from tests.conftest import ROOT
    from tests.test_recipes import TINY

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    switches = {"position_embedding": "none", **switches}
    overrides = [arg for name, value in switches.items() for arg in (f"--model.init_args.config.{name}", str(value))]
    cli = main(["fit", "--config", str(ROOT / "configs" / recipe), *TINY, *overrides,
                "--data.init_args.paths", f"[{corpus}]", "--data.init_args.seq_length", "128",
                "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"])
    model = cli.model.model.eval()
    assert cli.datamodule.seq_length == 128 and model.config.max_position_embeddings == 128
    vocab = model.config.vocab_size
    real = torch.randint(5, vocab, (1, 500))
    ids = torch.cat([real, torch.randint(5, vocab, (1, 12))], dim=1)  # 512 tokens, the last 12 padding
    mask = torch.tensor([[1] * 500 + [0] * 12])
    with torch.no_grad():
        alone = model(real).logits
        full = model(ids).logits
        padded_logits = model(ids, attention_mask=mask).logits
    assert full.shape[1] == 512 and torch.isfinite(full).all() and torch.isfinite(alone).all()
    torch.testing.assert_close(padded_logits[:, :500], alone, atol=1e-4, rtol=1e-4)
