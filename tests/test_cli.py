"""The command line end to end: recipes parse, a few steps train, runs resume, configs are saved."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml


from lit_lm.cli import LitLMCLI, main, resolved_config, run
from lit_lm.recipe_bases import RecipeError, with_base_configs
from tests.conftest import ROOT, InterruptAt

# configs/base/ holds what recipes build on, not recipes; configs/finetune/ holds fine-tuning tasks
# (tests/glue), configs/ablations/ lists of variants (tests/test_ablation_files.py), configs/trainer/ strategies
# composed with a recipe (tests/test_trainer_configs.py)
RECIPES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")
                 if p.parent.name not in ("base", "finetune", "ablations", "trainer"))
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY_MODEL = [
    "--model.init_args.config.hidden_size", "32", "--model.init_args.config.num_layers", "1",
    "--model.init_args.config.num_heads", "2", "--model.init_args.config.intermediate_size", "64",
    "--data.init_args.tokenizer.vocab_size", "300", "--data.init_args.seq_length", "32",
    "--data.init_args.batch_size", "8",
]


QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
RUN = Path("runs/quickstart")  # where the quickstart recipe writes, relative to the working directory


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Run each test in its own folder, so the recipe's relative run folder lands there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])  # in-process CLI calls take their arguments from args= alone


def checkpoints(version: int) -> Path:
    """Each run checkpoints into its own logger version folder."""
    return RUN / "logs" / f"version_{version}" / "checkpoints"


def metrics(version: int | None = None) -> list[dict]:
    rows = []
    pattern = f"version_{version}" if version is not None else "version_*"
    for file in sorted((RUN / "logs").glob(f"{pattern}/metrics.csv")):
        with open(file) as f:
            rows += list(csv.DictReader(f))
    return rows


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_shipped_recipe_parses_and_prints_a_complete_config(recipe, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(ROOT / recipe), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {"trainer", "model", "data"} <= printed.keys()
    assert printed["model"]["class_path"].startswith("lit_lm.")


def test_config_is_preceded_by_the_bases_it_builds_on_bases_of_bases_first():
    base = ROOT / "configs" / "base"
    primer = str(ROOT / "configs" / "decoder" / "primer.yaml")
    assert with_base_configs(["fit", "--config", primer, "--trainer.max_steps", "3"]) == [
        "fit", "--config", str(base / "trainer.yaml"), "--config", str(base / "gpu-day.yaml"), "--config", primer,
        "--trainer.max_steps", "3"]
    assert with_base_configs([f"--config={primer}"])[-2:] == [str(base / "gpu-day.yaml"), f"--config={primer}"]
    assert with_base_configs(["--config", "{trainer: {max_steps: 3}}"]) == ["--config", "{trainer: {max_steps: 3}}"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_recipe_merges_over_its_bases_and_appends_to_their_callbacks(tmp_path):
    write(tmp_path / "base" / "a.yaml", """
trainer:
  max_steps: 7
  log_every_n_steps: 3
  logger: {class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: runs/a, name: logs}}
  callbacks: [{class_path: lit_lm.callbacks.LossSummary}]
""")
    write(tmp_path / "base" / "b.yaml", "base: a.yaml\ntrainer: {log_every_n_steps: 4}\n")
    recipe = write(tmp_path / "recipes" / "r.yaml", """
base: [../base/b.yaml, ../base/a.yaml]  # a.yaml only once, before b.yaml
trainer:
  max_steps: 9
  logger: {init_args: {save_dir: runs/r}}
  callbacks+: [{class_path: lit_lm.callbacks.ThroughputMFU}]
