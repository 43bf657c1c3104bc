"""The training-loop parts of MaskedLMModule: fused AdamW, torch.compile's fallback, FLOPs for MFU."""

import pytest
import torch

from lit_lm.models import TransformerConfig
from lit_lm.modules import MaskedLMModule, OptimizerConfig


def module(sparse=True, **kw) -> MaskedLMModule:
    config = TransformerConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                               max_position_embeddings=32, dropout=0.0, attention_dropout=0.0,
                               norm_placement="pre", final_norm=True, sparse_prediction=sparse)
    return MaskedLMModule(config, special_token_ids=[0, 1, 2, 3, 4], mask_token_id=4, seq_length=32, **kw)


def batch(rows=4) -> dict:
    ids = torch.randint(5, 300, (rows, 32), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_fused_adamw_where_available_and_the_same_update_as_the_default():
    torch.manual_seed(0)
    lm = module()
    fused = lm.configure_optimizers()
    assert fused.defaults["fused"]  # torch has a fused CPU kernel
    lm_plain = module(optimizer=OptimizerConfig(fused=False))
    lm_plain.load_state_dict(lm.state_dict())
    plain = lm_plain.configure_optimizers()
    assert not plain.defaults["fused"]
    for model, opt in ((lm, fused), (lm_plain, plain)):
        inputs, labels = model._mask(batch()["input_ids"], torch.Generator().manual_seed(1))
        model(inputs, labels=labels).loss.backward()
        opt.step()
    for a, b in zip(lm.parameters(), lm_plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("InductorError: no working C++ compiler\nmore detail")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    lm = module(compile=True)
    inputs, labels = lm._mask(batch()["input_ids"], torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: InductorError: no working C\+\+ "
                                         r"compiler\); continuing without it"):
        loss = lm(inputs, labels=labels).loss
    assert lm._compiled_forward is None and torch.isfinite(loss)
    torch.testing.assert_close(loss, lm.model(inputs, labels=labels).loss)
    assert not any("compiled" in name for name in lm.state_dict())  # checkpoints hold the plain model only


@pytest.mark.parametrize("sparse", [False, True])
def test_training_flops_match_the_model_arithmetic_and_leave_no_trace(sparse):
    lm = module(sparse=sparse)
    b = batch(rows=4)
    for p in lm.parameters():
        p.grad = torch.full_like(p, 7.0)
    state = torch.get_rng_state()
    flops = lm.training_flops(b)
    assert torch.equal(torch.get_rng_state(), state)  # the training masks are not shifted
    assert all(torch.all(p.grad == 7.0) for p in lm.parameters())  # nor the accumulated gradients
    h, f, v, layers, seq, rows = 32, 64, 300, 2, 32, 4
    # forward + backward = 3 x (2 FLOPs per multiply-add) over the projections, FFN, attention scores and values
    body = 3 * rows * seq * 2 * layers * (4 * h * h + 2 * h * f + 2 * seq * h)
    head_per_token = 3 * rows * 2 * (h * h + h * v)  # head transform and vocabulary projection
    if not sparse:
        assert flops == body + seq * head_per_token
    else:  # the head runs on the masked tokens only: a whole number of them, about 15% of the sequence
        predicted = (flops - body) / head_per_token
        assert predicted == int(predicted) and 1 <= predicted <= 0.4 * seq
