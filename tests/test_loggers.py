"""A run's loggers: CSV and wandb side by side in the run folder, one of them or none on request, the lines that say
where a run's files and dashboard are, and a resumed run continuing its wandb run (offline, no network)."""

import csv
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lit_lm.cli import LitLMCLI, main
from lit_lm.loggers import CHECKPOINT_KEY, dashboard_line, finish_wandb_run
from tests.conftest import ROOT, InterruptAt
from tests.test_cli import QUICKSTART, QUIET, RUN, TINY_MODEL

wandb = pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Each test runs in its own folder, where the quickstart recipe's relative run folder lands."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])


def tiny(corpus: Path, *more: str) -> list[str]:
    return ["--config", QUICKSTART, *QUIET, *TINY_MODEL, "--data.init_args.paths", f"[{corpus}]",
            "--data.init_args.split", "paragraph", "--trainer.val_check_interval", "2",
            "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1", *more]


def printed_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_a_recipe_logs_to_csv_then_wandb_both_in_its_run_folder(corpus):
    cli = LitLMCLI(args=tiny(corpus), run=False)
    csv_logger, wandb_logger = cli.trainer.loggers
    assert isinstance(csv_logger, CSVLogger) and isinstance(wandb_logger, WandbLogger)
    assert Path(csv_logger.log_dir) == RUN / "logs" / "version_0"  # the layout local tools read
    assert wandb_logger.save_dir == str(RUN) and wandb_logger._project == "lit-lm"
    saved = cli.config["trainer"]["logger"]  # what config.yaml records: the recipe's, no folder of their own
    assert [logger.init_args.save_dir for logger in saved] == [None, "."]


@pytest.mark.parametrize("choice, kinds", [
    (["--trainer.logger=lit_lm.loggers.CSVLogger"], ["lit_lm.loggers.CSVLogger"]),
    (["--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir=elsewhere"],
     ["lightning.pytorch.loggers.csv_logs.CSVLogger"]),
    (["--trainer.logger=lightning.pytorch.loggers.WandbLogger"], ["lightning.pytorch.loggers.wandb.WandbLogger"]),
    (["--trainer.logger=false"], []),
])
def test_a_user_picks_one_logger_or_none(corpus, choice, kinds):
    cli = LitLMCLI(args=tiny(corpus, *choice), run=False)
    assert [f"{type(logger).__module__}.{type(logger).__name__}" for logger in cli.trainer.loggers] == kinds
    if kinds:  # a logger given no save_dir writes into the run folder
        assert cli.trainer.loggers[0].save_dir == ("elsewhere" if "elsewhere" in choice[-1] else str(RUN))


