"""AttentionDiagnostics in real quickstart runs: scores in metrics.csv, heatmaps as PNG files and as wandb media
(offline), and training that is bitwise the same as without it."""

import csv
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import wandb

from lit_lm.callbacks import AttentionDiagnostics
from lit_lm.cli import main
from lit_lm.models import EncoderForMaskedLM
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


# ---- without train.py: when it probes, what a probe logs, and where the heatmaps go ----
class RecordingLogger:
    def __init__(self, log_dir=None) -> None:
        if log_dir is not None:
            self.log_dir = str(log_dir)
        self.logged, self.saves = [], 0

    def log_metrics(self, metrics, step):
        self.logged.append((step, dict(metrics)))

    def save(self):
        self.saves += 1


def recording_probe(callback: AttentionDiagnostics) -> list:
    """Replaces ``callback.probe`` by one that records (step, module) and, as the real one, marks the step."""
    calls = []

    def probe(trainer, pl_module):
        callback._last_step = trainer.global_step
        calls.append((trainer.global_step, pl_module))

    callback.probe = probe
    return calls


def test_it_probes_every_n_steps_once_per_step_and_at_the_end():
    callback = AttentionDiagnostics(every_n_steps=2)
    calls = recording_probe(callback)
    for step in (0, 1, 2, 2, 3, 4):  # step 0 never; step 2 once, however many micro-batches end there
        callback.on_train_batch_end(SimpleNamespace(global_step=step), "module", None, None, 0)
    assert calls == [(2, "module"), (4, "module")]
    callback.on_train_end(SimpleNamespace(global_step=4), "module")  # just probed
    callback.on_train_end(SimpleNamespace(global_step=5), "module")
    assert calls[2:] == [(5, "module")]
    every_step = AttentionDiagnostics(every_n_steps=1)
    calls = recording_probe(every_step)
    for step in (0, 1, 1, 2):
        every_step.on_train_batch_end(SimpleNamespace(global_step=step), "module", None, None, 0)
    every_step.on_train_end(SimpleNamespace(global_step=0), "module")  # nothing trained: nothing to show
    assert calls == [(1, "module"), (2, "module")]
    one_step = AttentionDiagnostics(every_n_steps=10)
    calls = recording_probe(one_step)
    one_step.on_train_end(SimpleNamespace(global_step=1), "module")  # a run of one step ends with a probe
    assert calls == [(1, "module")]
    default = AttentionDiagnostics()
    calls = recording_probe(default)
    for step in (499, 500, 999, 1000):
        default.on_train_batch_end(SimpleNamespace(global_step=step), "module", None, None, 0)
    assert [step for step, _ in calls] == [500, 1000]


def test_a_datamodule_with_a_tokenizer_is_accepted():
    trainer = SimpleNamespace(datamodule=SimpleNamespace(tokenizer="a tokenizer"))
    AttentionDiagnostics().on_fit_start(trainer, None)
    with pytest.raises(ValueError, match=r"AttentionDiagnostics needs a datamodule with a tokenizer "
                                         r"\(lit_lm.data.PretrainingDataModule\)"):
        AttentionDiagnostics().on_fit_start(SimpleNamespace(datamodule=None), None)


def test_a_threshold_of_one_is_allowed():
    assert AttentionDiagnostics(threshold=1.0).threshold == 1.0


def tiny_encoder(**switches):
    from tests.models.helpers import tiny

    return EncoderForMaskedLM(tiny(vocab_size=120, max_position_embeddings=64, **switches)).eval()


def probe_run(bert_tokenizer, callback, model, step=3):
    logger = RecordingLogger()
    trainer = SimpleNamespace(global_step=step, loggers=[logger], datamodule=SimpleNamespace(tokenizer=bert_tokenizer))
    callback.probe(trainer, SimpleNamespace(model=model))
    return logger


def test_a_probe_logs_each_layers_column_score_and_their_mean_at_its_step(bert_tokenizer):
    """A column value is a mean over queries of a share of attention, in (0, 1]: every head reaches a threshold of
    1e-6, so every layer scores 1; no head of a random model puts all of every query's attention on one key, so none
    reaches 1.0 and every layer scores 0."""
    model = tiny_encoder()
    low = probe_run(bert_tokenizer, AttentionDiagnostics(threshold=1e-6), model)
    assert low.logged == [(3, {"attention/column_score/layer_0": 1.0, "attention/column_score/layer_1": 1.0,
                               "attention/column_score": 1.0})]  # leading_space is off by default
    assert low.saves == 1
    high = probe_run(bert_tokenizer, AttentionDiagnostics(threshold=1.0, leading_space=True), model, step=4)
    [(step, metrics)] = high.logged
    assert step == 4 and set(metrics.values()) == {0.0}
    assert sorted(metrics) == sorted(f"attention/column_score{s}{layer}" for s in ("", "_spaced")
                                     for layer in ("", "/layer_0", "/layer_1"))


