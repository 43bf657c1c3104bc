"""Reading our own checkpoints: a file or a run folder -> the model and tokenizer; one clear error otherwise."""

import os
import random
from dataclasses import asdict

import pytest
import torch

from lit_lm.checkpoint import Checkpoint, CheckpointError, load_causal_lm, load_model, write_atomically
from lit_lm.data.tokenizer import TokenizerConfig, train_tokenizer
from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM
from tests.conftest import run_module, sentence
from tests.models.helpers import tiny
from tests.models.test_decoder import GPT2


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    return train_tokenizer([" ".join(sentence(rng) for _ in range(4)) for _ in range(200)],
                           TokenizerConfig(kind="byte_bpe", vocab_size=300))


def save_run_checkpoint(path, model, tokenizer=None, config_as_dict=True):
    """What a lit-lm LightningModule's checkpoint holds: the module's state (model under ``model.``), the config in
    the hyperparameters (a dict when written through the CLI), and a causal-LM run's tokenizer."""
    contents = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": asdict(model.config) if config_as_dict else model.config},
                "epoch": 0, "global_step": 3}
    if tokenizer is not None:
        contents["tokenizer"] = tokenizer.to_str()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(contents, path)
    return path


@pytest.mark.parametrize("kind", [EncoderForMaskedLM, DecoderForCausalLM])
@pytest.mark.parametrize("config_as_dict", [True, False], ids=["config-dict", "config-object"])
def test_a_checkpoint_gives_back_the_same_model_in_eval_mode(tmp_path, kind, config_as_dict):
    torch.manual_seed(0)
    model = kind(tiny(**(GPT2 if kind is DecoderForCausalLM else {})))
    path = save_run_checkpoint(tmp_path / "last.ckpt", model, config_as_dict=config_as_dict)
    checkpoint = Checkpoint.read(path)
    loaded = checkpoint.model()
    assert type(loaded) is kind and not loaded.training and checkpoint.causal == (kind is DecoderForCausalLM)
    assert loaded.config == model.config
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)


def test_a_run_folder_means_its_newest_last_checkpoint(tmp_path, tokenizer):
    run = tmp_path / "runs" / "quickstart-decoder"
    older = save_run_checkpoint(run / "logs" / "version_0" / "checkpoints" / "last.ckpt",
                                DecoderForCausalLM(tiny(**GPT2, num_layers=1)), tokenizer)
    newer = save_run_checkpoint(run / "logs" / "version_1" / "checkpoints" / "last.ckpt",
                                DecoderForCausalLM(tiny(**GPT2, num_layers=2, vocab_size=300)), tokenizer)
    os.utime(older, (1, 1))
    assert Checkpoint.read(run).path == newer
    assert load_model(run).config.num_layers == 2
    model, loaded = load_causal_lm(run)
    assert loaded.to_str() == tokenizer.to_str() and isinstance(model, DecoderForCausalLM)


