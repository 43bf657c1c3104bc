"""The shipped recipes: each is a short delta on a base in configs/base and resolves to the settings pinned here; the
precision matrix: every recipe, shrunk to a tiny shape and corpus, trains two optimizer steps through the CLI with
its own callbacks under each precision it can meet (the three ``auto`` can pick, or the one the recipe fixes), forced
on this CPU whatever it has, computes in that precision (checked from inside the fit: tests/precision_probe.py), and
saves a config that holds its whole resolved trainer; and a run resumes from a checkpoint saved under another
precision, and computes in the new one."""

import csv
import functools
import importlib
import inspect
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_lm.cli import LitLMCLI, main, resolved_config
from tests.conftest import ROOT, InterruptAt, write_corpus
from tests.precision_probe import PrecisionProbe, joining

CONFIGS = ROOT / "configs"
# configs/base/ holds what recipes build on, not recipes; configs/finetune/ holds fine-tuning tasks
# (tests/glue), configs/ablations/ lists of variants (tests/test_ablation_files.py), configs/trainer/ strategies
# composed with a recipe (tests/test_trainer_configs.py)
RECIPES = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")
                 if p.parent.name not in ("base", "finetune", "ablations", "trainer"))
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


@functools.cache
def trainer_settings(recipe: str) -> dict:
    """The recipe's whole trainer section, its bases merged in."""
    return resolved_config(CONFIGS / recipe)["trainer"]


def run_folder(recipe: str) -> Path:
    return Path(trainer_settings(recipe)["default_root_dir"])


def arguments(recipe: str, corpus: Path, precision: str, steps: int) -> list[str]:
    # a recipe's fixed accumulation (64 micro-batches a step for GPT-2) shrinks to 2; a batch ramp keeps its own
    fixed_accumulation = trainer_settings(recipe)["accumulate_grad_batches"] > 1
    accumulate = ["--trainer.accumulate_grad_batches", "2"] if fixed_accumulation else []
    return ["--config", str(ROOT / "configs" / recipe), *TINY, *accumulate, "--data.init_args.paths", f"[{corpus}]",
            "--trainer.precision", precision, "--trainer.max_steps", str(steps)]


def fit(recipe: str, corpus: Path, precision: str, steps: int, *extra: str, callbacks: tuple = ()) -> LitLMCLI:
    """``train.py fit`` on the recipe, shrunk; ``callbacks`` join the recipe's (not saved in its config)."""
    with joining(*callbacks):
        return main(["fit", *arguments(recipe, corpus, precision, steps), *extra])


def own_lines(recipe: Path) -> list[str]:
    """A recipe's own YAML: its lines that are neither blank nor comments."""
    return [line for line in recipe.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]


def callback_summary(callback: dict) -> str:
    """``Name(setting=value, ...)`` with the settings that differ from the callback's defaults."""
    module, name = callback["class_path"].rsplit(".", 1)
    defaults = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    changed = [f"{key}={value!r}" for key, value in (callback.get("init_args") or {}).items()
               if key not in defaults or defaults[key].default != value]
    return f"{name}({', '.join(changed)})" if changed else name


# What every recipe resolves to in the stanzas its bases supply, pinned when the recipes became base + delta (their
# resolved configs were identical before and after): trainer settings, then the callbacks after the checkpoint.
CHECKPOINT = ("ModelCheckpoint(save_last=True, save_on_exception=True, every_n_train_steps={}, "
              "enable_version_counter=False)")
MONITORS = ["ThroughputMFU", "StopOnNonFiniteLoss", "LossSummary"]
LAPTOP = dict(precision="auto", accumulate_grad_batches=1, gradient_clip_val=None, limit_val_batches=16,
              log_every_n_steps=5, checkpoint_every=50)
DAY = dict(precision="auto", max_time="01:00:00:00", gradient_clip_val=1.0, val_check_interval=2000,
           limit_val_batches=50, log_every_n_steps=50, checkpoint_every=2000)
