"""The shipped task recipes (configs/finetune/*.yaml): they resolve to the shared protocol, and each fine-tunes from
a lit-lm checkpoint on its real GLUE files (skipped without ../shared/data)."""

import pytest

from lit_lm.cli import main, resolved_config
from tests.conftest import ROOT, shared_data
from tests.glue.test_suite import QUIET, checkpoint  # noqa: F401  (the fixture)

TASKS = {"sst2": ("accuracy", 2), "cola": ("matthews", 2), "mrpc": ("f1_accuracy", 2)}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_task_recipe_resolves_to_the_shared_protocol(task):
    config = resolved_config(ROOT / "configs" / "finetune" / f"{task}.yaml")
    assert config["trainer"]["max_epochs"] == 5
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert config["model"]["class_path"] == "lit_lm.modules.SequenceClassificationModule"
    assert model["optimizer"]["lr"] == 4.0e-5 and data["batch_size"] == 16 and data["max_length"] == 128
    assert data["metric"] == TASKS[task][0]
    callbacks = [c["class_path"].rsplit(".", 1)[1] for c in config["trainer"]["callbacks"]]
    assert callbacks[:2] == ["ModelCheckpoint", "OneCycleLR"]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_task_recipe_fine_tunes_on_its_real_files(task, tmp_path, checkpoint, monkeypatch):  # noqa: F811
    shared_data("glue")
    monkeypatch.chdir(ROOT)  # the recipes name ../shared/data relative to the project root, as train.py runs
    cli = main(["fit", "--config", str(ROOT / "configs" / "finetune" / f"{task}.yaml"),
                "--model.init_args.init_from", str(checkpoint), *QUIET, "--trainer.max_epochs", "1",
                "--data.init_args.max_train_rows", "32", "--data.init_args.batch_size", "8",
                "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path),
                "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert cli.trainer.global_step == 4
    assert cli.model.hparams.num_labels == TASKS[task][1] and cli.model.hparams.metric == TASKS[task][0]
    assert "val/score" in cli.trainer.callback_metrics