def test_what_is_not_a_lit_lm_checkpoint_is_one_clear_error(tmp_path, tokenizer):
    with pytest.raises(CheckpointError, match="does not exist; runs write theirs to runs/<recipe>/logs"):
        Checkpoint.read(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="holds no last.*ckpt"):
        Checkpoint.read(tmp_path)
    (tmp_path / "noise.ckpt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="noise.ckpt is not a readable checkpoint.*is the file complete"):
        Checkpoint.read(tmp_path / "noise.ckpt")
    good = save_run_checkpoint(tmp_path / "good.ckpt", EncoderForMaskedLM(tiny()))
    (tmp_path / "cut.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.ckpt is not a readable checkpoint"):
        Checkpoint.read(tmp_path / "cut.ckpt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    for name in ("foreign.pt", "tensor.pt"):
        with pytest.raises(CheckpointError, match=f"{name} is not a lit-lm checkpoint: it holds no model config"):
            Checkpoint.read(tmp_path / name)


def test_a_checkpoint_lacking_what_is_asked_says_what_to_pass(tmp_path, tokenizer):
    encoder = save_run_checkpoint(tmp_path / "mlm.ckpt", EncoderForMaskedLM(tiny()))
    with pytest.raises(CheckpointError, match="holds no tokenizer.*--tokenizer"):
        Checkpoint.read(encoder).tokenizer()
    with pytest.raises(CheckpointError, match="masked-LM checkpoint; this needs a causal-LM"):
        load_causal_lm(encoder, tokenizer=None)
    small = save_run_checkpoint(tmp_path / "small.ckpt", DecoderForCausalLM(tiny(**GPT2)), tokenizer)
    with pytest.raises(CheckpointError, match="tokenizer has 300 tokens but the model 50"):
        load_causal_lm(small)
    damaged = torch.load(encoder, weights_only=False)
    damaged["hyper_parameters"]["config"]["hidden_size"] = 64
    torch.save(damaged, tmp_path / "damaged.ckpt")
    with pytest.raises(CheckpointError, match="weights do not fit its own model config"):
        load_model(tmp_path / "damaged.ckpt")


@pytest.mark.parametrize("command", [["lit_lm.generate", "--checkpoint"], ["lit_lm.evaluate", "perplexity",
                                                                            "--file", "x.txt", "--checkpoint"],
                                     ["lit_lm.hf", "export", "--tokenizer", "t.json"]], ids=["generate", "evaluate",
                                                                                          "hf-export"])
def test_command_lines_print_the_error_without_a_traceback(tmp_path, command, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.ckpt").write_bytes(b"garbage")
    args = [*command[1:], str(tmp_path / "corrupt.ckpt")] + (["out"] if command[0] == "lit_lm.hf" else [])
    assert run_module(command[0], *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "corrupt.ckpt is not a readable checkpoint" in err
    assert "Traceback" not in err


def test_write_atomically_refuses_a_full_folder_and_leaves_nothing_half_written(tmp_path):
    def write(folder):
        (folder / "a.txt").write_text("a")

    target = write_atomically(tmp_path / "out", write)
    assert (target / "a.txt").read_text() == "a"
    with pytest.raises(FileExistsError, match="not empty"):
        write_atomically(target, write)

    def fail(folder):
        (folder / "b.txt").write_text("b")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (target / "a.txt").exists()


class ExplodesWhenSaved:
    """Pickles into an error, after the checkpoint's other entries were written: a crash in the middle of a save."""

    def __reduce__(self):
        raise OSError("the disk went away")


def test_a_save_that_crashes_midway_leaves_the_previous_checkpoint_whole(tmp_path):
    from lit_lm.checkpoint import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.arange(1000.0)}, "global_step": 4}, path)
    before = path.read_bytes()
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())  # not mkstemp's owner-only mode
    with pytest.raises(OSError, match="disk went away"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(100_000)}, "global_step": 6, "x": ExplodesWhenSaved()},
                           path)
    assert path.read_bytes() == before and torch.load(path)["global_step"] == 4
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no half-written file left behind


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_ckpt_path_last_resumes_the_newest_of_several_last_checkpoints(tmp_path):
    """``--ckpt_path last`` (Trainer.last_checkpoint) and a run folder given to the readers both take the newest
    ``last*.ckpt`` by time, whatever their names and version folders; a hidden half-written one never."""
    from lit_lm.checkpoint import checkpoint_file
    from lit_lm.cli import Trainer

    logs = tmp_path / "runs" / "logs"
    names = ["version_0/checkpoints/last.ckpt", "version_1/checkpoints/last-v1.ckpt",
             "version_1/checkpoints/last.ckpt", "version_2/checkpoints/epoch=0-step=9.ckpt",
             "version_2/checkpoints/.last.ckpt.abc123.ckpt"]
    for age, name in zip([50, 10, 30, 0, 0], names):  # seconds ago: version_1's last-v1.ckpt is the newest last*
        (logs / name).parent.mkdir(parents=True, exist_ok=True)
        (logs / name).write_bytes(b"x")
        os.utime(logs / name, (1e9 - age, 1e9 - age))
    trainer = Trainer(default_root_dir=tmp_path / "runs", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.run_folders = lambda: [logs]  # the recipe's CSV logger folder
    assert trainer.last_checkpoint() == logs / names[1]
    assert checkpoint_file(logs) == logs / names[1]
    os.utime(logs / names[0], (1e9 + 1, 1e9 + 1))  # the oldest version written again later: now it is the newest
    assert trainer.last_checkpoint() == logs / names[0]
