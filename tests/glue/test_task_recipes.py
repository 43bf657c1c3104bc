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
@pytest.mark.slow
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


@pytest.mark.slow
def test_any_task_from_files_and_columns_on_the_command_line(tmp_path, checkpoint, monkeypatch):  # noqa: F811
    """configs/finetune/task.yaml with a three-way NLI-style CSV (quoted commas, string labels), as the README shows."""
    monkeypatch.chdir(tmp_path)
    labels = ["entailment", "neutral", "contradiction"]
    for split, rows in (("train", 24), ("dev", 9)):
        lines = ["id,premise,hypothesis,gold"] + [f'{i},"a cat, small",the {labels[i % 3]} dog,{labels[i % 3]}'
                                                  for i in range(rows)]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    cli = main(["fit", "--config", str(ROOT / "configs" / "finetune" / "task.yaml"),
                "--model.init_args.init_from", str(checkpoint), *QUIET, "--trainer.max_epochs", "1",
                "--data.train_file", "train.csv", "--data.val_file", "dev.csv",
                "--data.text_columns", "[premise, hypothesis]", "--data.label_column", "gold",
                "--data.labels", f"[{', '.join(labels)}]", "--data.batch_size", "8"])
    assert cli.model.hparams.num_labels == 3 and cli.model.hparams.metric == "accuracy"
    assert cli.trainer.global_step == 3 and (tmp_path / "runs" / "finetune" / "task" / "logs" / "version_0").is_dir()
    batch = next(iter(cli.datamodule.val_dataloader()))
    assert batch["labels"].tolist()[:3] == [0, 1, 2]  # ids in the order --data.labels gives
