"""Training through the CLI sees every row once, and ``--ckpt_path last`` continues with the next unseen batch."""

import sys

import pytest
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_lm.cli import LitLMCLI
from tests.conftest import ROOT, InterruptAt

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY = ["--model.init_args.config.hidden_size", "32", "--model.init_args.config.num_layers", "1",
        "--model.init_args.config.num_heads", "2", "--model.init_args.config.intermediate_size", "64",
        "--data.init_args.tokenizer.vocab_size", "300", "--data.init_args.seq_length", "32",
        "--data.init_args.batch_size", "8", "--data.init_args.progress", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "5"]


class RecordRows(Callback):
    """Remembers every row a training step consumed, in order."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, ...]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows += [tuple(r) for r in batch["input_ids"].tolist()]



@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])


def fit(args, *callbacks, ckpt_path=None, checkpoint_every=None) -> RecordRows:
    cli = LitLMCLI(args=["--config", QUICKSTART, *TINY, *args], run=False)
    if checkpoint_every:
        next(cb for cb in cli.trainer.callbacks if isinstance(cb, ModelCheckpoint))._every_n_train_steps = checkpoint_every
    record = RecordRows()
    cli.trainer.callbacks += [*callbacks, record]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return record


def reference_run(data, steps, tmp_path, monkeypatch) -> list:
    """The rows an uninterrupted run trains on, in order (in its own folder: the recipe resumes from its own last)."""
    monkeypatch.chdir(tmp_path / "reference")
    rows = fit([*data, "--trainer.max_steps", str(steps)]).rows
    monkeypatch.chdir(tmp_path)
    assert len(rows) == steps * 8 and len(set(rows)) == len(rows)  # no row twice within the epoch
    return rows


@pytest.mark.slow
def test_a_run_interrupted_mid_epoch_resumes_with_the_next_unseen_rows(corpus, tmp_path, monkeypatch):
    data = ["--data.init_args.paths", f"[{corpus}]", "--data.init_args.split", "paragraph"]
    (tmp_path / "reference").mkdir()
    reference = reference_run(data, 12, tmp_path, monkeypatch)
    with pytest.raises(SystemExit):  # Ctrl-C at step 7: the recipe's ModelCheckpoint saves last.ckpt and exits
        fit([*data, "--trainer.max_steps", "12"], InterruptAt(7))
    resumed = fit([*data, "--trainer.max_steps", "12"], ckpt_path="last").rows
    assert resumed == reference[7 * 8 :]  # the same seed gives the same order: exactly the rows not yet trained on

    hparams = yaml.safe_load(next((tmp_path / "runs" / "quickstart" / "logs").glob("version_*/hparams.yaml")).read_text())
    assert hparams["data_card"]["docs_in"] == 120  # the data card is on the dashboard


@pytest.mark.slow
def test_resuming_from_a_checkpoint_saved_after_a_step_skips_exactly_the_trained_rows(corpus, tmp_path, monkeypatch):
    data = ["--data.init_args.paths", f"[{corpus}]", "--data.init_args.split", "paragraph"]
    (tmp_path / "reference").mkdir()
    reference = reference_run(data, 10, tmp_path, monkeypatch)
    with pytest.raises(SystemExit):  # a periodic checkpoint after step 4, then Ctrl-C at step 6
        fit([*data, "--trainer.max_steps", "10"], InterruptAt(6), checkpoint_every=4)
    step4 = tmp_path / "runs" / "quickstart" / "logs" / "version_0" / "checkpoints" / "epoch=0-step=4.ckpt"
    resumed = fit([*data, "--trainer.max_steps", "10"], ckpt_path=str(step4)).rows
    assert resumed == reference[4 * 8 :]


@pytest.mark.slow
def test_a_resume_under_the_batch_ramp_with_workers_trains_each_row_once(corpus, tmp_path, monkeypatch):
    """Ctrl-C while the batch ramps up (2 DataLoader workers), then ``--ckpt_path last``: the rows trained before and
    after add up to an uninterrupted run's, row for row, though the accumulation window grows after the resume."""
    import torch

    data = ["--data.init_args.paths", f"[{corpus}]", "--data.init_args.split", "paragraph",
            "--data.init_args.num_workers", "2", "--trainer.max_steps", "8", "--trainer.callbacks.OneCycleLR.key=steps",
            "--trainer.callbacks+=lit_lm.callbacks.BatchSizeRamp", "--trainer.callbacks.init_args.target_batch_size=32",
            "--trainer.callbacks.init_args.key=steps", "--trainer.callbacks.init_args.mode=stepped"]
    (tmp_path / "reference").mkdir()
    monkeypatch.chdir(tmp_path / "reference")
    reference = fit(data).rows
    monkeypatch.chdir(tmp_path)
    interrupted = RecordRows()
    with pytest.raises(SystemExit):  # Ctrl-C at step 3, inside the ramp: last.ckpt is written on the way out
        fit(data, InterruptAt(3), interrupted)
    saved = torch.load(next(tmp_path.glob("runs/quickstart/logs/version_0/checkpoints/last.ckpt")), weights_only=False)
    resumed = fit(data, ckpt_path="last").rows
    assert len(reference) == len(set(reference)) > len(interrupted.rows) > 0
    assert interrupted.rows + resumed == reference  # none repeated, none skipped, in the same order
    assert len(interrupted.rows) == saved["PretrainingDataModule"]["batches"] * 8
    # the resume crossed window boundaries where the window grew: 1 micro-batch per step at the checkpoint, then more
    assert saved["callbacks"]["BatchSizeRamp"]["accumulation"] < 4 and len(resumed) > 8 * (8 - 3)
