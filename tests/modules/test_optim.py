import builtins
import collections
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
    saved_momentum = optimizer.state[optimizer.muon.param_groups[0]["params"][0]]["momentum_buffer"]
    torch.testing.assert_close(momentum, saved_momentum)


# The optimizer matrix: an all-pairs (pairwise) design in 20 fits through train.py, where the full product of its
# factors is 40 (the 30 fits of before crossed the optimizer with the three precisions, on the masked LM alone):
#   optimizer (10, TAKES);
#   the gradients' path (2): unscaled (32-true or bf16-mixed, one path to an optimizer: fp32 gradients of fp32
#     weights through Lightning's Precision.optimizer_step and Precision.clip_gradients, which MixedPrecision calls
#     when it has no scaler), or fp16's loss scale (16-mixed: the scaler unscales the gradients before clipping and
#     the step, and skips a step whose gradients overflowed);
#   objective (2): masked LM (configs/quickstart.yaml) or causal LM (configs/quickstart-decoder.yaml).
# Each optimizer has one fit on each path, on different objectives, so every pair of levels of any two factors
# occurs: optimizer x path 20 of 20, optimizer x objective 20 of 20, path x objective 4 of 4; on the unscaled path
# 32-true and bf16-mixed each take five optimizers and both objectives (test_the_optimizer_matrix_covers_every_pair).
# An unscaled fit trains 16 steps and its loss must fall; a 16-mixed fit takes 4 steps, each finite, the weights
# moved; both clip gradients and check from inside the fit that they computed in their precision
# (tests/precision_probe.py: under 16-mixed, backward received the loss times the scale and the optimizer the
# gradients divided by it).
MASKED, CAUSAL = "quickstart.yaml", "quickstart-decoder.yaml"
UNSCALED = [  # (optimizer, objective, precision)
    ("adamw", MASKED, "32-true"), ("adafactor", CAUSAL, "bf16-mixed"), ("radam", MASKED, "bf16-mixed"),
    ("nadam", CAUSAL, "32-true"), ("muon", MASKED, "32-true"), ("lamb", CAUSAL, "bf16-mixed"),
    ("lion", MASKED, "bf16-mixed"), ("shampoo", CAUSAL, "32-true"), ("soap", MASKED, "32-true"),
    ("sophia", CAUSAL, "bf16-mixed")]
SCALED = [(name, CAUSAL if objective == MASKED else MASKED, "16-mixed") for name, objective, _ in UNSCALED]


def test_the_optimizer_matrix_covers_every_pair():
    fits = [(name, objective, "scaled" if precision == "16-mixed" else "unscaled", precision)
            for name, objective, precision in UNSCALED + SCALED]
    assert len(set(fits)) == len(fits) == 20 and [name for name, *_ in UNSCALED] == list(TAKES)
    for a, b in [(0, 1), (0, 2), (1, 2), (1, 3)]:  # optimizer, objective, path; objective x precision
        levels_a, levels_b = {fit[a] for fit in fits}, {fit[b] for fit in fits}
        assert {(fit[a], fit[b]) for fit in fits} == {(x, y) for x in levels_a for y in levels_b}, (a, b)
    assert collections.Counter(precision for _, _, precision in UNSCALED) == {"32-true": 5, "bf16-mixed": 5}


def train(name: str, objective: str, precision: str, steps: int, corpus, tmp_path, monkeypatch):
    """``steps`` optimizer steps of ``objective``'s recipe, shrunk, through train.py with gradient clipping and the
    precision probe inside the fit; the CLI and the run's training losses."""
    if name in FROM_PYTORCH_OPTIMIZER:
        pytest.importorskip("pytorch_optimizer")
    from tests.precision_probe import PrecisionProbe
    from tests.test_recipes import fit, train_losses

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    # quickstart-decoder sets Adam's betas; an optimizer without betas (adafactor) takes the default instead
    betas = [] if "betas" in TAKES[name] else ["--model.init_args.optimizer.betas", "[0.9,0.98]"]
    probe = PrecisionProbe()
    cli = fit(objective, corpus, precision, steps, "--trainer.gradient_clip_val", "1.0",
              "--trainer.limit_val_batches", "0", "--trainer.logger", "lit_lm.loggers.CSVLogger",
              "--model.init_args.optimizer.name", name, "--model.init_args.optimizer.lr", str(LR[name]), *betas,
              callbacks=[probe])
    assert cli.trainer.global_step == steps
    probe.check(cli.trainer, precision)
    run = tmp_path / "runs" / objective.removesuffix(".yaml")
    return cli, [loss for _, loss in train_losses(next(run.rglob("metrics.csv")).parent)]


@pytest.mark.slow
@pytest.mark.parametrize("name, objective, precision", UNSCALED)
def test_every_optimizer_trains_the_quickstart(name, objective, precision, corpus, tmp_path, monkeypatch):
    """16 steps through train.py, learning-rate schedule and gradient clipping included: the loss falls by a margin
    that an optimizer that does not step (or steps at random) does not reach."""
    _, losses = train(name, objective, precision, STEPS, corpus, tmp_path, monkeypatch)
    first, last = statistics.mean(losses[:3]), statistics.mean(losses[-3:])
    assert last < first - 0.3, losses


@pytest.mark.slow
@pytest.mark.parametrize("name, objective, precision", SCALED)
def test_every_optimizer_steps_with_clipping_under_the_fp16_scaler(name, objective, precision, corpus, tmp_path,
                                                                   monkeypatch):
    """The README's and docs/training.md's table: four steps through train.py with gradient clipping under 16-mixed
    (fp16 with the gradient scaler), every step taken, every loss finite, the weights moved."""
    cli, losses = train(name, objective, precision, 4, corpus, tmp_path, monkeypatch)
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
