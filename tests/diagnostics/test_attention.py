"""lit_lm.diagnostics.attention: column scores and head statistics on synthetic maps, and probes of real models."""

import pytest
import torch

from lit_lm.diagnostics import column_scores, figure_png, head_statistics, plot_attention, probe_attention
from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM, TransformerConfig

TEXT = "the small cat sees the dark dog. the quick bird reads the river."


def config(vocab_size: int, **overrides) -> TransformerConfig:
    base = dict(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                max_position_embeddings=64, dropout=0.1, attention_dropout=0.1)
    return TransformerConfig(**{**base, **overrides})


def one_key(n: int, key: int) -> torch.Tensor:
    """Every query puts all its attention on ``key``: [n, n]."""
    m = torch.zeros(n, n)
    m[:, key] = 1
    return m


def test_column_score_is_one_when_every_query_attends_one_key():
    maps = torch.stack([one_key(8, 3), one_key(8, 0)])[None]  # 1 layer, 2 heads
    scores = column_scores(maps)
    assert scores.per_layer.tolist() == [1.0]
    assert scores.per_head.tolist() == [[1.0, 1.0]]
    assert scores.key.tolist() == [[3, 0]]


@pytest.mark.parametrize("kind", ["uniform", "diagonal"])
def test_column_score_is_zero_for_uniform_and_diagonal_maps(kind):
    n = 8
    head = torch.full((n, n), 1 / n) if kind == "uniform" else torch.eye(n)
    scores = column_scores(head.expand(3, 2, n, n))
    assert scores.per_layer.tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(scores.per_head, torch.full((3, 2), 1 / n))


def test_column_score_is_the_share_of_column_heads_per_layer_at_the_threshold():
    n = 10
    half = 0.5 * one_key(n, 2) + 0.5 * torch.eye(n)  # mean share on key 2: 0.5 + 0.05
    layer0 = torch.stack([one_key(n, 1), torch.eye(n), torch.eye(n), torch.eye(n)])
    layer1 = torch.stack([half, half, torch.eye(n), one_key(n, 4)])
    scores = column_scores(torch.stack([layer0, layer1]))
    assert scores.per_layer.tolist() == [0.25, 0.75]
    assert column_scores(torch.stack([layer0, layer1]), threshold=0.6).per_layer.tolist() == [0.25, 0.25]
    # unnormalised weights (ReLU attention) are read as shares of each query's total
    torch.testing.assert_close(column_scores(3 * torch.stack([layer0, layer1])).per_head, scores.per_head)
    with pytest.raises(ValueError, match="threshold"):
        column_scores(torch.stack([layer0, layer1]), threshold=0)


def test_head_statistics_of_synthetic_heads():
    tokens = ["[CLS]", "a", "b", "c", "[SEP]"]
    n = len(tokens)
    previous = torch.zeros(n, n)
    previous[0, 0] = 1
    previous[torch.arange(1, n), torch.arange(n - 1)] = 1
    maps = torch.stack([torch.eye(n), previous, one_key(n, 0), torch.full((n, n), 1 / n)])[None]
    stats = head_statistics(maps, tokens)
    assert stats["self"][0].tolist() == pytest.approx([1, 0.2, 0.2, 0.2])
    assert stats["previous"][0].tolist() == pytest.approx([0, 1, 0.25, 0.2])
    assert stats["next"][0].tolist() == pytest.approx([0, 0, 0, 0.2])
    assert stats["special"][0].tolist() == pytest.approx([0.4, 0.4, 1, 0.4])
    assert stats["entropy"][0].tolist() == pytest.approx([0, 0, 0, torch.log(torch.tensor(5.0)).item()], abs=1e-5)


def test_probe_of_an_encoder_restores_mode_and_random_state(bert_tokenizer):
    model = EncoderForMaskedLM(config(bert_tokenizer.get_vocab_size())).train()
    rng = torch.get_rng_state()
    tokens, maps, layers, skipped = probe_attention(model, bert_tokenizer, TEXT)
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert tokens == bert_tokenizer.encode(TEXT).tokens and tokens[0] == "[CLS]"
    n = len(tokens)
    assert maps.shape == (2, 4, n, n) and maps.dtype == torch.float32
    assert layers == [0, 1] and skipped == []
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4, n))
    assert not (maps.triu(1) == 0).all()  # an encoder looks both ways
    # the same probe twice is the same (eval mode: no dropout), and the model stays in eval mode when it was
    model.eval()
    torch.testing.assert_close(probe_attention(model, bert_tokenizer, TEXT).maps, maps)
    assert not model.training


def test_probe_of_a_decoder_is_causal_and_takes_a_leading_space(gpt_tokenizer):
    model = DecoderForCausalLM(config(gpt_tokenizer.get_vocab_size(), position_embedding="learned"))
    tokens, maps, layers, _ = probe_attention(model, gpt_tokenizer, TEXT)
    assert maps.shape[:2] == (2, 4) and layers == [0, 1]
    assert (maps.triu(1) == 0).all()  # no query looks ahead
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:3]))
    spaced = probe_attention(model, gpt_tokenizer, TEXT, leading_space=True).tokens
    assert spaced == gpt_tokenizer.encode(" " + TEXT).tokens and spaced != tokens


def test_probe_is_cut_to_the_position_table(bert_tokenizer):
    model = EncoderForMaskedLM(config(bert_tokenizer.get_vocab_size(), max_position_embeddings=8))
    tokens, maps, _, _ = probe_attention(model, bert_tokenizer, TEXT)
    assert len(tokens) == 8 and maps.shape[-1] == 8


def test_token_mixers_without_weights_are_skipped_with_weights_kept(bert_tokenizer):
    vocab = bert_tokenizer.get_vocab_size()
    fourier = probe_attention(EncoderForMaskedLM(config(vocab, token_mixer="fourier")), bert_tokenizer, TEXT)
    assert fourier.layers == [] and fourier.skipped == [0, 1] and fourier.maps.shape[:2] == (0, 0)
    assert column_scores(fourier.maps).per_layer.numel() == 0
    with pytest.raises(ValueError, match="no attention maps"):
        plot_attention(fourier.maps, fourier.tokens)
    synthesizer = probe_attention(EncoderForMaskedLM(config(vocab, token_mixer="synthesizer_random")),
                                  bert_tokenizer, TEXT)
    assert synthesizer.layers == [0, 1] and synthesizer.maps.shape[:2] == (2, 4)


def test_plot_has_a_panel_per_head_and_renders_png():
    maps = torch.softmax(torch.randn(3, 2, 6, 6), -1)
    fig = plot_attention(maps, list("abcdef"), layers=[0, 2, 5], title="t")
    assert len(fig.axes) == 6 and fig.axes[-1].get_title() == "layer 5 head 1"
    assert figure_png(fig).startswith(b"\x89PNG")


def test_probe_takes_the_lightning_module(bert_tokenizer):
    from lit_lm.modules import MaskedLMModule

    module = MaskedLMModule(config=config(bert_tokenizer.get_vocab_size()), seq_length=32)
    assert probe_attention(module, bert_tokenizer, TEXT).maps.shape[:2] == (2, 4)