def test_a_model_without_attention_weights_is_reported_once(bert_tokenizer):
    model = tiny_encoder(token_mixer="fourier")
    callback = AttentionDiagnostics()
    with pytest.warns(UserWarning, match=r"AttentionDiagnostics: blocks \[0, 1\] have no attention weights"):
        logger = probe_run(bert_tokenizer, callback, model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second probe says nothing
        probe_run(bert_tokenizer, callback, model, step=4)
    assert logger.logged == []


class RecordingPlot:
    """Stands for lit_lm.diagnostics.attention.plot_attention: keeps each call and draws a blank 2 x 1 inch figure."""

    def __init__(self, monkeypatch) -> None:
        self.calls = []
        monkeypatch.setattr("lit_lm.callbacks.attention.plot_attention", self)

    def __call__(self, maps, tokens, layers=None, title=None):
        from matplotlib.figure import Figure

        self.calls.append((maps.clone(), tokens, layers, title))
        return Figure(figsize=(2, 1))


def wandb_logger():
    from lightning.pytorch.loggers import WandbLogger

    class FakeWandb(WandbLogger):  # a WandbLogger to isinstance, without wandb behind it
        def __init__(self) -> None:
            self.images = []

        def log_image(self, key, images, step=None, **kwargs):
            self.images.append(dict(key=key, images=images, step=step, **kwargs))

    return FakeWandb()


def images_of(maps, suffix=""):
    title = "step 4" + (", leading space" if suffix else "")
    return [(suffix, title, ["[CLS]", "a", "[SEP]"], maps, [0, 2], torch.tensor([0.25, 0.75]))]


def test_heatmaps_go_to_wandb_one_image_per_layer_with_its_score(monkeypatch):
    plot = RecordingPlot(monkeypatch)
    maps = torch.rand(2, 2, 3, 3)  # blocks 0 and 2 (block 1 has no attention weights)
    wandb = wandb_logger()
    AttentionDiagnostics._log_images(SimpleNamespace(loggers=[wandb]), images_of(maps, "_spaced"), 4)
    [logged] = wandb.images
    assert logged["key"] == "attention/maps_spaced" and logged["step"] == 4
    assert logged["caption"] == ["layer 0: column score 0.25", "layer 2: column score 0.75"]
    assert [image.size for image in logged["images"]] == [(200, 100), (200, 100)]  # 2 x 1 inches at 100 dpi
    assert len(plot.calls) == 2
    for (drawn, tokens, layers, title), row, layer in zip(plot.calls, (0, 1), (0, 2)):
        assert torch.equal(drawn, maps[row : row + 1]) and layers == [layer]
        assert tokens == ["[CLS]", "a", "[SEP]"] and title == "step 4, leading space"


def test_heatmaps_go_to_each_run_folder_once_as_one_png_of_all_layers(monkeypatch, tmp_path):
    plot = RecordingPlot(monkeypatch)
    maps = torch.rand(2, 2, 3, 3)
    run = tmp_path / "runs" / "version_0"  # not there yet
    loggers = [RecordingLogger(run), RecordingLogger(run), RecordingLogger(), SimpleNamespace()]  # two share a folder
    trainer = SimpleNamespace(loggers=loggers)
    AttentionDiagnostics._log_images(trainer, images_of(maps), 4)
    AttentionDiagnostics._log_images(trainer, images_of(maps), 6)  # the folder exists by now
    assert sorted(p.name for p in (run / "attention").iterdir()) == ["step_4.png", "step_6.png"]
    assert len(plot.calls) == 2  # once per step, not once per logger
    drawn, tokens, layers, title = plot.calls[0]
    assert torch.equal(drawn, maps) and layers == [0, 2] and title == "step 4" and tokens == ["[CLS]", "a", "[SEP]"]
    from PIL import Image

    with Image.open(run / "attention" / "step_4.png") as png:
        assert png.size == (200, 100)  # saved at 100 dpi
