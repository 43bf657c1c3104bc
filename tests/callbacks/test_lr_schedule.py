import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_lm.callbacks import OneCycleLR
from lit_lm.callbacks.progress import training_progress
from tests.callbacks.helpers import FakeClock, LinearOnTokens, Ticking, quiet_trainer


def test_triangle_rises_to_the_peak_at_half_and_falls_to_zero():
    s = OneCycleLR(warmup_fraction=0.5)
    assert [s.factor(p) for p in (0.0, 0.25, 0.5, 0.75, 1.0)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])


def test_bert_style_short_warmup_then_linear_decay_to_a_floor():
    s = OneCycleLR(warmup_fraction=0.1, initial_lr_ratio=0.0, final_lr_ratio=0.1)
    assert s.factor(0.05) == pytest.approx(0.5)
    assert s.factor(0.1) == pytest.approx(1.0)
    assert s.factor(1.0) == pytest.approx(0.1)
    assert s.factor(0.55) == pytest.approx(0.55)


def test_crammings_budget_triangle_starts_at_a_quarter_and_peaks_at_three_quarters():
    s = OneCycleLR(warmup_fraction=0.75, initial_lr_ratio=0.25, key="time")
    assert [s.factor(p) for p in (0.0, 0.375, 0.75, 0.875, 1.0)] == pytest.approx([0.25, 0.625, 1.0, 0.5, 0.0])


def test_rejects_out_of_range_fractions_and_unknown_clocks():
    with pytest.raises(ValueError, match="warmup_fraction"):
        OneCycleLR(warmup_fraction=1.5)
    with pytest.raises(ValueError, match="key"):
        OneCycleLR(key="epochs")


def test_sets_the_learning_rate_every_step_in_a_real_fit(tmp_path):
    model = LinearOnTokens(lr=0.1)
    quiet_trainer(tmp_path, max_steps=10, callbacks=[OneCycleLR(0.5)]).fit(model)
    assert [s["lr"] for s in model.seen] == pytest.approx([0.1 * f for f in (0, .2, .4, .6, .8, 1, .8, .6, .4, .2)])


def test_without_max_steps_progress_runs_over_the_epochs_batches(tmp_path):
    model = LinearOnTokens(n_batches=10, lr=0.1)
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[OneCycleLR(0.5, key="steps")]).fit(model)
    assert len(model.seen) == 20
    assert [s["lr"] for s in model.seen] == pytest.approx([0.1 * OneCycleLR(0.5).factor(i / 20) for i in range(20)])


def test_time_keyed_schedule_follows_the_budget_clock(tmp_path, monkeypatch):
    """With a fake clock advancing 1 s per micro-batch and a 20 s budget, the rate follows elapsed/budget."""
    clock = FakeClock(monkeypatch)
    model = Ticking(clock, lr=0.1)
    trainer = quiet_trainer(tmp_path, max_time={"seconds": 20}, callbacks=[OneCycleLR(0.5, key="time")])
    trainer.fit(model)
    # at the start of micro-batch i, i seconds have passed (the tick happens inside the step); the Timer stops at 20
    assert len(model.seen) == 20
    assert [s["lr"] for s in model.seen] == pytest.approx([0.1 * OneCycleLR(0.5).factor(i / 20) for i in range(20)])
    assert training_progress(trainer, "time") == 1.0


def test_a_clock_that_is_not_configured_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"OneCycleLR \(key='time'\) needs a wall-clock budget: set trainer.max_time"):
        quiet_trainer(tmp_path, max_steps=3, callbacks=[OneCycleLR(key="time")]).fit(LinearOnTokens())


def test_a_resumed_run_follows_the_configured_peak(tmp_path):
    """Resuming (e.g. after a NaN) with a lower model.optimizer.lr lowers the schedule from there on."""
    checkpoints = tmp_path / "checkpoints"

    def callbacks():
        return [OneCycleLR(0.5, key="steps"), ModelCheckpoint(dirpath=checkpoints, save_last=True)]

    quiet_trainer(tmp_path, max_steps=4, max_epochs=-1, enable_checkpointing=True,
                  callbacks=callbacks()).fit(LinearOnTokens(lr=0.1))
    resumed = LinearOnTokens(lr=0.05)
    quiet_trainer(tmp_path, max_steps=8, max_epochs=-1, enable_checkpointing=True, callbacks=callbacks()).fit(
        resumed, ckpt_path=str(checkpoints / "last.ckpt"))
    assert [s["lr"] for s in resumed.seen] == pytest.approx([0.05 * OneCycleLR(0.5).factor(i / 8) for i in range(4, 8)])


# ---- the schedule's edges, the settings, and what is logged ----
# pytest.approx's default relative 1e-6: the factors are float64 arithmetic (error ~1e-16) and the logged rate a
# float32 value (relative rounding 2**-24 = 6e-8), both far inside it.
@pytest.mark.parametrize("settings", [dict(warmup_fraction=0.0), dict(warmup_fraction=1.0),
                                      dict(initial_lr_ratio=1.0, final_lr_ratio=1.0)])
def test_settings_at_their_bounds_are_allowed(settings):
    OneCycleLR(**settings)


@pytest.mark.parametrize("settings", [dict(initial_lr_ratio=1.5), dict(final_lr_ratio=1.5),
                                      dict(initial_lr_ratio=-0.1), dict(final_lr_ratio=-0.1)])
def test_ratios_outside_zero_to_one_are_refused_naming_them(settings):
    with pytest.raises(ValueError, match=r"OneCycleLR.initial_lr_ratio and final_lr_ratio must be in \[0, 1\]"):
        OneCycleLR(**settings)


def test_the_warmup_fraction_at_its_bounds():
    """warmup 0: no rise, the peak at once, then the decay; warmup 1: a rise over the whole run to the peak."""
    no_warmup = OneCycleLR(warmup_fraction=0.0, final_lr_ratio=0.5)
    assert [no_warmup.factor(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([1.0, 0.75, 0.5])
    all_warmup = OneCycleLR(warmup_fraction=1.0, initial_lr_ratio=0.5)
    assert [all_warmup.factor(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([0.5, 0.75, 1.0])


def test_progress_outside_the_run_holds_the_end_rates():
    s = OneCycleLR(warmup_fraction=0.5, initial_lr_ratio=0.2, final_lr_ratio=0.1)
    assert s.factor(-0.5) == pytest.approx(0.2) and s.factor(1.5) == pytest.approx(0.1)


def test_the_rate_is_logged_as_train_lr(tmp_path):
    model = LinearOnTokens(lr=0.1)
    trainer = quiet_trainer(tmp_path, max_steps=4, callbacks=[OneCycleLR(0.5)])
    trainer.fit(model)
    assert float(trainer.callback_metrics["train/lr"]) == pytest.approx(0.1 * 0.5)  # the last step's: 3/4 of the run