CRAMMING = ["BatchSizeRamp(target_batch_size=128)", "OneCycleLR(warmup_fraction=0.75, initial_lr_ratio=0.25)"]
GPT3_DECAY = "OneCycleLR(warmup_fraction=0.01, final_lr_ratio=0.1)"
GPT2_SAMPLES = "TextSamples(every_n_steps=2000, prompts=['', 'The meaning of'], max_new_tokens=64)"
PINNED = {
    "quickstart.yaml": ({**LAPTOP, "max_time": "00:00:04:30", "val_check_interval": 50, "limit_val_batches": 8},
                        ["OneCycleLR(warmup_fraction=0.1)", *MONITORS]),
    "quickstart-decoder.yaml": ({**LAPTOP, "max_time": "00:00:04:00", "val_check_interval": 50, "limit_val_batches": 8},
                                ["OneCycleLR(warmup_fraction=0.1)", *MONITORS,
                                 "TextSamples(every_n_steps=50, prompts=['', 'The list'])"]),
    "recipes/crammed-bert.yaml": ({**LAPTOP, "max_time": "00:00:10:00", "gradient_clip_val": 0.5,
                                   "val_check_interval": 200}, [*CRAMMING, *MONITORS]),
    "recipes/crammed-deberta.yaml": ({**LAPTOP, "max_time": "00:00:10:00", "gradient_clip_val": 0.5,
                                      "val_check_interval": 200}, [*CRAMMING, *MONITORS]),  # crammed-bert's, whole
    "recipes/crammed-electra.yaml": ({**LAPTOP, "max_time": "00:00:10:00", "gradient_clip_val": 0.5,
                                      "val_check_interval": 200}, [*CRAMMING, *MONITORS]),  # crammed-bert's, whole
    "recipes/crammed-gpt.yaml": ({**LAPTOP, "max_time": "00:00:10:00", "gradient_clip_val": 0.5,
                                  "val_check_interval": 50},
                                 [*CRAMMING, *MONITORS, "TextSamples(every_n_steps=100, prompts=['', 'The list'])"]),
    "recipes/original-bert.yaml": ({**LAPTOP, "precision": "32-true", "max_time": "00:00:10:00",
                                    "accumulate_grad_batches": 8, "gradient_clip_val": 1.0, "val_check_interval": 200},
                                   ["OneCycleLR(warmup_fraction=0.01)", *MONITORS]),
    "encoder/bert-base.yaml": ({**DAY, "accumulate_grad_batches": 8},
                               ["OneCycleLR(warmup_fraction=0.01)", "LossSummary"]),
    "encoder/roberta-base.yaml": ({**DAY, "accumulate_grad_batches": 16},
                                  ["OneCycleLR(warmup_fraction=0.048)", "LossSummary"]),
    "encoder/deberta-v3-base.yaml": ({**DAY, "accumulate_grad_batches": 8},
                                     ["OneCycleLR(warmup_fraction=0.01)", "LossSummary"]),
    "decoder/gpt2-small.yaml": ({**DAY, "precision": "bf16-mixed", "accumulate_grad_batches": 64},
                                [GPT3_DECAY, *MONITORS, GPT2_SAMPLES]),
    "decoder/primer.yaml": ({**DAY, "precision": "bf16-mixed", "accumulate_grad_batches": 64},
                            [GPT3_DECAY, *MONITORS, GPT2_SAMPLES]),
}


