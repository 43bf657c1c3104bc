"""The configs/encoder recipes are the published architectures: parameter counts and the transformers class."""

import pytest
import torch
import yaml

from lit_lm.hf.families import family_for
from lit_lm.models import EncoderForMaskedLM, TransformerConfig
from tests.conftest import ROOT

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
