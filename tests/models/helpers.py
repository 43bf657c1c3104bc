"""Tiny configs and padded batches shared by the model tests."""

import torch

from lit_lm.models import TransformerConfig
from tests.float_error import model_tolerance


def tiny(**overrides) -> TransformerConfig:
    base = dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                max_position_embeddings=24, dropout=0.0, attention_dropout=0.0)
    return TransformerConfig(**{**base, **overrides})


def padded(real_len: int = 10, pad: int = 4, vocab: int = 50, seed: int = 0):
    """One sequence alone, the same padded (pad id 0), and padded with garbage under the mask."""
    g = torch.Generator().manual_seed(seed)
    real = torch.randint(5, vocab, (1, real_len), generator=g)
    padded_ids = torch.cat([real, torch.zeros(1, pad, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, real_len), torch.zeros(1, pad)], dim=1).long()
    garbage = padded_ids.clone()
    garbage[:, real_len:] = torch.randint(5, vocab, (1, pad), generator=g)
    return real, padded_ids, garbage, mask


def assert_padding_never_changes_real_positions(model) -> None:
    """An encoder's logits at real positions are the same alone, padded, and padded with garbage under the mask."""
    real, padded_ids, garbage, mask = padded()
    with torch.no_grad():
        alone = model(real).logits
        for ids in (padded_ids, garbage):
            torch.testing.assert_close(model(ids, attention_mask=mask).logits[:, :10], alone, atol=1e-4, rtol=1e-4)


def assert_causal_and_cache_equals_full_forward(model) -> None:
    """A decoder never looks ahead, and decoding in pieces with its KV cache gives the full forward's logits."""
    ids = torch.randint(0, 50, (2, 14))
    changed = ids.clone()
    changed[:, 9:] = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        full = model(ids).logits
        torch.testing.assert_close(model(changed).logits[:, :9], full[:, :9], **model_tolerance(model, full))
        cache = model.new_cache()
        pieces = [model(ids[:, :5], cache=cache).logits, model(ids[:, 5:8], cache=cache).logits]
        pieces += [model(ids[:, t : t + 1], cache=cache).logits for t in range(8, 14)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **model_tolerance(model, full))


def assert_every_parameter_trains(model) -> None:
    """One language-model step: a finite loss (with the mixture-of-experts term) and a gradient on every parameter."""
    ids = torch.randint(5, 50, (8, 12))
    out = model(ids, labels=ids)
    loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
    loss.backward()
    assert torch.isfinite(loss)
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def export_and_reload(model, folder, causal: bool):
    """``model`` exported as lit-lm's custom code and loaded back through transformers (trust_remote_code)."""
    import pytest

    transformers = pytest.importorskip("transformers")
    from lit_lm.hf import save_pretrained
    from lit_lm.hf.remote import CODE_FILE

    folder = save_pretrained(model, folder)
    assert (folder / CODE_FILE).exists()  # no built-in class expresses these switches: custom code
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModelForMaskedLM
    return auto.from_pretrained(folder, trust_remote_code=True).eval()


def quickstart_with(switches: dict[str, str], corpus, tmp_path, monkeypatch):
    """The quickstart recipe at tiny shapes with ``switches`` (config field -> command-line value) trained 2 steps
    through the CLI, exported as custom code and reloaded through transformers with equal logits; the trained model."""
    import sys

    import pytest

    transformers = pytest.importorskip("transformers")
    from lit_lm.cli import main
    from lit_lm.hf import export_checkpoint
    from tests.conftest import ROOT
    from tests.test_recipes import TINY

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    overrides = [arg for name, value in {"num_layers": "2", **switches}.items()
                 for arg in (f"--model.init_args.config.{name}", value)]
    cli = main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY, *overrides,
                "--data.init_args.paths", f"[{corpus}]", "--trainer.max_steps", "2"])
    trained = cli.model.model.eval()
    assert cli.trainer.global_step == 2
    folder = export_checkpoint(next((tmp_path / "runs" / "quickstart").rglob("last.ckpt")), tmp_path / "export")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = torch.randint(5, trained.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - trained(ids).logits).abs().max() <= 1e-5
    return trained
