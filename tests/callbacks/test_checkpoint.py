"""ModelCheckpoint: last.ckpt holds the state at the end of training, however the run ended."""

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from lit_lm.callbacks import ModelCheckpoint
from lit_lm.callbacks.checkpoint import reopen_epoch
from lit_lm.runs import ResumeError
from tests.callbacks.helpers import FakeClock, LinearOnTokens, Ticking, quiet_trainer


def final_step(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.parametrize("checkpoint_class, expected", [(ModelCheckpoint, 7), (pl.callbacks.ModelCheckpoint, 5)],
                         ids=["lit-lm", "lightning"])
def test_last_checkpoint_after_max_steps_between_periodic_saves(tmp_path, checkpoint_class, expected):
    """Ours writes the final step; Lightning's (the reason ours exists) keeps the last periodic save."""
    checkpoint = checkpoint_class(dirpath=tmp_path, every_n_train_steps=5, save_last=True,
                                  enable_version_counter=False)
    trainer = quiet_trainer(tmp_path, max_steps=7, callbacks=[checkpoint], enable_checkpointing=True)
    trainer.fit(LinearOnTokens())
    assert final_step(tmp_path / "last.ckpt") == expected


def test_last_checkpoint_when_the_time_budget_ends_the_run(tmp_path, monkeypatch):
    module = Ticking(FakeClock(monkeypatch), seconds=10)  # every step takes 10 s of the 60 s budget
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_last=True, enable_version_counter=False)
    trainer = quiet_trainer(tmp_path, max_time={"seconds": 60}, callbacks=[checkpoint],
                            enable_checkpointing=True)
    trainer.fit(module)
    # the budget is checked at each batch end: 10 s, 20 s, ... 60 s >= 60 s at the 6th, between the saves at 4 and 8
    assert trainer.global_step == 6 and len(module.seen) == 6
    assert final_step(tmp_path / "last.ckpt") == trainer.global_step


def test_no_extra_save_when_the_last_step_was_just_saved(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_last=True, enable_version_counter=False)
    trainer = quiet_trainer(tmp_path, max_steps=10, callbacks=[checkpoint], enable_checkpointing=True)
    trainer.fit(LinearOnTokens())
    assert final_step(tmp_path / "last.ckpt") == 10
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0-step=10.ckpt", "last.ckpt"]


def test_a_fixed_folder_with_another_runs_checkpoints_is_refused_unless_resuming(tmp_path):
    folder = tmp_path / "checkpoints"

    def fit(max_steps, ckpt_path=None):
        checkpoint = ModelCheckpoint(dirpath=folder, save_last=True, save_on_exception=True)
        trainer = quiet_trainer(tmp_path, max_steps=max_steps, callbacks=[checkpoint], enable_checkpointing=True)
        trainer.fit(LinearOnTokens(), ckpt_path=ckpt_path)
        return trainer

    fit(3)
    first = (folder / "last.ckpt").read_bytes()
    with pytest.raises(ResumeError, match=r"already holds another run's checkpoints. Resume that run with --ckpt_path "
                                          r"last, or leave the ModelCheckpoint's dirpath unset so that every run "
                                          r"checkpoints into its own version folder"):
        fit(3)  # a fresh run into the same folder
    assert (folder / "last.ckpt").read_bytes() == first  # the refusal saved nothing over the first run
    with pytest.warns(UserWarning, match="exists and is not empty"):  # Lightning's own word on the folder, kept
        assert fit(5, ckpt_path=str(folder / "last.ckpt")).global_step == 5  # resuming it is allowed


# ---- through train.py: a run that stopped at its step limit goes on when resumed with a larger one ----
def tiny_run(corpus, record, max_steps: int, *extra: str, recipe: str = "quickstart-decoder.yaml"):
    """A quickstart at tiny shapes, deterministic in float32 and at a constant learning rate (no schedule that
    depends on max_steps), validating every 3 steps, recording the rows it trains (tests/ddp_recorder.py)."""
    from lit_lm.cli import main
    from tests.conftest import ROOT

    samples = ["--trainer.callbacks.TextSamples.every_n_steps=1000"] if "decoder" in recipe else []
    return main(["fit", "--config", str(ROOT / "configs" / recipe),
                 "--data.init_args.paths", f"[{corpus}]", "--data.init_args.tokenizer.vocab_size", "300",
                 "--data.init_args.seq_length", "32", "--data.init_args.batch_size", "4",
                 "--data.init_args.split", "paragraph", "--data.init_args.num_workers", "0",
                 "--data.init_args.progress", "false", "--model.init_args.config.hidden_size", "32",
                 "--model.init_args.config.num_layers", "1", "--model.init_args.config.num_heads", "2",
                 "--model.init_args.config.intermediate_size", "64", "--trainer.precision", "32-true",
                 "--trainer.deterministic", "true", "--trainer.limit_val_batches", "1",
                 "--trainer.val_check_interval", "3", "--trainer.enable_progress_bar", "false",
                 "--trainer.enable_model_summary", "false", "--trainer.logger", "lit_lm.loggers.CSVLogger",
                 "--trainer.callbacks.OneCycleLR=null", *samples,
                 "--trainer.callbacks+=tests.ddp_recorder.RowRecorder", "--trainer.callbacks.init_args.folder",
                 str(record), "--trainer.max_steps", str(max_steps), *extra])


