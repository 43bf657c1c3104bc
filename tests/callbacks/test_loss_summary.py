"""LossSummary: one loss per optimizer step, and the mean of the first tenth against the last tenth at the end."""

import logging
from types import SimpleNamespace

import pytest
import torch

from lit_lm.callbacks import LossSummary


def trainer_at(step: int, **metrics) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, callback_metrics={k: torch.tensor(v) for k, v in metrics.items()})


def test_one_loss_per_optimizer_step_from_where_training_starts():
    summary = LossSummary()  # the recipes' form: train/loss
    summary.on_train_start(trainer_at(5), None)  # a resumed run, at step 5
    summary.on_train_batch_end(trainer_at(5, **{"train/loss": 9.0}), None, None, None, 0)  # still accumulating
    summary.on_train_batch_end(trainer_at(6, **{"train/loss": 4.0}), None, None, None, 1)
    summary.on_train_batch_end(trainer_at(6, **{"train/loss": 3.0}), None, None, None, 2)  # the same step again
    summary.on_train_batch_end(trainer_at(7, other=1.0), None, None, None, 3)  # no train/loss logged
    summary.on_train_batch_end(trainer_at(8, **{"train/loss": 2.5}), None, None, None, 4)
    assert summary.losses == [4.0, 2.5]


def test_another_metric_can_be_summarised():
    summary = LossSummary(metric="val/loss")
    summary.on_train_start(trainer_at(0), None)
    summary.on_train_batch_end(trainer_at(1, **{"val/loss": 1.5, "train/loss": 7.0}), None, None, None, 0)
    assert summary.losses == [1.5]


def test_the_summary_compares_the_first_and_last_tenth():
    summary = LossSummary()
    summary.losses = [float(i) for i in range(9)]
    assert summary.summary() is None  # fewer than ten steps: no tenth to compare
    summary.losses = [float(i) for i in range(20, 0, -1)]  # 20, 19, ..., 1: a tenth is 2 steps
    assert summary.summary() == {"steps": 20, "first_tenth": 19.5, "last_tenth": 1.5}
    summary.losses = [5.0] * 9 + [1.0]  # exactly ten steps: the tenth is the first and the last step
    assert summary.summary() == {"steps": 10, "first_tenth": 5.0, "last_tenth": 1.0}


def test_the_end_of_training_logs_one_line(caplog):
    summary = LossSummary()
    summary.losses = [float(i) for i in range(20, 0, -1)]
    with caplog.at_level(logging.INFO):
        summary.on_train_end(trainer_at(20), None)
    assert "train/loss: first tenth of 20 steps 19.500 -> last tenth 1.500" in caplog.messages
    caplog.clear()
    short = LossSummary()
    short.losses = [1.0] * 9
    with caplog.at_level(logging.INFO):
        short.on_train_end(trainer_at(9), None)
    assert not [m for m in caplog.messages if "tenth" in m or m == "None"]


@pytest.mark.parametrize("steps", [0, 3])
def test_nothing_is_collected_before_an_optimizer_step(steps):
    summary = LossSummary()
    summary.on_train_start(trainer_at(steps), None)
    summary.on_train_batch_end(trainer_at(steps, **{"train/loss": 1.0}), None, None, None, 0)
    assert summary.losses == []
