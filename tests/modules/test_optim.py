import pytest

from lit_lm.models import EncoderForMaskedLM, TransformerConfig
from lit_lm.modules.optim import OptimizerConfig, decay_param_groups


@pytest.mark.parametrize("tie", [True, False])
def test_no_decay_on_biases_norms_and_embeddings(tie):
    model = EncoderForMaskedLM(TransformerConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2,
                                                 intermediate_size=32, max_position_embeddings=16,
                                                 tie_embeddings=tie, norm="rmsnorm"))
    decay, other = decay_param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and other["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in other["params"]}
    assert all(("qkv.weight" in n or "out.weight" in n or "up.weight" in n or "down.weight" in n
                or "head.dense.weight" in n or "decoder.weight" in n) for n in decayed)
    assert not any("embedding" in n or "norm" in n or n.endswith("bias") for n in decayed)
    assert "encoder.position_embedding.weight" in not_decayed
    assert "encoder.token_embedding.weight" in not_decayed
    assert ("head.decoder.weight" in decayed) == (not tie)  # a tied output matrix is the embedding
    # every parameter exactly once
    assert len(decay["params"]) + len(other["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("bad", [dict(lr=0.0), dict(betas=(0.9, 1.0)), dict(weight_decay=-1.0)])
def test_optimizer_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="model.optimizer"):
        OptimizerConfig(**bad)