model: {class_path: lit_lm.modules.MaskedLMModule}
data: {class_path: lit_lm.data.PretrainingDataModule}
""")
    trainer = resolved_config(recipe)["trainer"]
    assert (trainer["max_steps"], trainer["log_every_n_steps"]) == (9, 4)  # the recipe over b.yaml over a.yaml
    assert trainer["logger"]["init_args"]["save_dir"] == "runs/r" and trainer["logger"]["init_args"]["name"] == "logs"
    assert [c["class_path"] for c in trainer["callbacks"]] == ["lit_lm.callbacks.LossSummary",
                                                               "lit_lm.callbacks.ThroughputMFU"]


def test_a_missing_or_circular_base_is_one_clear_error(tmp_path, capsys, monkeypatch):
    missing = write(tmp_path / "missing.yaml", "base: nowhere.yaml\n")
    with pytest.raises(RecipeError, match="base nowhere.yaml is not a file"):
        main(["fit", "--config", str(missing)])
    write(tmp_path / "one.yaml", "base: two.yaml\n")
    write(tmp_path / "two.yaml", "base: one.yaml\n")
    monkeypatch.setattr(sys, "argv", ["train.py", "fit", "--config", str(tmp_path / "one.yaml")])
    with pytest.raises(SystemExit) as exit_:
        run()
    assert exit_.value.code == 2
    assert "builds on" in capsys.readouterr().err


@pytest.mark.slow
def test_a_few_steps_through_train_py_save_config_metrics_and_a_checkpoint(corpus, tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), "fit", "--config", QUICKSTART, *QUIET,
           *TINY_MODEL, "--data.init_args.paths", f"[{corpus}]", "--data.init_args.split", "paragraph",
           "--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = yaml.safe_load((RUN / "logs" / "version_0" / "config.yaml").read_text())
    assert saved["data"]["init_args"]["paths"] == [str(corpus)]
    assert saved["model"]["init_args"]["config"]["hidden_size"] == 32
    # linked values are derived again on every run, so the config leaves them out; the checkpoint records them
    checkpoint = torch.load(checkpoints(0) / "last.ckpt", weights_only=False)
    assert checkpoint["hyper_parameters"]["config"]["vocab_size"] <= 300
    rows = metrics()
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/loss") for r in rows)
    assert any(r.get("val/mlm_acc") for r in rows)


@pytest.mark.slow
def test_vocab_size_and_special_ids_flow_from_the_tokenizer(corpus, tmp_path):
    cli = main(["fit", "--config", QUICKSTART, *QUIET, *TINY_MODEL,
                "--data.init_args.paths", f"[{corpus}]", "--data.init_args.split", "paragraph",
                "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"])
    assert cli.model.config.vocab_size == cli.datamodule.vocab_size
    assert cli.model.hparams.mask_token_id == cli.datamodule.tokenizer.token_to_id("[MASK]")
    assert cli.model.hparams.special_token_ids == cli.datamodule.special_token_ids
    assert cli.model.hparams.seq_length == 32



@pytest.mark.slow
def test_an_interrupted_run_resumes_from_last_where_it_stopped(corpus, tmp_path):
    common = ["--config", QUICKSTART, *QUIET, *TINY_MODEL,
              "--data.init_args.paths", f"[{corpus}]", "--data.init_args.split", "paragraph",
              "--trainer.val_check_interval", "4", "--trainer.log_every_n_steps", "1", "--trainer.max_steps", "10"]
    cli = LitLMCLI(args=common, run=False)  # without a subcommand: build everything, then fit by hand
    cli.trainer.callbacks.append(InterruptAt(step=6))
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    interrupted = torch.load(checkpoints(0) / "last.ckpt", weights_only=False)  # saved on the interruption
    assert interrupted["global_step"] == 6
    resumed = main(["fit", *common, "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 10
    second_run = [int(r["step"]) for r in metrics(version=1) if r.get("train/loss")]
    assert len(second_run) == 4 and min(second_run) >= 6  # only the 4 steps that were left
    assert torch.load(checkpoints(0) / "last.ckpt", weights_only=False)["global_step"] == 6  # left as it was
    assert torch.load(checkpoints(1) / "last.ckpt", weights_only=False)["global_step"] == 10


@pytest.mark.slow
@pytest.mark.xdist_group("embedded-corpus")  # one worker: the store tests/data/test_prepare_cli.py builds, reused
def test_quickstart_loss_falls_on_the_embedded_corpus(tmp_path):
    """The quickstart recipe as shipped (default corpus, schedule), with a smaller model and fewer steps."""
    cli = main(["fit", "--config", QUICKSTART, *QUIET,
                "--model.init_args.config.hidden_size", "64", "--model.init_args.config.num_layers", "2",
                "--model.init_args.config.intermediate_size", "256", "--data.init_args.tokenizer.vocab_size", "2048",
                "--trainer.precision", "32-true",  # the same arithmetic on every CPU (tests/test_recipes.py: the rest)
                "--trainer.max_steps", "80", "--trainer.max_time", "null",  # steps, not this machine's speed
                "--trainer.val_check_interval", "40"])
    summary = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "LossSummary").summary()
    assert summary["steps"] == 80
    assert summary["last_tenth"] < summary["first_tenth"] - 1.0, summary


@pytest.mark.slow
def test_wandb_runs_do_not_clash_over_the_saved_config(corpus, tmp_path, wandb_offline):
    pytest.importorskip("wandb")
    args = ["fit", "--config", QUICKSTART, *TINY_MODEL,
            "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.project", "lit-lm-test",
            "--data.init_args.paths", f"[{corpus}]", "--data.init_args.split", "paragraph",
            "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "2",
            "--trainer.enable_progress_bar", "false"]
    for _ in range(2):
        main(args)  # each run of train.py ends its wandb run, so the second starts its own
    configs = sorted((tmp_path / "wandb").glob("offline-run-*/files/config.yaml"))
    assert len(configs) == 2
    assert not (tmp_path / "config.yaml").exists()


def test_wandb_without_credentials_falls_back_to_offline(corpus, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    LitLMCLI(args=["--config", QUICKSTART, *TINY_MODEL, "--data.init_args.paths", f"[{corpus}]",
                   "--data.init_args.split", "paragraph", "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
                   "--trainer.logger.init_args.save_dir", str(tmp_path)], run=False)
    assert os.environ["WANDB_MODE"] == "offline"
