"""Sophia-G: the paper's step on pytorch-optimizer's SophiaH, and through train.py a curvature sample from every
micro-batch of every k-th step, for each objective and precision."""

import collections
import math

import pytest
import torch

pytest.importorskip("pytorch_optimizer")

from lit_lm.modules.curvature import SampledLoss  # noqa: E402
from lit_lm.modules.pretraining import PretrainingModule  # noqa: E402
from lit_lm.modules.sophia import SophiaG  # noqa: E402
from tests.test_recipes import larger_corpus  # noqa: E402,F401  (a fixture the runs below use)


def quadratic_loss(param: torch.Tensor, x: torch.Tensor) -> SampledLoss:
    return SampledLoss("lm", ((x @ param) ** 2).sum(), torch.tensor(len(x)))


def test_the_step_is_lr_times_the_clipped_ratio_of_momentum_to_curvature():
    """Three steps with k=2, weight decay and one coordinate clipped, against the paper's update written out:
    m = lerp(m, g, 1 - b1); h = lerp(h, rho * estimate, 1 - b2) on steps 1 and 3;
    param = param (1 - lr wd) - lr clip(m / max(h, eps), -1, 1)."""
    torch.manual_seed(0)
    lr, (b1, b2), rho, wd, eps = 0.1, (0.9, 0.95), 0.5, 0.01, 1e-12
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    optimizer = SophiaG([{"params": [param], "weight_decay": wd}], lr=lr, betas=(b1, b2), rho=rho, update_period=2,
                        eps=eps)
    expected, m, h = param.detach().clone(), torch.zeros(3), torch.zeros(3)
    for step in range(3):
        x = torch.randn(4, 3)
        x[:, 2] *= 1e-3  # a coordinate with almost no curvature: its step is clipped to lr
        assert optimizer.curvature_due == (step % 2 == 0)
        if optimizer.curvature_due:
            optimizer.add_sampled_loss(quadratic_loss(param, x))
            at = expected.clone().requires_grad_()
            g_sampled = torch.autograd.grad(((x @ at) ** 2).sum(), at)[0]
            h = torch.lerp(h, rho * g_sampled ** 2 / 4, 1 - b2)
        optimizer.zero_grad()
        loss = ((x @ param) ** 2).mean()
        loss.backward()
        g = param.grad.clone()
        m = torch.lerp(m, g, 1 - b1)
        expected = expected * (1 - lr * wd) - lr * (m / h.clamp(min=eps)).clamp(-1, 1)
        optimizer.step()
        torch.testing.assert_close(param.detach(), expected)
    assert (m / h.clamp(min=eps))[2].abs() > 1  # the clip did bind on the flat coordinate


def test_a_due_step_without_a_sample_is_one_clear_error():
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = SophiaG([param], lr=0.1, betas=(0.9, 0.99), rho=0.04, update_period=10)
    param.sum().backward()
    with pytest.raises(RuntimeError, match="no loss at sampled targets"):
        optimizer.step()


def test_a_checkpoint_holds_no_estimate_copy_and_the_schedule_resumes():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = SophiaG([param], lr=0.1, betas=(0.9, 0.99), rho=0.04, update_period=3)
    for _ in range(4):
        x = torch.randn(2, 3)
        if optimizer.curvature_due:
            optimizer.add_sampled_loss(quadratic_loss(param, x))
        optimizer.zero_grad()
        (x @ param).pow(2).mean().backward()
        optimizer.step()
    state = optimizer.state_dict()
    assert set(state["state"][0]) == {"momentum", "hessian_moment"}  # the average, not a copy of the estimate
    resumed = SophiaG([torch.nn.Parameter(param.detach().clone())], lr=0.1, betas=(0.9, 0.99), rho=0.04,
                      update_period=3)
    assert resumed.curvature_due  # a fresh optimizer estimates at once
    resumed.load_state_dict(state)
    assert not resumed.curvature_due  # step 4 of 3-step periods: the next estimate is at step 6
    torch.testing.assert_close(resumed.state_dict()["state"][0]["hessian_moment"],
                               state["state"][0]["hessian_moment"])


