"""HeldOutLoss: the held-out set scored at evenly spaced points of a run, the budget clock paused meanwhile."""

import csv
import sys
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback, Timer

from lit_lm.callbacks import HeldOutLoss, ThroughputMFU
from lit_lm.checkpoint import load_model
from lit_lm.heldout import HeldOutSet
from tests.callbacks.helpers import FakeClock
from tests.conftest import ROOT
from tests.test_heldout import datamodule
from tests.test_recipes import TINY


def train(corpus, tmp_path, monkeypatch, *words, run=True, callbacks=()):
    from lit_lm.cli import LitLMCLI

    path = HeldOutSet.from_datamodule(datamodule(corpus), "masked", sequences=8).save(tmp_path / "heldout.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    args = ["--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY, "--data.init_args.paths",
            f"[{corpus}]", "--data.init_args.tokenizer.kind=wordpiece", "--trainer.limit_val_batches=0",
            "--trainer.callbacks+=lit_lm.callbacks.HeldOutLoss", f"--trainer.callbacks.init_args.path={path}",
            "--trainer.callbacks.init_args.points=3", *words]
    cli = LitLMCLI(args=args, run=False)
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli, path


def logged(tmp_path) -> list[dict]:
    rows = []
    for path in sorted(tmp_path.rglob("metrics.csv")):
        rows += [r for r in csv.DictReader(open(path)) if r.get("heldout/loss")]
    return rows


@pytest.mark.slow
def test_it_scores_at_evenly_spaced_steps_and_the_final_weights(corpus, tmp_path, monkeypatch):
    cli, path = train(corpus, tmp_path, monkeypatch, "--trainer.max_steps=12")
    rows = logged(tmp_path)
    assert [int(r["step"]) for r in rows] == [4, 8, 12]  # the last point is the final weights: not scored twice
    assert all(float(r["heldout/tokens_seen"]) > 0 for r in rows)
    assert float(rows[-1]["heldout/loss"]) < float(rows[0]["heldout/loss"])
    final = HeldOutSet.load(path).score(load_model(next(tmp_path.rglob("last.ckpt"))))
    assert float(rows[-1]["heldout/loss"]) == pytest.approx(final, abs=1e-5)


