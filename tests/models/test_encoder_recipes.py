"""The configs/encoder recipes are the published architectures: parameter counts, the transformers class, and the
tokenizer each one trains."""

import random

import pytest
import torch
import yaml

from lit_lm.data.tokenizer import SpecialTokens, TokenizerConfig, train_tokenizer
from lit_lm.hf.families import family_for
from lit_lm.models import EncoderForMaskedLM, TransformerConfig
from tests.conftest import ROOT, sentence

# recipe -> (published parameter count, transformers class family, the tokenizer's pad id it assumes)
PUBLISHED = {
    "bert-base": (110e6, "bert", 0),  # bert-base-uncased: 110M
    "roberta-base": (125e6, "roberta", 1),  # roberta-base: 125M
    "deberta-v3-base": (184e6, "deberta-v2", 0),  # deberta-v3-base: 86M backbone + 98M embeddings
}


@pytest.mark.parametrize("recipe", PUBLISHED)
def test_encoder_recipes_have_the_published_shape(recipe):
    settings = yaml.safe_load((ROOT / "configs" / "encoder" / f"{recipe}.yaml").read_text())
    vocab = settings["data"]["init_args"]["tokenizer"]["vocab_size"]
    count, family, pad = PUBLISHED[recipe]
    config = TransformerConfig(**settings["model"]["init_args"]["config"], vocab_size=vocab, pad_token_id=pad)
    with torch.device("meta"):  # shapes only: no memory, no time
        model = EncoderForMaskedLM(config)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - count) / count < 0.01, f"{recipe}: {n / 1e6:.1f}M parameters"
    assert family_for(config).name == family  # exports as the published transformers class


@pytest.mark.parametrize("recipe", PUBLISHED)
def test_encoder_recipes_train_the_tokenizer_their_model_assumes(recipe):
    """The recipe's tokenizer settings give the pad id the model's positions assume, and a mask token."""

    settings = yaml.safe_load((ROOT / "configs" / "encoder" / f"{recipe}.yaml").read_text())
    tokenizer_settings = {**settings["data"]["init_args"]["tokenizer"], "vocab_size": 300}  # small, same kind
    rng = random.Random(0)
    tokenizer = train_tokenizer([" ".join(sentence(rng) for _ in range(4)) for _ in range(200)],
                                TokenizerConfig(**tokenizer_settings))
    special = SpecialTokens.from_tokenizer(tokenizer)
    count, family, pad = PUBLISHED[recipe]
    assert special.pad == pad
    assert special.mask is not None and special.row_start is not None
    config = TransformerConfig(**settings["model"]["init_args"]["config"], vocab_size=300, pad_token_id=special.pad)
    assert family_for(config).name == family
