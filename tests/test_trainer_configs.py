"""The trainer configs under configs/trainer/ (DDP, FSDP, DeepSpeed): each composes with a recipe by a second
--config, changes only the trainer's placement, and builds the strategy it says; DeepSpeed, not installed, stops
with one line naming the install. DDP trains for real on CPU in tests/test_ddp.py; FSDP and DeepSpeed need GPUs."""

import functools
import importlib.util
import sys
from unittest import mock

import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from lit_lm.cli import LitLMCLI, resolved_config, run
from lit_lm.models.layers.block import TransformerBlock
from tests.conftest import ROOT, write_corpus

CRAMMED_BERT = ROOT / "configs" / "recipes" / "crammed-bert.yaml"
TRAINERS = {"ddp.yaml": "DDPStrategy", "fsdp.yaml": "FSDPStrategy", "deepspeed.yaml": "DeepSpeedStrategy"}


@functools.cache
def crammed_bert_alone() -> dict:
    return resolved_config(CRAMMED_BERT)


def trainer_config(name: str) -> str:
    return str(ROOT / "configs" / "trainer" / name)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])


def test_every_trainer_config_is_tested():
    assert sorted(p.name for p in (ROOT / "configs" / "trainer").glob("*.yaml")) == sorted(TRAINERS)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_a_trainer_config_composes_with_a_recipe_and_changes_only_the_placement(name):
    alone = crammed_bert_alone()
    composed = resolved_config(CRAMMED_BERT, "--config", trainer_config(name))
    strategy = composed["trainer"]["strategy"]
    assert strategy["class_path"] == f"lightning.pytorch.strategies.{TRAINERS[name]}"
    assert composed["trainer"]["accelerator"] == "gpu" and composed["trainer"]["devices"] == -1
    changed = {key for key in alone["trainer"] if alone["trainer"][key] != composed["trainer"][key]}
    assert changed == {"strategy", "accelerator", "devices"}
    assert composed["trainer"]["callbacks"] == alone["trainer"]["callbacks"]  # the recipe's own, ramp included
    assert (composed["model"], composed["data"]) == (alone["model"], alone["data"])
    # and the head comment says the limits
    head = [line for line in open(trainer_config(name)) if line.startswith("#")]
    assert any("docs/scale-out.md" in line for line in head) and len(head) >= 8


def data_words(tmp_path) -> list[str]:
    corpus = write_corpus(tmp_path / "corpus", n_files=2, paragraphs=10)
    return ["--data.init_args.paths", f"[{corpus}]", "--data.init_args.tokenizer.vocab_size", "200",
            "--data.init_args.split", "paragraph", "--data.init_args.progress", "false",
            "--data.init_args.num_proc", "1"]


def built_strategy(tmp_path, name: str):
    """The strategy object the CLI builds for crammed-bert + ``name`` (the Trainer itself is not built). Only for a
    strategy whose Trainer cannot be built on a CPU: Lightning refuses FSDP there ("requires a GPU accelerator",
    test_fsdp_is_refused_on_cpu_by_lightning), so the CLI is stopped where it would build the Trainer, with the
    strategy already instantiated from the config."""
    built = {}

    def capture(cli, **kwargs):
        built["strategy"] = cli.config_init[cli.subcommand]["trainer"]["strategy"]
        raise SystemExit(0)

    with mock.patch.object(LitLMCLI, "instantiate_trainer", capture), pytest.raises(SystemExit):
        LitLMCLI(args=["fit", "--config", str(CRAMMED_BERT), "--config", trainer_config(name), *data_words(tmp_path)])
    return built["strategy"]


def test_the_ddp_config_builds_ddp_without_searching_for_unused_parameters(tmp_path):
    """The real Trainer, as train.py builds it, with the DDP config on two CPU processes (gloo, as tests/test_ddp.py
    trains it): nothing is started until fit, so it builds here."""
    cli = LitLMCLI(args=["--config", str(CRAMMED_BERT), "--config", trainer_config("ddp.yaml"), *data_words(tmp_path),
                         "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.precision", "32-true"],
                   run=False)
    trainer, strategy = cli.trainer, cli.trainer.strategy
    assert type(strategy) is DDPStrategy
    settings = strategy._ddp_kwargs
    assert (settings["find_unused_parameters"], settings["gradient_as_bucket_view"]) == (False, True)
    assert trainer.num_devices == 2 and trainer.world_size == 2 and strategy.num_processes == 2
    assert isinstance(trainer.accelerator, CPUAccelerator) and strategy.root_device == torch.device("cpu")
    assert strategy._get_process_group_backend() == "gloo"
    assert type(strategy.launcher).__name__ == "_SubprocessScriptLauncher"  # train.py starts the second process
    # the recipe's own callbacks, the batch ramp among them (it accepts DDP: the strategy leaves accumulation to it)
    names = [type(c).__name__ for c in trainer.callbacks]
    assert {"BatchSizeRamp", "OneCycleLR", "ThroughputMFU", "ModelCheckpoint"} <= set(names)
    assert not strategy.handles_gradient_accumulation


def test_the_fsdp_config_shards_per_transformer_block_and_saves_whole_checkpoints(tmp_path):
    strategy = built_strategy(tmp_path, "fsdp.yaml")
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {TransformerBlock}
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy._state_dict_type == "full"


def test_fsdp_is_refused_on_cpu_by_lightning():
    """Why FSDP has no CPU run in the tests: Lightning itself refuses it there."""
    from lit_lm.cli import Trainer

    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        Trainer(accelerator="cpu", devices=2, strategy="fsdp", logger=False)


def test_deepspeed_not_installed_stops_with_one_line_naming_the_install(capsys):
    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    with pytest.raises(SystemExit) as exit_:
        run(["fit", "--config", str(CRAMMED_BERT), "--config", trainer_config("deepspeed.yaml")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "pip install deepspeed" in err and "Traceback" not in err
