"""The two BERT recipes end to end through the CLI: precision auto, the batch ramp, the schedules, the budget, resume."""

import csv
import logging
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from lit_lm.callbacks import BatchSizeRamp
from lit_lm.cli import LitLMCLI, main
from tests.callbacks.helpers import FakeClock
from tests.conftest import ROOT, InterruptAt, fake_cpu, write_corpus

RECIPES = ROOT / "configs" / "recipes"
TINY = ["--model.init_args.config.hidden_size", "32", "--model.init_args.config.num_layers", "1",
        "--model.init_args.config.num_heads", "2", "--model.init_args.config.intermediate_size", "64",
        "--data.init_args.tokenizer.vocab_size", "300", "--data.init_args.seq_length", "32",
        "--data.init_args.batch_size", "8", "--data.init_args.split", "paragraph",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "2",
        "--trainer.val_check_interval", "8"]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_files=12, paragraphs=40)


def metrics(run: Path) -> list[dict]:
    rows = []
    for file in sorted(run.glob("logs/version_*/metrics.csv")):
        with open(file) as f:
            rows += list(csv.DictReader(f))
    return rows


def metrics_of(version: Path) -> list[dict]:
    with open(version / "metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.slow
def test_crammed_recipe_ramps_the_batch_on_its_schedule_in_auto_precision(big_corpus, caplog, monkeypatch):
    fake_cpu(monkeypatch, fast_bf16=False)  # whatever this machine has (tests/test_precision.py fakes both kinds)
    caplog.set_level(logging.INFO)
    cli = main(["fit", "--config", str(RECIPES / "crammed-bert.yaml"), *TINY,
                "--data.init_args.paths", f"[{big_corpus}]", "--trainer.max_steps", "8"])
    assert "precision: auto -> 32-true" in caplog.text  # a CPU without fast bf16, and the run says so
    assert cli.trainer.precision == "32-true"
    assert cli.trainer.optimizers[0].defaults["fused"]  # fused AdamW where torch has it (here: CPU)
    run = Path("runs/crammed-bert")
    saved = yaml.safe_load(next(run.glob("logs/version_*/config.yaml")).read_text())
    assert saved["trainer"]["precision"] == "32-true"  # the saved config records what ran
    rows = metrics(run)
    sizes = column(rows, "train/batch_size")
    assert sizes == sorted(sizes) and sizes[0] == 8 and sizes[-1] > 32  # micro-batch 8 growing towards 128
    tokens = column(rows, "train/tokens_seen")
    assert tokens == sorted(tokens) and tokens[-1] > 0
    assert column(rows, "perf/tokens_per_sec") and column(rows, "perf/mfu")
    lrs = column(rows, "train/lr")
    assert lrs[0] == pytest.approx(0.25e-3, rel=0.05) and max(lrs) > lrs[0]  # cramming's triangle starts at 25%
    assert column(rows, "val/loss")


@pytest.mark.slow
def test_original_recipe_keeps_a_fixed_batch_and_bert_schedule(big_corpus):
    cli = main(["fit", "--config", str(RECIPES / "original-bert.yaml"), *TINY,
                "--data.init_args.paths", f"[{big_corpus}]", "--trainer.max_steps", "4"])
    assert cli.trainer.accumulate_grad_batches == 8 and cli.trainer.global_step == 4
    assert cli.model.config.norm_placement == "post" and cli.model.hparams.mask_rate == 0.15
    rows = metrics(Path("runs/original-bert"))
    assert not column(rows, "train/batch_size")  # no ramp
    assert column(rows, "train/tokens_seen")[-1] == pytest.approx(4 * 8 * 8 * 32, rel=0.05)  # packed: few pads



class Tick(Callback):
    """Moves the budget's fake clock one second per training micro-batch, and counts them."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.batches = clock, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.now += 1.0
        self.batches += 1


class StopAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.mark.slow
def test_an_interrupted_time_budget_run_resumes_its_clock_ramp_and_token_count(big_corpus, monkeypatch):
    """Interrupted at step 4 (Ctrl-C), resumed with a larger step limit (6 -> 60) and stopped at step 6. The budget runs
    on a fake clock, one second per micro-batch, so every elapsed time is exact. With the larger limit the
    schedule's target batch after the resume is below the factor the first run had reached; the factor never shrinks,
    so the resumed run keeps the checkpoint's factor, which shows it was restored (one restarted at 1 would follow
    the lower target)."""
    clock = FakeClock(monkeypatch)
    args = ["--config", str(RECIPES / "crammed-bert.yaml"), *TINY, "--data.init_args.paths", f"[{big_corpus}]",
            "--trainer.max_time", "00:00:10:00", "--trainer.limit_val_batches", "0"]
    cli = LitLMCLI(args=[*args, "--trainer.max_steps", "6"], run=False)
    tick = Tick(clock)
    cli.trainer.callbacks += [InterruptAt(step=4), tick]
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    path = "runs/crammed-bert/logs/version_0/checkpoints/last.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    first = checkpoint["callbacks"]
    assert first["Timer"]["time_elapsed"]["train"] == tick.batches == 8  # 1 + 1 + 2 + 4 micro-batches, 1 s each
    # micro-batch 8 (step 4, 4/6 of the steps: the target 16) had taken the factor 8 when Ctrl-C came
    reached = first["BatchSizeRamp"]["accumulation"]
    assert reached == 8
    # as if the run had used 1 of its 10 minutes: a clock restarted from 0 would read only the resumed run's seconds
    first["Timer"]["time_elapsed"]["train"] = elapsed = 60.0
    torch.save(checkpoint, path)

    clock.now = 0.0  # a new process: its clock means nothing, only the checkpoint's elapsed time counts
    resumed = LitLMCLI(args=[*args, "--trainer.max_steps", "60"], run=False)
    tick = Tick(clock)
    resumed.trainer.callbacks += [tick, StopAtStep(6)]
    ramp = next(cb for cb in resumed.trainer.callbacks if isinstance(cb, BatchSizeRamp))
    resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=path)
    assert resumed.trainer.global_step == 6
    # the schedule's own target over the resumed steps: progress max(60..76 s / 600 s, 4..6 / 60 steps) <= 0.127, a
    # ramp over 0.6: at most 1 + floor(15 * 0.127 / 0.6) = 4, below the factor reached
    assert max(ramp.target_accumulation(max(s / 600, 6 / 60)) for s in range(60, 77)) == 4 < reached
    assert tick.batches == 2 * reached  # steps 5 and 6 at the restored factor
    timer = next(cb for cb in resumed.trainer.callbacks if type(cb).__name__ == "Timer")
    assert timer.time_elapsed() == elapsed + tick.batches  # the clock went on from the checkpoint's elapsed time
    sizes = column(metrics_of(Path("runs/crammed-bert/logs/version_1")), "train/batch_size")
    assert sizes and set(sizes) == {8.0 * reached}  # 8 rows x the restored factor, from the first resumed step on
    second = torch.load("runs/crammed-bert/logs/version_1/checkpoints/last.ckpt", weights_only=False)["callbacks"]
    assert second["BatchSizeRamp"]["accumulation"] == reached
    assert second["ThroughputMFU"]["tokens_seen"] > first["ThroughputMFU"]["tokens_seen"] > 0
