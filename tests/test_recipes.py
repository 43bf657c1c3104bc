"""The precision matrix: every shipped recipe, shrunk to a tiny shape and corpus, trains a few optimizer steps through
the CLI with its own callbacks under each precision ``auto`` can pick, forced on this CPU whatever it has; and a
run resumes from a checkpoint saved under another precision."""

import csv
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_lm.cli import LitLMCLI, main
from tests.conftest import ROOT, InterruptAt, write_corpus

RECIPES = sorted(str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml"))
PRECISIONS = ["32-true", "bf16-mixed", "16-mixed"]
TINY = ["--model.init_args.config.hidden_size", "32", "--model.init_args.config.num_layers", "1",
        "--model.init_args.config.num_heads", "2", "--model.init_args.config.intermediate_size", "64",
        "--data.init_args.tokenizer.vocab_size", "300", "--data.init_args.seq_length", "32",
        "--data.init_args.batch_size", "4", "--data.init_args.split", "paragraph", "--data.init_args.num_workers", "0",
        "--trainer.limit_val_batches", "1",
        "--trainer.val_check_interval", "4", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_files=4, paragraphs=20)


@pytest.fixture(scope="module")
def larger_corpus(tmp_path_factory) -> Path:
    """Enough rows for the crammed batch ramp (up to 32 micro-batches a step) to take four steps in one epoch."""
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_files=12, paragraphs=40)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])


def trainer_settings(recipe: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / recipe).read_text())["trainer"]


def run_folder(recipe: str) -> Path:
    return Path(trainer_settings(recipe)["default_root_dir"])


def arguments(recipe: str, corpus: Path, precision: str, steps: int) -> list[str]:
    # a recipe's fixed accumulation (64 micro-batches a step for GPT-2) shrinks to 2; a batch ramp keeps its own
    fixed_accumulation = "accumulate_grad_batches" in trainer_settings(recipe)
    accumulate = ["--trainer.accumulate_grad_batches", "2"] if fixed_accumulation else []
    return ["--config", str(ROOT / "configs" / recipe), *TINY, *accumulate, "--data.init_args.paths", f"[{corpus}]",
            "--trainer.precision", precision, "--trainer.max_steps", str(steps)]


def fit(recipe: str, corpus: Path, precision: str, steps: int, *extra: str) -> LitLMCLI:
    return main(["fit", *arguments(recipe, corpus, precision, steps), *extra])


def train_losses(version: Path) -> list[tuple[int, float]]:
    with open(version / "metrics.csv") as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_trains_under_every_precision(recipe, precision, tiny_corpus):
    cli = fit(recipe, tiny_corpus, precision, 2)
    assert cli.trainer.precision == precision and cli.trainer.global_step == 2
    version = run_folder(recipe) / "logs" / "version_0"
    assert yaml.safe_load((version / "config.yaml").read_text())["trainer"]["precision"] == precision
    losses = train_losses(version)
    assert losses and all(math.isfinite(loss) for _, loss in losses)
    assert torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("recipe, first, second", [
    ("recipes/crammed-bert.yaml", "bf16-mixed", "16-mixed"),
    ("recipes/crammed-gpt.yaml", "16-mixed", "32-true"),
    ("quickstart.yaml", "32-true", "bf16-mixed"),
])
def test_a_run_resumes_under_another_precision(recipe, first, second, larger_corpus):
    interrupted = LitLMCLI(args=arguments(recipe, larger_corpus, first, 4), run=False)
    interrupted.trainer.callbacks.append(InterruptAt(step=2))
    with pytest.raises(SystemExit):  # Ctrl-C at step 2: the recipe's checkpoint callback saves last.ckpt
        interrupted.trainer.fit(interrupted.model, datamodule=interrupted.datamodule)
    resumed = fit(recipe, larger_corpus, second, 4, "--ckpt_path", "last")
    assert resumed.trainer.precision == second and resumed.trainer.global_step == 4
    logs = run_folder(recipe) / "logs"
    steps = [step for step, _ in train_losses(logs / "version_1")]
    assert steps and min(steps) >= 2  # it went on from the first run's step 2, in a version folder of its own
    assert torch.load(logs / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert torch.load(logs / "version_1" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
