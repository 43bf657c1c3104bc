"""AttentionDiagnostics in real quickstart runs: scores in metrics.csv, heatmaps as PNG files and as wandb media
(offline), and training that is bitwise the same as without it."""

import csv
import sys
from pathlib import Path

import pytest
import torch
import wandb

from lit_lm.callbacks import AttentionDiagnostics
from lit_lm.cli import main
from tests.conftest import ROOT, write_corpus
from tests.test_recipes import TINY

STEPS = 4
# dropout on, so that a probe consuming the training's random numbers would change the weights; no time budget, whose
# clock would move the learning-rate schedule (OneCycleLR's key: auto) and make two runs differ in the last bits
RUN = ["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY, "--model.init_args.config.num_layers", "2",
       "--model.init_args.config.dropout", "0.1", "--model.init_args.config.attention_dropout", "0.1",
       "--trainer.precision", "32-true", "--trainer.max_steps", str(STEPS), "--trainer.max_time", "null"]
WITH_CALLBACK = ["--trainer.callbacks+=lit_lm.callbacks.AttentionDiagnostics",  # the form docs/training.md shows
                 "--trainer.callbacks.init_args.every_n_steps=2", "--trainer.callbacks.init_args.leading_space=true"]


def loggers(wandb_dir: Path) -> list[str]:
    """The CSV logger of the recipe beside an offline wandb logger writing under ``wandb_dir``."""
    return ["--trainer.logger", "[{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: "
            "runs/quickstart, name: logs}}, {class_path: lightning.pytorch.loggers.WandbLogger, init_args: "
            f"{{save_dir: {wandb_dir}, offline: true, project: attention-test}}}}]"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny quickstart runs with CSV and offline wandb loggers, one with the callback (a probe at steps 2 and 4,
    with and without a leading space) and one without: (their folders, their trained weights)."""
    base = tmp_path_factory.mktemp("attention-runs")
    corpus = write_corpus(base / "corpus")
    folders, weights = {}, {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["train.py"])
        patch.setenv("LIT_LM_CACHE", str(base / "cache"))
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        wandb.teardown()  # wandb reads its mode once per process (the suite disables it): read it again
        for name, extra in (("with", WITH_CALLBACK), ("without", [])):
            folder = folders[name] = base / name
            folder.mkdir()
            patch.chdir(folder)
            patch.setenv("WANDB_DIR", str(folder))
            cli = main([*RUN, "--data.init_args.paths", f"[{corpus}]", *loggers(folder), *extra])
            wandb.finish()  # else the next WandbLogger would reuse this run
            assert cli.trainer.global_step == STEPS
            assert any(isinstance(c, AttentionDiagnostics) for c in cli.trainer.callbacks) == (name == "with")
            weights[name] = {k: v.detach().clone() for k, v in cli.model.state_dict().items()}
    wandb.teardown()  # and back to the suite's mode
    return folders, weights


@pytest.mark.slow
def test_scores_land_in_metrics_csv_and_heatmaps_in_the_log_folder(runs):
    version = runs[0]["with"] / "runs" / "quickstart" / "logs" / "version_0"
    pngs = sorted(p.name for p in (version / "attention").glob("*.png"))
    assert pngs == sorted(f"step_{s}{suffix}.png" for s in (2, 4) for suffix in ("", "_spaced"))
    assert all((version / "attention" / name).read_bytes().startswith(b"\x89PNG") for name in pngs)
    with open(version / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("attention/column_score")]
    assert [int(row["step"]) for row in rows] == [2, 4]
    for row in rows:
        for key in ("attention/column_score", "attention/column_score/layer_0", "attention/column_score/layer_1",
                    "attention/column_score_spaced", "attention/column_score_spaced/layer_1"):
            assert 0 <= float(row[key]) <= 1
        layers = [float(row[f"attention/column_score/layer_{i}"]) for i in (0, 1)]
        assert float(row["attention/column_score"]) == pytest.approx(sum(layers) / 2)
    assert not (runs[0]["without"] / "runs" / "quickstart" / "logs" / "version_0" / "attention").exists()


@pytest.mark.slow
def test_heatmaps_are_wandb_media_offline(runs):
    (run,) = (runs[0]["with"] / "wandb").glob("offline-run-*")
    media = sorted(p.name for p in (run / "files" / "media" / "images" / "attention").glob("*.png"))
    # per probe (steps 2 and 4), one image per layer for each text (keys attention/maps, attention/maps_spaced)
    assert len(media) == 2 * 2 * 2, media
    assert len([name for name in media if name.startswith("maps_spaced_")]) == 2 * 2, media
    assert not list((runs[0]["without"] / "wandb").glob("offline-run-*/files/media/images/attention/*.png"))


@pytest.mark.slow
def test_training_is_bitwise_the_same_with_the_callback(runs):
    with_callback, without = runs[1]["with"], runs[1]["without"]
    assert with_callback.keys() == without.keys()
    different = [k for k in without if not torch.equal(with_callback[k], without[k])]
    assert different == []


@pytest.mark.parametrize("kwargs", [dict(every_n_steps=0), dict(text="  "), dict(threshold=0.0),
                                    dict(threshold=1.5)])
def test_bad_settings_are_refused_with_one_error(kwargs):
    with pytest.raises(ValueError, match="AttentionDiagnostics: every_n_steps must be >= 1"):
        AttentionDiagnostics(**kwargs)


def test_a_run_without_a_tokenizer_is_refused_before_training(tmp_path):
    from tests.callbacks.helpers import LinearOnTokens, quiet_trainer

    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=[AttentionDiagnostics(every_n_steps=1)])
    with pytest.raises(ValueError, match="AttentionDiagnostics needs a datamodule with a tokenizer"):
        trainer.fit(LinearOnTokens())
    assert trainer.global_step == 0