def recorded_rows(record) -> list[str]:
    import json

    if not (record / "rank0.json").exists():  # a run with nothing left to train never starts training
        return []
    return [row for step in json.loads((record / "rank0.json").read_text())["steps"] for row in step["rows"]]


def final_weights(folder) -> dict:
    from lit_lm.checkpoint import Checkpoint

    return Checkpoint.read(folder).model().state_dict()


@pytest.mark.slow
def test_a_run_stopped_at_max_steps_resumes_with_a_larger_one_and_ends_as_one_uninterrupted_run(
        tmp_path, monkeypatch):
    """4 steps, then --ckpt_path last with max_steps 8 (4 more), then again with 8 (nothing left to do), then with
    a limit beyond the epoch (to its end), then beyond it again (the epoch is over: nothing): the rows trained are
    the uninterrupted epoch's, in its order, each once, and the final weights are its weights."""
    import sys

    from tests.conftest import write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    monkeypatch.setattr(sys, "argv", ["train.py"])
    (tmp_path / "resumed").mkdir()
    (tmp_path / "whole").mkdir()
    monkeypatch.chdir(tmp_path / "resumed")
    rows, steps = [], []
    for i, max_steps in enumerate([4, 8, 8, 10_000, 20_000]):
        cli = tiny_run(corpus, tmp_path / f"record{i}", max_steps, *(["--ckpt_path", "last"] if i else []))
        steps.append(cli.trainer.global_step)
        rows += recorded_rows(tmp_path / f"record{i}")
    monkeypatch.chdir(tmp_path / "whole")
    whole = tiny_run(corpus, tmp_path / "record-whole", 10_000)
    assert steps[:3] == [4, 8, 8] and steps[3] == steps[4] == whole.trainer.global_step > 8
    assert rows == recorded_rows(tmp_path / "record-whole")  # the epoch's rows, each once, in the same order
    resumed, reference = (final_weights(tmp_path / d / "runs" / "quickstart-decoder") for d in ("resumed", "whole"))
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_a_resumed_masked_lm_run_draws_the_uninterrupted_run_s_masks(tmp_path, monkeypatch):
    """The masks come from the global random stream: a checkpoint keeps the state it was saved in and the resumed
    run's first batch starts from it, and the data loaders seed their workers from generators of their own (not
    from that stream, which the validation after a periodic save would otherwise advance). A run resumed from its
    step-3 checkpoint (saved before the validation at step 3) to step 10 ends with the weights of 10 uninterrupted
    steps."""
    import sys

    from tests.conftest import write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    monkeypatch.setattr(sys, "argv", ["train.py"])
    for folder in ("resumed", "whole"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "resumed")
    tiny_run(corpus, tmp_path / "r1", 4, "--trainer.callbacks.ModelCheckpoint.every_n_train_steps=3",
             recipe="quickstart.yaml")
    [periodic] = (tmp_path / "resumed").rglob("*step=3.ckpt")
    tiny_run(corpus, tmp_path / "r2", 10, "--ckpt_path", str(periodic), recipe="quickstart.yaml")
    monkeypatch.chdir(tmp_path / "whole")
    tiny_run(corpus, tmp_path / "w", 10, recipe="quickstart.yaml")
    resumed, reference = (final_weights(tmp_path / d / "runs" / "quickstart") for d in ("resumed", "whole"))
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0)


# ---- the pieces, on fake trainers: the atomic writer, no save inside a window, an epoch left open ----
def epoch_progress(started: int, processed: int, completed: int) -> dict:
    counts = lambda: {"ready": started, "started": started, "processed": processed, "completed": completed}  # noqa: E731
    return {"loops": {"fit_loop": {"epoch_progress": {"total": counts(), "current": counts()}}}, "epoch": completed}


