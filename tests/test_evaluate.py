"""Sliding-window perplexity: every token scored once, the right alignment, known values."""

import math
import random

import pytest
import torch
from torch import nn

from lit_lm.data.tokenizer import TokenizerConfig, train_tokenizer
from lit_lm.evaluate import perplexity, read_text, sliding_window_nll, windows
from lit_lm.models import DecoderForCausalLM
from lit_lm.models.output import LMOutput
from tests.conftest import sentence, shared_data
from tests.models.helpers import tiny
from tests.models.test_decoder import GPT2


class Successor(nn.Module):
    """A 'model' certain that token t is followed by t + 1 (mod vocab)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        return LMOutput(logits=60.0 * nn.functional.one_hot((ids + 1) % self.vocab, self.vocab).float())


@pytest.mark.parametrize("n,context,stride", [(100, 16, 8), (100, 16, 15), (37, 10, 1), (5, 16, 8), (64, 16, 5)])
def test_windows_score_every_token_once_with_the_promised_context(n, context, stride):
    scored = []
    for start, end, first in windows(n, context, stride):
        assert end - start <= context and start < first <= end
        assert first == 1 or first - start >= context - stride  # the minimum context
        scored += range(first, end)
    assert scored == list(range(1, n))


def test_sliding_window_aligns_predictions_with_their_tokens():
    ids = torch.arange(200) % 50
    nll, count = sliding_window_nll(Successor(50), ids, context_length=16, stride=6, batch_size=3)
    assert count == 199 and nll < 1e-6  # any misalignment would cost about 60 nats a token
    shuffled = ids[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    assert sliding_window_nll(Successor(50), shuffled, 16, 6)[0] > 1000


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    texts = [" ".join(sentence(rng) for _ in range(5)) for _ in range(300)]
    return train_tokenizer(texts, TokenizerConfig(kind="byte_bpe", vocab_size=300))


def uniform_model(vocab: int) -> DecoderForCausalLM:
    model = DecoderForCausalLM(tiny(**{**GPT2, "vocab_size": vocab, "max_position_embeddings": 64}))
    with torch.no_grad():
        model.head.decoder.weight.zero_()  # tied to the embeddings: every logit is 0, every token has p = 1/vocab
    return model


def test_uniform_model_has_perplexity_equal_to_the_vocabulary_and_the_matching_bits_per_byte(tokenizer):
    vocab = tokenizer.get_vocab_size()
    text = "the careful teacher reads the hidden river. " * 20 + "é ü"
    result = perplexity(uniform_model(vocab), tokenizer, text, context_length=32, stride=12)
    assert result.tokens == len(tokenizer.encode(text).ids)
    assert result.token_perplexity == pytest.approx(vocab, rel=1e-5)
    assert result.bytes == len(text.encode()) and result.bytes > len(text)
    assert result.bits_per_byte == pytest.approx(result.tokens * math.log2(vocab) / result.bytes, rel=1e-5)


def test_a_trained_like_window_equals_the_full_forward_when_the_text_fits(tokenizer):
    torch.manual_seed(0)
    model = DecoderForCausalLM(tiny(**{**GPT2, "vocab_size": tokenizer.get_vocab_size(), "max_position_embeddings": 64,
                                       "initializer_range": 0.2})).eval()
    text = "the small cat sees the dark garden."
    result = perplexity(model, tokenizer, text, context_length=64, stride=32)
    ids = torch.tensor([[0, *tokenizer.encode(text).ids]])
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert result.nll / result.tokens == pytest.approx(loss, rel=1e-5)


def test_wikitext_2_test_split(tokenizer):
    path = shared_data("wikitext-2/test.txt")
    text = read_text(path, max_bytes=20_000)
    result = perplexity(uniform_model(tokenizer.get_vocab_size()), tokenizer, text, context_length=64, stride=32,
                        batch_size=16)
    assert result.tokens > 5000 and result.token_perplexity == pytest.approx(tokenizer.get_vocab_size(), rel=1e-4)
    # a uniform model spends log2(vocab) bits on every token: bits per byte is that over the bytes per token
    assert result.bits_per_byte == pytest.approx(result.tokens * math.log2(tokenizer.get_vocab_size()) / result.bytes,
                                                 rel=1e-4)


def test_bad_settings_are_clear_errors(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="stride must be"):
        windows(10, 8, 8)
    with pytest.raises(ValueError, match="empty"):
        perplexity(uniform_model(tokenizer.get_vocab_size()), tokenizer, "")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe text")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_text(tmp_path / "bad.txt")
    (tmp_path / "cut.txt").write_text("caf\u00e9 au lait")
    assert read_text(tmp_path / "cut.txt", max_bytes=4) == "caf"  # a cut inside a character drops it