# ---- through train.py ----
@pytest.fixture
def spied(monkeypatch):
    """Records, for each micro-batch, the optimizer step it belongs to, and each curvature sample's step and term."""
    record = {"micro_batches": collections.Counter(), "samples": [], "estimates": []}
    sample_curvature, add, estimate = (PretrainingModule.sample_curvature, SophiaG.add_sampled_loss,
                                       SophiaG._estimate)

    def spy_sample_curvature(self, out):
        record["micro_batches"][self.trainer.optimizers[0].param_groups[0].get("step", 0)] += 1
        return sample_curvature(self, out)

    def spy_add(self, sampled, scale=1.0):
        record["samples"].append((self.param_groups[0].get("step", 0), sampled.name, int(sampled.count), scale))
        return add(self, sampled, scale)

    def spy_estimate(self):
        result = estimate(self)
        record["estimates"].append((self.param_groups[0].get("step", 0), all(t.isfinite().all() for t in result)))
        return result

    monkeypatch.setattr(PretrainingModule, "sample_curvature", spy_sample_curvature)
    monkeypatch.setattr(SophiaG, "add_sampled_loss", spy_add)
    monkeypatch.setattr(SophiaG, "_estimate", spy_estimate)
    return record


TERMS = {"recipes/crammed-bert.yaml": ["lm"], "recipes/crammed-gpt.yaml": ["lm"],
         "recipes/crammed-electra.yaml": ["generator", "discriminator"], "quickstart.yaml": ["lm"]}


@pytest.mark.slow
@pytest.mark.parametrize("recipe, precision", [
    ("recipes/crammed-bert.yaml", "32-true"), ("recipes/crammed-gpt.yaml", "32-true"),
    ("recipes/crammed-electra.yaml", "32-true"), ("quickstart.yaml", "bf16-mixed"), ("quickstart.yaml", "16-mixed")])
def test_every_objective_samples_curvature_on_every_micro_batch_of_every_kth_step(
        recipe, precision, spied, larger_corpus, tmp_path, monkeypatch):
    """crammed-bert (its batch ramp: several micro-batches a step), crammed-gpt (next-token targets, accumulation 2)
    and crammed-electra (two terms) in 32-true, the quickstart under bf16-mixed and 16-mixed (the scaler's scale),
    each with gradient clipping: every step taken, a sample of each term from each micro-batch of steps 0, 2 and 4
    and none from the others, each estimate finite, and the loss finite."""
    from tests.test_recipes import fit, train_losses

    monkeypatch.chdir(tmp_path)
    steps = 5
    cli = fit(recipe, larger_corpus, precision, steps, "--model.init_args.optimizer.name", "sophia",
              "--model.init_args.optimizer.lr", "1e-3", "--model.init_args.optimizer.eps", "1e-12",
              "--model.init_args.optimizer.hessian_update_period", "2", "--trainer.gradient_clip_val", "1.0")
    assert cli.trainer.global_step == steps
    due = [step for step in range(steps) if step % 2 == 0]
    expected = collections.Counter({(step, name): spied["micro_batches"][step] for step in due
                                    for name in TERMS[recipe]})
    assert collections.Counter((step, name) for step, name, _, _ in spied["samples"]) == expected
    assert all(count > 0 for _, _, count, _ in spied["samples"])
    scales = {scale for *_, scale in spied["samples"]}
    assert (scales != {1.0}) == (precision == "16-mixed")  # fp16's samples taken at the scaler's scale
    assert spied["estimates"] == [(step, True) for step in due]
    optimizer = cli.trainer.optimizers[0]
    moments = [optimizer.state[p]["hessian_moment"] for group in optimizer.param_groups for p in group["params"]
               if p in optimizer.state]
    assert all(m.isfinite().all() and (m >= 0).all() for m in moments)
    assert sum(float(m.sum()) for m in moments) > 0
    losses = [loss for _, loss in train_losses(next((tmp_path / "runs").rglob("metrics.csv")).parent)]
    assert losses and all(math.isfinite(loss) for loss in losses)





@pytest.mark.parametrize("strategy", ["FSDPStrategy", "DeepSpeedStrategy"])
def test_sophia_under_a_sharding_strategy_is_one_clear_error(strategy):
    """FSDP shards the parameters and DeepSpeed steps them with an optimizer of its own: neither gives the curvature
    estimate the model's own parameters, so Sophia refuses them rather than estimating nonsense."""
    import types

    from lit_lm.modules import MaskedLMModule
    from lit_lm.modules.optim import OptimizerConfig
    from tests.models.helpers import tiny

    module = MaskedLMModule(tiny(vocab_size=40), OptimizerConfig(name="sophia"), seq_length=8,
                            special_token_ids=[0, 1, 2, 3, 4], mask_token_id=4)
    module._trainer = types.SimpleNamespace(strategy=type(strategy, (), {})())
    with pytest.raises(ValueError, match=f"sophia runs on one device or under DDP, not under {strategy}"):
        module.configure_optimizers()
