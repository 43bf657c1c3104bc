"""The configs/decoder recipes are the published architectures: parameter counts and the transformers class."""

import pytest
import torch
import yaml

from lit_lm.hf import gpt2
from lit_lm.models import DecoderForCausalLM, TransformerConfig
from tests.conftest import ROOT

# recipe -> (published parameter count, whether transformers' GPT2LMHeadModel represents it)
PUBLISHED = {
    "gpt2-small": (124.4e6, True),  # gpt2: 124M (tied embeddings counted once)
    "primer": (124.4e6, False),  # GPT-2 small's shape; the convolution adds 3 x 3 x 768 x 12 weights and biases
}


@pytest.mark.parametrize("recipe", PUBLISHED)
def test_decoder_recipes_have_the_published_shape(recipe):
    settings = yaml.safe_load((ROOT / "configs" / "decoder" / f"{recipe}.yaml").read_text())
    vocab = settings["data"]["init_args"]["tokenizer"]["vocab_size"]
    count, exports_as_gpt2 = PUBLISHED[recipe]
    config = TransformerConfig(**settings["model"]["init_args"]["config"], vocab_size=vocab)
    with torch.device("meta"):  # shapes only: no memory, no time
        model = DecoderForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - count) / count < 0.01, f"{recipe}: {n / 1e6:.1f}M parameters"
    assert (not gpt2.unsupported(config)) == exports_as_gpt2
