import builtins
import math
import statistics
import sys

import pytest
import torch
import yaml

from lit_lm.models import EncoderForMaskedLM, TransformerConfig
from lit_lm.modules.muon_adamw import MuonAdamW
from lit_lm.modules.optim import FROM_PYTORCH_OPTIMIZER, TAKES, OptimizerConfig, decay_param_groups
from tests.models.helpers import tiny

# a learning rate at which each optimizer trains the tiny quickstart in 16 steps (found by trying; at the recipes'
# scale Lion's sign update wants ~10x less than Adam's, see configs/ablations/optimizers.yaml)
LR = {"adamw": 2e-3, "adafactor": 1e-1, "radam": 2e-2, "nadam": 2e-3, "muon": 2e-3, "lamb": 3e-2, "lion": 2e-3,
      "shampoo": 2e-3, "soap": 3e-3, "sophia": 2e-3}
STEPS = 16


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


def test_an_unknown_optimizer_is_one_clear_error():
    with pytest.raises(ValueError, match="model.optimizer.name must be one of adamw, adafactor"):
        OptimizerConfig(name="sgd")


@pytest.mark.parametrize("name, setting", [("lion", dict(eps=1e-8)), ("adafactor", dict(betas=(0.9, 0.95))),
                                           ("radam", dict(fused=True)), ("shampoo", dict(eps=1e-8))])
def test_a_setting_the_optimizer_does_not_take_is_refused_when_changed(name, setting):
    with pytest.raises(ValueError, match=f"model.optimizer.name={name} takes no {next(iter(setting))}"):
        OptimizerConfig(name=name, **setting)
    OptimizerConfig(name=name)  # left at its default, it is ignored


def test_a_missing_extra_is_one_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name.startswith("pytorch_optimizer"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "pytorch_optimizer", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(ImportError, match=r"model.optimizer.name=lion needs .*lit-lm\[optimizers\]"):
        OptimizerConfig(name="lion").build(EncoderForMaskedLM(tiny()))


def test_adamw_by_default_is_the_fused_adamw_of_before():
    model = EncoderForMaskedLM(tiny())
    optimizer = OptimizerConfig(lr=2e-3, weight_decay=0.05).build(model)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"]
    expected = torch.optim.AdamW(decay_param_groups(model, 0.05), lr=2e-3, betas=(0.9, 0.98), eps=1e-6, fused=True)
    assert optimizer.param_groups == expected.param_groups  # every setting of every group
    assert not OptimizerConfig().build(model, fused_allowed=False).defaults["fused"]


@pytest.mark.parametrize("name", TAKES)
def test_every_optimizer_keeps_the_decay_groups(name):
    pytest.importorskip("pytorch_optimizer")
    model = EncoderForMaskedLM(tiny(tie_embeddings=False))
    optimizer = OptimizerConfig(name=name, weight_decay=0.1).build(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_of = {names[id(p)]: group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert sorted(decay_of) == sorted(names.values())  # every parameter exactly once
    assert decay_of["encoder.blocks.0.attn.qkv.weight"] == decay_of["head.decoder.weight"] == 0.1
    assert all(decay_of[n] == 0.0 for n in decay_of if n.endswith("bias") or "norm" in n or "embedding" in n)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = EncoderForMaskedLM(tiny(tie_embeddings=False))
    optimizer = OptimizerConfig(name="muon").build(model)
    assert isinstance(optimizer, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for group in optimizer.muon.param_groups for p in group["params"]}
    assert muon == {n for n in names.values() if ".blocks." in n and n.endswith("weight") and "norm" not in n}
    assert optimizer.param_groups == optimizer.muon.param_groups + optimizer.adamw.param_groups
    # the schedule scales optimizer.param_groups' lr: both parts see it, also after a checkpoint reload
    optimizer.load_state_dict(optimizer.state_dict())
    for group in optimizer.param_groups:
        group["lr"] = 0.5
    assert {g["lr"] for part in (optimizer.muon, optimizer.adamw) for g in part.param_groups} == {0.5}


def test_muon_saves_and_loads_both_parts_state():
    model = EncoderForMaskedLM(tiny())
    optimizer = OptimizerConfig(name="muon").build(model)
    ids = torch.randint(5, 50, (4, 12))
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    saved = optimizer.state_dict()
    assert len(saved["state"]) == len(list(model.parameters()))  # Muon's momentum and AdamW's moments, all saved
    resumed = OptimizerConfig(name="muon").build(model)
    resumed.load_state_dict(saved)
    assert resumed.muon.param_groups[0] is resumed.param_groups[0] and resumed.adamw.state is resumed.state
    momentum = resumed.state[resumed.muon.param_groups[0]["params"][0]]["momentum_buffer"]
    torch.testing.assert_close(momentum, optimizer.state[optimizer.muon.param_groups[0]["params"][0]]["momentum_buffer"])


@pytest.mark.slow
@pytest.mark.parametrize("name", TAKES)
def test_every_optimizer_trains_the_quickstart(name, corpus, tmp_path, monkeypatch):
    """A few steps through train.py, learning-rate schedule and gradient clipping included: the loss falls by a
    margin that an optimizer that does not step (or steps at random) does not reach."""
    if name in FROM_PYTORCH_OPTIMIZER:
        pytest.importorskip("pytorch_optimizer")
    from lit_lm.cli import main
    from tests.conftest import ROOT
    from tests.test_recipes import TINY, train_losses

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    cli = main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY,
                "--data.init_args.paths", f"[{corpus}]", "--trainer.max_steps", str(STEPS),
                "--trainer.precision", "32-true", "--trainer.gradient_clip_val", "1.0",
                "--trainer.limit_val_batches", "0", "--trainer.logger", "lit_lm.loggers.CSVLogger",
                "--model.init_args.optimizer.name", name, "--model.init_args.optimizer.lr", str(LR[name])])
    assert cli.trainer.global_step == STEPS
    losses = [loss for _, loss in train_losses(next((tmp_path / "runs" / "quickstart").rglob("metrics.csv")).parent)]
    first, last = statistics.mean(losses[:3]), statistics.mean(losses[-3:])
    assert last < first - 0.3, losses


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("name", TAKES)
def test_every_optimizer_steps_with_clipping_under_mixed_precision(name, precision, corpus, tmp_path, monkeypatch):
    """The README's and docs/training.md's table: four steps through train.py with gradient clipping under each mixed
    precision (16-mixed: fp16 with the gradient scaler), every step taken, every loss finite, the weights moved."""
    if name in FROM_PYTORCH_OPTIMIZER:
        pytest.importorskip("pytorch_optimizer")
    from lit_lm.cli import main
    from tests.conftest import ROOT
    from tests.test_recipes import TINY, train_losses

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    cli = main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY,
                "--data.init_args.paths", f"[{corpus}]", "--trainer.max_steps", "4",
                "--trainer.precision", precision, "--trainer.gradient_clip_val", "1.0",
                "--trainer.limit_val_batches", "0", "--trainer.logger", "lit_lm.loggers.CSVLogger",
                "--model.init_args.optimizer.name", name, "--model.init_args.optimizer.lr", str(LR[name])])
    assert cli.trainer.global_step == 4 and cli.trainer.precision == precision
    losses = [loss for _, loss in train_losses(next((tmp_path / "runs" / "quickstart").rglob("metrics.csv")).parent)]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    # at least one step was not skipped by fp16's scaler: the optimizer's state exists
    assert any(state for state in cli.trainer.optimizers[0].state.values())