def test_every_recipe_is_pinned():
    assert sorted(PINNED) == RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_recipe_is_a_short_delta_on_a_base(recipe):
    """A recipe names its base first and has at most 40 lines of its own: the shared seed, logger and checkpoint live
    once, in configs/base."""
    lines = own_lines(CONFIGS / recipe)
    assert len(lines) <= 40, f"{recipe}: {len(lines)} lines of its own"
    assert lines[0].startswith("base: ")
    assert not [line for line in lines if any(shared in line for shared in ("seed_everything", "Logger", "Checkpoint"))]


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_recipe_resolves_to_its_pinned_trainer_and_callbacks(recipe):
    settings, callbacks = PINNED[recipe]
    settings = dict(settings)
    checkpoint_every = settings.pop("checkpoint_every")
    config = resolved_config(CONFIGS / recipe)
    trainer = config["trainer"]
    assert config["seed_everything"] == 0
    assert {key: trainer[key] for key in settings} == settings
    assert (trainer["accelerator"], trainer["devices"], trainer["max_epochs"]) == ("auto", 1, 1)
    run = f"runs/{Path(recipe).stem}"  # runs/<recipe>/logs/version_N
    assert trainer["default_root_dir"] == run
    # CSV logs in <run>/logs/version_N, then wandb; neither has a folder of its own: both write into default_root_dir
    assert [logger["class_path"] for logger in trainer["logger"]] == ["lit_lm.loggers.CSVLogger",
                                                                      "lightning.pytorch.loggers.WandbLogger"]
    csv_logger, wandb_logger = (logger["init_args"] for logger in trainer["logger"])
    assert (csv_logger["save_dir"], csv_logger["name"]) == (None, "logs")
    assert (wandb_logger["save_dir"], wandb_logger["project"], wandb_logger["log_model"]) == (".", "lit-lm", False)
    assert [callback_summary(c) for c in trainer["callbacks"]] == [CHECKPOINT.format(checkpoint_every), *callbacks]


def train_losses(version: Path) -> list[tuple[int, float]]:
    with open(version / "metrics.csv") as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


# every recipe under each precision `auto` can pick (DESIGN.md): also the recipes that fix one, whose users override it
# (gpt2-small's own comment: --trainer.precision 32-true on a CPU without bf16 units): 12 x 3 = 36 fits
MATRIX = [(recipe, precision) for recipe in RECIPES for precision in PRECISIONS]


@pytest.mark.slow
@pytest.mark.parametrize("recipe, precision", MATRIX)
def test_every_recipe_trains_under_every_precision(recipe, precision, tiny_corpus):
    """Two optimizer steps through train.py with the recipe's own callbacks, forced to ``precision`` whatever this
    CPU has; a probe inside the fit checks that the forward ran in that precision's dtype (autocast on, in bf16 or
    fp16, for the mixed ones; off, in fp32, for 32-true) and that under 16-mixed the fp16 gradient scaler scaled the
    loss handed to backward and unscaled the gradients before the optimizer saw them (tests/precision_probe.py)."""
    probe = PrecisionProbe()
    cli = fit(recipe, tiny_corpus, precision, 2, callbacks=[probe])
    assert cli.trainer.precision == precision and cli.trainer.global_step == 2
    probe.check(cli.trainer, precision)
    version = run_folder(recipe) / "logs" / "version_0"
    saved = yaml.safe_load((version / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == precision
    assert saved["trainer"]["callbacks"] == trainer_settings(recipe)["callbacks"] and "base" not in saved  # whole
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
    """A run interrupted at step 2 goes on to step 4 under another precision, and computes in it: a probe in each
    part checks its forward's dtype and the fp16 scaler where there is one (16-mixed resumed from bf16-mixed, whose
    checkpoint holds no scaler state, starts a scaler of its own; 32-true resumed from 16-mixed has none)."""
    before, after = PrecisionProbe(), PrecisionProbe()
    interrupted = LitLMCLI(args=arguments(recipe, larger_corpus, first, 4), run=False)
    interrupted.trainer.callbacks += [before, InterruptAt(step=2)]
    with pytest.raises(SystemExit):  # Ctrl-C at step 2: the recipe's checkpoint callback saves last.ckpt
        interrupted.trainer.fit(interrupted.model, datamodule=interrupted.datamodule)
    before.check(interrupted.trainer, first)
    resumed = fit(recipe, larger_corpus, second, 4, "--ckpt_path", "last", callbacks=[after])
    assert resumed.trainer.precision == second and resumed.trainer.global_step == 4
    after.check(resumed.trainer, second)
    logs = run_folder(recipe) / "logs"
    steps = [step for step, _ in train_losses(logs / "version_1")]
    assert steps and min(steps) >= 2  # it went on from the first run's step 2, in a version folder of its own
    assert torch.load(logs / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert torch.load(logs / "version_1" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