def test_reopen_epoch_marks_the_last_epoch_started_but_not_done():
    """Lightning's counts for an epoch that ended (its loop finished): started 3, processed 3, completed 3. Reopened,
    the third epoch is started but neither processed nor completed, and ``epoch`` counts the two completed ones."""
    checkpoint = epoch_progress(3, 3, 3)
    reopen_epoch(checkpoint)
    for counts in checkpoint["loops"]["fit_loop"]["epoch_progress"].values():
        assert counts == {"ready": 3, "started": 3, "processed": 2, "completed": 2}
    assert checkpoint["epoch"] == 2
    inside = epoch_progress(1, 0, 0)  # a save from inside the first epoch: already so
    reopen_epoch(inside)
    assert inside == epoch_progress(1, 0, 0)
    nothing = epoch_progress(0, 0, 0)  # no epoch started: nothing goes below zero
    reopen_epoch(nothing)
    assert nothing == epoch_progress(0, 0, 0)


def saving_trainer(fn=TrainerFn.FITTING, is_last_batch=False):
    batch_progress = SimpleNamespace(is_last_batch=is_last_batch)
    return SimpleNamespace(state=SimpleNamespace(fn=fn),
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=batch_progress)))


def test_only_a_fit_stopped_before_its_data_ran_out_saves_an_open_epoch():
    callback = ModelCheckpoint()
    stopped = epoch_progress(1, 1, 1)  # a budget or max_steps ended the fit; Lightning counted the epoch as done
    callback.on_save_checkpoint(saving_trainer(), None, stopped)
    assert stopped["epoch"] == 0 and stopped["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 0
    for trainer in (saving_trainer(is_last_batch=True), saving_trainer(fn=TrainerFn.VALIDATING)):
        done = epoch_progress(1, 1, 1)  # the data ran out, or not a fit: the epoch stays as Lightning counted it
        callback.on_save_checkpoint(trainer, None, done)
        assert done == epoch_progress(1, 1, 1)
    weights_only = {"state_dict": {}}  # a checkpoint without loop state is left alone
    callback.on_save_checkpoint(saving_trainer(), None, weights_only)
    assert weights_only == {"state_dict": {}}


def test_no_periodic_save_inside_an_accumulation_window(monkeypatch, tmp_path):
    """Lightning's epoch loop says whether a micro-batch is inside a window (``_should_accumulate``); inside one, the
    periodic save is skipped. A Lightning without the method saves as it would."""
    assert callable(quiet_trainer(tmp_path, max_steps=1).fit_loop.epoch_loop._should_accumulate)  # what is relied on
    calls = []
    monkeypatch.setattr(pl.callbacks.ModelCheckpoint, "on_train_batch_end", lambda self, *args: calls.append(args))
    callback = ModelCheckpoint()

    def trainer(**epoch_loop):
        return SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(**epoch_loop)))

    callback.on_train_batch_end(trainer(_should_accumulate=lambda: True), "module", "outputs", "batch", 3)
    assert calls == []
    closing, older = trainer(_should_accumulate=lambda: False), trainer()
    callback.on_train_batch_end(closing, "module", "outputs", "batch", 3)
    callback.on_train_batch_end(older, "module", "outputs", "batch", 4)
    assert calls == [(closing, "module", "outputs", "batch", 3), (older, "module", "outputs", "batch", 4)]


def test_checkpoints_are_written_atomically_unless_the_strategy_brings_its_own_writer(tmp_path):
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from lit_lm.checkpoint import AtomicCheckpointIO

    class OwnIO(TorchCheckpointIO):  # a user's (or a strategy's) own writer: kept
        pass

    trainer = quiet_trainer(tmp_path, max_steps=1)
    ModelCheckpoint(dirpath=tmp_path / "a").setup(trainer, LinearOnTokens(), "fit")
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    own = quiet_trainer(tmp_path, max_steps=1, plugins=[OwnIO()])
    ModelCheckpoint(dirpath=tmp_path / "b").setup(own, LinearOnTokens(), "fit")
    assert type(own.strategy.checkpoint_io) is OwnIO


def test_last_checkpoint_of_a_run_shorter_than_the_save_interval(tmp_path):
    """No periodic save at all (3 steps, every 10): last.ckpt still holds step 3."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=10, save_last=True,
                                 enable_version_counter=False)
    quiet_trainer(tmp_path, max_steps=3, callbacks=[checkpoint], enable_checkpointing=True).fit(LinearOnTokens())
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["last.ckpt"]
    assert final_step(tmp_path / "last.ckpt") == 3


def test_a_last_checkpoint_name_with_metrics_is_filled_in(tmp_path):
    """Lightning's CHECKPOINT_NAME_LAST may name metrics (here the step): the final save fills them in."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_last=True,
                                 enable_version_counter=False)
    checkpoint.CHECKPOINT_NAME_LAST = "last-{step}"
    quiet_trainer(tmp_path, max_steps=7, callbacks=[checkpoint], enable_checkpointing=True).fit(LinearOnTokens())
    assert final_step(tmp_path / "last-step=7.ckpt") == 7