def test_every_variant_of_the_optimizer_ablation_builds_its_optimizer():
    """The ablation file's words pass the optimizer's own checks (an Adam setting left in the recipe is refused)."""
    from lit_lm.ablate.spec import read_ablation
    from lit_lm.cli import resolved_config
    from tests.conftest import ROOT

    ablation = read_ablation(ROOT / "configs" / "ablations" / "optimizers.yaml")
    base = resolved_config(ablation.base)["model"]["init_args"]["optimizer"]  # tests/test_ablation_files.py checks
    names = set()                                                            # that each word resolves as written
    for variant in ablation.variants:
        words = dict(word.removeprefix("--model.init_args.optimizer.").split("=", 1) for word in variant.words)
        names.add(OptimizerConfig(**{**base, **{key: yaml.safe_load(value) for key, value in words.items()}}).name)
    assert names == set(TAKES)  # every optimizer has its variant


def test_a_run_resumes_with_other_optimizer_settings_but_not_another_optimizer():
    from lit_lm.modules import MaskedLMModule

    def module(**optimizer):
        return MaskedLMModule(tiny(vocab_size=40), OptimizerConfig(**optimizer), seq_length=8,
                              special_token_ids=[0, 1, 2, 3, 4], mask_token_id=4)

    adamw = {"run_settings": module().run_settings()}
    lion = {"run_settings": module(name="lion", eps=1e-6).run_settings()}
    assert module(lr=3e-4).resume_differences(adamw) == []  # the learning rate may change, as before
    assert module(name="lion", lr=1e-4, eps=1e-6).resume_differences(lion) == []
    assert any("optimizer" in line and "lion" in line for line in module().resume_differences(lion))
    lion_now = module(name="lion", eps=1e-6)
    assert any("optimizer" in line and "lion" in line for line in lion_now.resume_differences(adamw))
