"""The two BERT recipes end to end through the CLI: precision auto, the batch ramp, the schedules, the budget, resume."""

import csv
import logging
import sys
from pathlib import Path

import pytest
import torch
import yaml


from lit_lm.cli import LitLMCLI, main
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


def column(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


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


def test_original_recipe_keeps_a_fixed_batch_and_bert_schedule(big_corpus):
    cli = main(["fit", "--config", str(RECIPES / "original-bert.yaml"), *TINY,
                "--data.init_args.paths", f"[{big_corpus}]", "--trainer.max_steps", "4"])
    assert cli.trainer.accumulate_grad_batches == 8 and cli.trainer.global_step == 4
    assert cli.model.config.norm_placement == "post" and cli.model.hparams.mask_rate == 0.15
    rows = metrics(Path("runs/original-bert"))
    assert not column(rows, "train/batch_size")  # no ramp
    assert column(rows, "train/tokens_seen")[-1] == pytest.approx(4 * 8 * 8 * 32, rel=0.05)  # packed: few pads



def test_an_interrupted_time_budget_run_resumes_its_clock_ramp_and_token_count(big_corpus):
    args = ["--config", str(RECIPES / "crammed-bert.yaml"), *TINY, "--data.init_args.paths", f"[{big_corpus}]",
            "--trainer.max_time", "00:00:10:00", "--trainer.limit_val_batches", "0", "--trainer.max_steps", "6"]
    cli = LitLMCLI(args=args, run=False)
    cli.trainer.callbacks.append(InterruptAt(step=4))
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    path = "runs/crammed-bert/logs/version_0/checkpoints/last.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    first = checkpoint["callbacks"]
    assert first["Timer"]["time_elapsed"]["train"] > 0
    # the run had used 5 of its 10 minutes (more than this test takes): a clock restarted from 0 reads far less
    first["Timer"]["time_elapsed"]["train"] = elapsed = 300.0
    torch.save(checkpoint, path)
    resumed = main(["fit", *args, "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 6
    timer = next(cb for cb in resumed.trainer.callbacks if type(cb).__name__ == "Timer")
    assert elapsed < timer.time_elapsed() < elapsed + 120  # the clock went on from the checkpoint's elapsed time
    second = torch.load("runs/crammed-bert/logs/version_1/checkpoints/last.ckpt", weights_only=False)["callbacks"]
    assert second["BatchSizeRamp"]["accumulation"] >= first["BatchSizeRamp"]["accumulation"] > 1
    assert second["ThroughputMFU"]["tokens_seen"] > first["ThroughputMFU"]["tokens_seen"] > 0