class TickPerMicroBatch(Callback):
    """Each micro-batch takes ``seconds`` of the fake budget clock."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds

    def on_train_batch_start(self, *args) -> None:
        self.clock.now += self.seconds


@pytest.mark.slow
def test_the_budget_clock_is_paused_while_it_scores(corpus, tmp_path, monkeypatch):
    """A 3 s budget on the fake clock, 0.25 s a micro-batch: 12 steps, scored after 4, 8 and 12. Each scoring takes
    10 s of the same clock; were the clock not paused, the first scoring alone would end the budget at step 4."""
    clock = FakeClock(monkeypatch)
    monkeypatch.setattr("lit_lm.callbacks.heldout.time", clock)  # HeldOutLoss times its scoring on the same clock
    score, scored_at = HeldOutSet.score, []

    def slow_score(self, model, batch_size=64):
        scored_at.append(clock.now)
        clock.now += 10.0
        return score(self, model, batch_size)

    monkeypatch.setattr(HeldOutSet, "score", slow_score)
    cli, _ = train(corpus, tmp_path, monkeypatch, "--trainer.max_time=00:00:00:03", "--trainer.max_steps=-1",
                   run=False, callbacks=[TickPerMicroBatch(clock, 0.25)])
    timer = next(c for c in cli.trainer.callbacks if type(c).__name__ == "Timer")
    assert cli.trainer.global_step == 12 and len(scored_at) == 3  # three points, the last one the final weights
    assert timer.time_elapsed() == 3.0  # the whole budget trained: 12 x 0.25 s, none of the 30 s of scoring
    rows = logged(tmp_path)
    assert [(int(r["step"]), float(r["heldout/train_seconds"])) for r in rows] == [(4, 1.0), (8, 2.0), (12, 3.0)]


# ---- without train.py: the schedule of points, and what one scoring logs, on fake trainers and a fake clock ----


class RecordingLogger:
    def __init__(self) -> None:
        self.logged, self.saves = [], 0

    def log_metrics(self, metrics, step):
        self.logged.append((step, dict(metrics)))

    def save(self):
        self.saves += 1


def fake_trainer(step=0, max_steps=8, callbacks=(), is_global_zero=True, loggers=None):
    return SimpleNamespace(global_step=step, max_steps=max_steps, max_epochs=None, num_training_batches=float("inf"),
                           fit_loop=SimpleNamespace(total_batch_idx=0), world_size=1, callbacks=list(callbacks),
                           is_global_zero=is_global_zero, loggers=[RecordingLogger()] if loggers is None else loggers)


def test_scores_at_each_point_of_the_run_once(monkeypatch):
    """points=4 of max_steps=8: scores after steps 2, 4, 6 and 8; a jump past several points scores once and
    resumes the schedule from where progress is."""
    callback, scored = HeldOutLoss("unused.pt", points=4), []
    monkeypatch.setattr(callback, "score", lambda trainer, module: scored.append((trainer.global_step, module)))
    for step in range(9):
        callback.on_train_batch_end(fake_trainer(step), "module", None, None, step)
    assert scored == [(2, "module"), (4, "module"), (6, "module"), (8, "module")] and callback.scored_points == 4
    jumping, scored[:] = HeldOutLoss("unused.pt", points=4), []
    monkeypatch.setattr(jumping, "score", lambda trainer, module: scored.append(trainer.global_step))
    for step in (1, 5, 6, 7):  # 5/8 passes the points at 2/8 and 4/8: one score, and the schedule moves to 3/4
        jumping.on_train_batch_end(fake_trainer(step), None, None, None, step)
    assert scored == [5, 6] and jumping.scored_points == 3


def test_a_run_without_a_budget_is_refused_naming_the_callback():
    unlimited = fake_trainer(max_steps=-1)
    with pytest.raises(ValueError, match=r"HeldOutLoss \(key='auto'\) needs a budget: set trainer.max_time"):
        HeldOutLoss("unused.pt").on_train_batch_end(unlimited, None, None, None, 0)


def test_the_schedule_position_is_saved_and_restored():
    callback = HeldOutLoss("unused.pt", points=5)
    callback.scored_points = 3
    restored = HeldOutLoss("unused.pt", points=5)
    restored.load_state_dict(callback.state_dict())
    assert restored.scored_points == 3
    restored.load_state_dict({})  # a checkpoint from before the callback was added
    assert restored.scored_points == 0


@pytest.mark.parametrize("settings", [dict(points=0), dict(batch_size=0)])
def test_points_and_batch_size_below_one_are_refused(settings):
    with pytest.raises(ValueError, match="HeldOutLoss.points and batch_size must be >= 1"):
        HeldOutLoss("unused.pt", **settings)


def test_one_point_and_batches_of_one_are_allowed():
    callback = HeldOutLoss("unused.pt", points=1, batch_size=1)
    assert (callback.points, callback.batch_size) == (1, 1)


class SlowScore:
    """Stands for HeldOutSet.score: keeps its arguments and takes ``seconds`` of the fake clock."""

    def __init__(self, clock, seconds: float, loss: float = 2.5) -> None:
        self.clock, self.seconds, self.loss, self.calls = clock, seconds, loss, []

    def score(self, model, batch_size=64):
        self.calls.append((model, batch_size))
        self.clock.now += self.seconds
        return self.loss


def scoring(monkeypatch):
    clock = FakeClock(monkeypatch)  # the budget Timer's clock
    monkeypatch.setattr("lit_lm.callbacks.heldout.time", clock)  # and the one HeldOutLoss times its scoring with
    callback = HeldOutLoss("unused.pt", batch_size=3)
    callback.heldout = SlowScore(clock, seconds=7.0)
    module = SimpleNamespace(model="the model")
    return clock, callback, module


def test_a_score_logs_the_loss_the_budget_clock_and_the_tokens_at_the_step_and_pauses_the_clock(monkeypatch):
    clock, callback, module = scoring(monkeypatch)
    timer = Timer(duration={"seconds": 100})
    timer.on_train_start(None, None)  # training started at 1000 on the fake clock
    clock.now += 10.0  # 10 s of training
    throughput = ThroughputMFU()
    throughput.tokens_seen = 1234
    trainer = fake_trainer(step=4, callbacks=[timer, throughput])
    assert callback.score(trainer, module) == 2.5
    assert callback.heldout.calls == [("the model", 3)]
    # 7 s of scoring went by, and the budget clock still reads the 10 s of training
    assert clock.now == 1017.0 and timer.time_elapsed() == 10.0
    [logger] = trainer.loggers
    assert logger.logged == [(4, {"heldout/loss": 2.5, "heldout/train_seconds": 10.0, "heldout/tokens_seen": 1234.0})]
    assert logger.saves == 1 and callback.last_scored_step == 4


def test_a_score_after_training_ended_leaves_the_stopped_clock_alone(monkeypatch):
    clock, callback, module = scoring(monkeypatch)
    timer = Timer(duration={"seconds": 100})
    timer.on_train_start(None, None)
    clock.now += 10.0
    timer.on_train_end(None, None)  # the budget clock stopped at 10 s
    callback.score(fake_trainer(step=4, callbacks=[timer]), module)
    assert timer.time_elapsed() == 10.0


def test_a_score_before_the_clock_started_or_without_a_budget(monkeypatch):
    clock, callback, module = scoring(monkeypatch)
    unstarted = fake_trainer(step=0, callbacks=[Timer(duration={"seconds": 100})])
    callback.score(unstarted, module)
    assert unstarted.loggers[0].logged == [(0, {"heldout/loss": 2.5, "heldout/train_seconds": 0.0})]
    no_budget = fake_trainer(step=3)
    callback.score(no_budget, module)
    [(step, metrics)] = no_budget.loggers[0].logged
    assert step == 3 and metrics.keys() == {"heldout/loss", "heldout/train_seconds"}
    assert torch.isnan(torch.tensor(metrics["heldout/train_seconds"]))


def test_only_rank_zero_scores_and_only_once_loaded(monkeypatch):
    clock, callback, module = scoring(monkeypatch)
    other_rank = fake_trainer(is_global_zero=False)
    assert callback.score(other_rank, module) is None and other_rank.loggers[0].logged == []
    assert callback.heldout.calls == []
    assert HeldOutLoss("unused.pt").score(fake_trainer(), module) is None  # before setup loaded the set


def test_training_ends_with_a_score_unless_its_last_step_was_just_scored(monkeypatch):
    clock, callback, module = scoring(monkeypatch)
    callback.score(fake_trainer(step=4), module)
    callback.on_train_end(fake_trainer(step=4), module)
    assert len(callback.heldout.calls) == 1
    callback.on_train_end(fake_trainer(step=6), module)
    assert len(callback.heldout.calls) == 2 and callback.last_scored_step == 6