@pytest.mark.slow
def test_without_loggers_a_run_trains_and_says_it_has_no_dashboard(corpus, caplog):
    caplog.set_level(logging.INFO)
    cli = main(["fit", *tiny(corpus, "--trainer.logger=false", "--trainer.max_steps", "2")])
    assert cli.trainer.global_step == 2
    lines = printed_lines(caplog)
    assert f"run: {RUN} (config.yaml, checkpoints/)" in lines
    assert "dashboard: none (trainer.logger has no WandbLogger)" in lines
    assert (RUN / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_tests_run_wandb_disabled_and_nothing_writes_a_wandb_folder(corpus, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    main(["fit", *tiny(corpus, "--trainer.max_steps", "2")])
    assert "dashboard: none (wandb is disabled: WANDB_MODE=disabled)" in printed_lines(caplog)
    assert (RUN / "logs" / "version_0" / "config.yaml").is_file()
    assert not (tmp_path / "wandb").exists() and not (RUN / "wandb").exists() and not (ROOT / "wandb").exists()


def test_prepare_and_print_config_say_nothing_about_a_run(corpus, caplog, capsys):
    caplog.set_level(logging.INFO)
    main(["prepare", *tiny(corpus)])
    with pytest.raises(SystemExit):
        main(["fit", *tiny(corpus), "--print_config"])
    said = printed_lines(caplog) + capsys.readouterr().out.splitlines()
    assert not [line for line in said if line.startswith(("run: ", "dashboard: "))]
    assert not RUN.exists()


class HeldOutScore(Callback):
    """What a held-out score callback does at the end of training: log one last metric to every logger."""

    def on_train_end(self, trainer, pl_module) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({"heldout/loss": 1.25}, step=trainer.global_step)


@pytest.mark.slow
def test_a_resumed_run_continues_its_offline_wandb_run_named_and_grouped(corpus, wandb_offline, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("WANDB_RUN_GROUP", "ablation-1")  # what the ablation runner sets for each variant
    monkeypatch.setenv("WANDB_NAME", "pre-ln")
    common = tiny(corpus, "--trainer.max_steps", "6")
    first = LitLMCLI(args=common, run=False)
    first.trainer.callbacks.append(InterruptAt(step=3))
    with pytest.raises(SystemExit):  # Ctrl-C at step 3: last.ckpt is saved
        first.trainer.fit(first.model, datamodule=first.datamodule)
    run = first.trainer.loggers[1].experiment
    run_id, params = run.id, sum(p.numel() for p in first.model.parameters())
    assert (run.group, run.name, run.offline) == ("ablation-1", "pre-ln", True)
    assert run.summary["params"] == params and run.summary["data_card"]["docs_in"] == 120
    assert torch.load(RUN / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)[
        CHECKPOINT_KEY] == run_id
    lines = printed_lines(caplog)
    folder = RUN / "wandb" / Path(run.dir).parent.name
    assert lines[lines.index(f"run: {RUN / 'logs' / 'version_0'} (config.yaml, metrics.csv, checkpoints/)") + 1] == (
        f"dashboard: wandb offline run {run_id} in {RUN / 'wandb'}; upload with: wandb sync {folder}")
    finish_wandb_run(1)  # the interrupted train.py process ends here

    resumed = LitLMCLI(args=common, run=False)  # train.py fit ... --ckpt_path last
    resumed.trainer.callbacks.append(HeldOutScore())
    resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path="last")
    again = resumed.trainer.loggers[1].experiment
    assert again is not run and again.id == run_id and (again.group, again.name) == ("ablation-1", "pre-ln")
    assert again.summary["heldout/loss"] == 1.25 and again.summary["params"] == params  # the last metric logged
    finish_wandb_run()
    folders = sorted((RUN / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(f"-{run_id}") for f in folders)  # two parts, one wandb run
    assert all((f / f"run-{run_id}.wandb").is_file() for f in folders)
    with open(RUN / "logs" / "version_1" / "metrics.csv") as f:  # and the CSV metrics went on from step 3
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert len(steps) == 3 and min(steps) >= 3  # only the 3 steps that were left
    assert [r["heldout/loss"] for r in rows if r.get("heldout/loss")] == ["1.25"]



def test_the_dashboard_line_names_an_online_run_by_its_url_and_an_offline_one_by_its_folder():
    def logger(**run):
        fake = WandbLogger.__new__(WandbLogger)
        fake._experiment = SimpleNamespace(settings=SimpleNamespace(mode=run.pop("mode")), **run)
        return fake

    online = logger(mode="online", offline=False, name="pre-ln", id="abc123", group="ablation-1",
                    url="https://wandb.ai/me/lit-lm/runs/abc123")
    assert dashboard_line(online) == "dashboard: wandb run pre-ln (abc123, group ablation-1) at " \
                                     "https://wandb.ai/me/lit-lm/runs/abc123"
    offline = logger(mode="offline", offline=True, id="abc123", dir="runs/q/wandb/offline-run-1-abc123/files")
    assert dashboard_line(offline) == ("dashboard: wandb offline run abc123 in runs/q/wandb; upload with: "
                                       "wandb sync runs/q/wandb/offline-run-1-abc123")
