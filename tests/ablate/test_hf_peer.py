"""The HuggingFace peer run: transformers' Trainer on lit-lm's rows under a wall-clock budget, scored like lit-lm."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from lit_lm.ablate import hf_peer  # noqa: E402
from lit_lm.cli import resolved_config  # noqa: E402
from lit_lm.data.streaming import Permutation, epoch_seed  # noqa: E402
from lit_lm.modules.masking import mask_tokens  # noqa: E402
from tests.conftest import ROOT, fake_cpu, write_corpus  # noqa: E402

SECONDS, EVAL_EVERY = 2.5, 0.5
TINY = ["--model.init_args.config.hidden_size", "32", "--model.init_args.config.num_layers", "2",
        "--model.init_args.config.num_heads", "2", "--model.init_args.config.intermediate_size", "64",
        "--model.init_args.config.max_position_embeddings", "32", "--data.init_args.tokenizer.vocab_size", "200",
        "--data.init_args.seq_length", "32", "--data.init_args.batch_size", "4", "--data.init_args.progress", "false",
        "--trainer.precision", "32-true"]  # what auto stands for on a CPU varies with its measured bf16 speed


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> dict:
    """crammed-bert at tiny shapes on a generated corpus; the ramp's target is two micro-batches."""
    folder = tmp_path_factory.mktemp("peer")
    corpus = write_corpus(folder / "corpus", n_files=24, paragraphs=60)  # more rows than the budget trains on
    config = resolved_config(ROOT / "configs/recipes/crammed-bert.yaml", *TINY, "--data.init_args.paths",
                             f"[{corpus}]", "--data.init_args.cache_dir", str(folder / "cache"))
    hf_peer._callback(config, "BatchSizeRamp")["init_args"]["target_batch_size"] = 8
    return config


@pytest.fixture(scope="module")
def datamodule(config):
    return hf_peer.load_data(config)


@pytest.fixture(scope="module")
def heldout(datamodule, tmp_path_factory) -> Path:
    """Validation rows masked once, as the ablation runner's held-out set."""
    ids = torch.cat([batch["input_ids"] for batch in datamodule.val_dataloader()])[:48]
    special = torch.tensor(datamodule.special_token_ids)
    allowed = torch.ones(datamodule.vocab_size, dtype=torch.bool)
    allowed[special] = False
    inputs, labels = mask_tokens(ids, mask_rate=0.15, mask_token_id=datamodule.mask_token_id,
                                 special_token_ids=special, replacement_ids=allowed.nonzero().squeeze(1),
                                 generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("heldout") / "heldout.pt"
    torch.save({"inputs": inputs, "labels": labels, "attention_mask": (ids != datamodule.pad_token_id).long()}, path)
    return path


@pytest.fixture(scope="module")
def run(config, heldout, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("run") / "peer"
    for stale in ("model", "trainer-old", ".model-old"):  # what an interrupted run leaves: it starts again
        (out / stale).mkdir(parents=True)
        (out / stale / "stale.txt").write_text("from an interrupted run")
    (out / "curve.csv").write_text("step,train_seconds,tokens_seen,heldout_loss\n999,1.0,1,9.9\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # one thread: a tiny model's steps stay fast on a CPU shared with others
        return hf_peer.run_hf_peer(config, SECONDS, heldout, out, eval_every=EVAL_EVERY, calibration_steps=3), out


def read_curve(out: Path) -> list[dict]:
    with open(out / "curve.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_the_subprocess_trains_within_the_budget_and_writes_its_result(run, datamodule):
    result, out = run
    assert tuple(result) == hf_peer.RESULT_KEYS
    assert json.loads((out / "result.json").read_text()) == result
    assert (result["micro_batch_size"], result["gradient_accumulation_steps"], result["batch_size"]) == (4, 2, 8)
    assert result["steps"] >= 3 and result["steps"] <= result["max_steps"]
    estimate = result["max_steps_estimate"]
    assert 1 <= estimate["timed_micro_batches"] <= 3
    assert estimate["seconds_per_step"] == pytest.approx(2 * estimate["seconds_per_micro_batch"], rel=1e-3)
    step = result["train_seconds"] / result["steps"]
    assert result["train_seconds"] <= SECONDS + 3 * step  # the time stop acts at the first step past the budget
    if result["stopped_by"] != "time":  # the estimated schedule (or the epoch) ended before the budget
        assert result["steps"] == result["max_steps"]
    else:
        assert result["train_seconds"] >= SECONDS
    assert result["lr_schedule"]["warmup_steps"] == hf_peer.warmup_steps(result["max_steps"])
    assert (hf_peer.warmup_steps(99), hf_peer.warmup_steps(250)) == (0, 2)  # none below 100 steps
    # tokens: the real tokens of the first steps x 8 rows in lit-lm's first-epoch order
    store = datamodule.train_store
    rows = Permutation(len(store), epoch_seed(datamodule.seed, 0))(np.arange(result["steps"] * 8))
    assert result["tokens_seen"] == int(store.read(rows)[1].sum())
    # the Trainer's own training loss is a mean over the accumulated batch, not their sum (transformers#47688)
    log = (out / "train.log").read_text()
    train_loss = float(log.rsplit("'train_loss': '", 1)[1].split("'")[0])
    assert train_loss == pytest.approx(result["heldout_loss"], rel=0.25)
    assert result["tokens_per_sec"] == pytest.approx(result["tokens_seen"] / result["train_seconds"], rel=1e-3)


def test_the_curve_has_points_through_training_and_the_loss_falls(run):
    result, out = run
    curve = read_curve(out)
    assert len(curve) >= 3
    assert [row["step"] for row in curve] == sorted({row["step"] for row in curve})
    assert all(a["train_seconds"] < b["train_seconds"] and a["tokens_seen"] < b["tokens_seen"]
               for a, b in zip(curve, curve[1:]))
    assert curve[-1]["step"] == result["steps"] and curve[-1]["heldout_loss"] == pytest.approx(result["heldout_loss"])
    assert curve[-1]["heldout_loss"] < curve[0]["heldout_loss"]


def test_the_saved_model_reloads_and_scores_the_same_through_lit_lm(run, heldout):
    from transformers import AutoTokenizer, BertForMaskedLM

    from lit_lm.hf import from_hf

    result, out = run
    hf_model = BertForMaskedLM.from_pretrained(out / "model")
    config = hf_model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
            config.max_position_embeddings) == (32, 2, 2, 64, 32)
    assert (config.hidden_dropout_prob, config.hidden_act) == (0.1, "gelu")  # transformers' defaults
    assert sum(p.numel() for p in hf_model.parameters()) == result["parameters"]
    evaluation = hf_peer.load_heldout(heldout)
    own = hf_peer.heldout_loss(hf_model, evaluation)
    assert own == pytest.approx(result["heldout_loss"], abs=1e-5)
    assert hf_peer.heldout_loss(from_hf(hf_model), evaluation) == pytest.approx(own, abs=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert tokenizer.mask_token == "[MASK]" and tokenizer.vocab_size == config.vocab_size
    assert not list(out.glob(".*")) and not list(out.glob("trainer-*"))  # nothing left of the staging folders
    assert not (out / "model" / "stale.txt").exists()


def test_a_finished_run_is_detected_by_its_result(run, heldout, monkeypatch):
    result, out = run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a finished run was started again"))
    assert hf_peer.run_hf_peer({}, SECONDS, heldout, out) == result


def test_a_failed_run_raises_with_the_end_of_its_log(tmp_path, monkeypatch):
    python = tmp_path / "python"  # stands in for the interpreter: a long log, then a failure
    python.write_text("#!/bin/sh\nfor i in $(seq 1 100); do echo line $i; done\necho 'error: it broke' >&2\nexit 3\n")
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    with pytest.raises(hf_peer.PeerError, match=r"(?s)exit status 3.*line 100\nerror: it broke") as error:
        hf_peer.run_hf_peer({"data": {}}, SECONDS, tmp_path / "heldout.pt", tmp_path / "out")
    assert "line 50\n" not in str(error.value)  # only the tail
    assert (tmp_path / "out" / "run.yaml").is_file() and not (tmp_path / "out" / "result.json").exists()


def test_the_command_line_names_a_wrong_held_out_file_in_one_line(config, tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_:
        hf_peer.main(["--config", str(tmp_path / "run.yaml"), "--seconds", "1", "--heldout",
                      str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "missing.pt" in capsys.readouterr().err


def test_the_collator_masks_15_percent_of_the_real_tokens_80_10_10(datamodule):
    from transformers import DataCollatorForLanguageModeling

    rows = hf_peer.OrderedRows(datamodule.train_store, datamodule.seed, datamodule.special_token_ids, limit=256)
    examples = list(rows)
    torch.manual_seed(0)
    tokenizer = hf_peer.hf_tokenizer(datamodule)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=hf_peer.MLM_PROBABILITY)
    batch = collator(examples)
    ids = torch.stack([e["input_ids"] for e in examples])
    special = torch.isin(ids, torch.tensor(datamodule.special_token_ids))
    masked = batch["labels"] != -100
    assert not (masked & special).any()  # [CLS], [SEP], [PAD] are never predicted
    assert masked.sum() / (~special).sum() == pytest.approx(0.15, abs=0.02)
    assert (batch["input_ids"][masked] == datamodule.mask_token_id).float().mean() == pytest.approx(0.8, abs=0.05)
    assert torch.equal(batch["labels"][masked], ids[masked])
    assert rows.lengths == [int(n) for n in batch["attention_mask"].sum(1)]


def test_batch_sizes_follow_the_ramp_target_or_the_fixed_accumulation():
    ramp = {"class_path": "lit_lm.callbacks.BatchSizeRamp", "init_args": {"target_batch_size": 128}}
    config = {"data": {"init_args": {"batch_size": 16}}, "trainer": {"callbacks": [ramp]}}
    assert hf_peer.batch_sizes(config) == (16, 8)
    config["trainer"] = {"callbacks": [], "accumulate_grad_batches": 3}
    assert hf_peer.batch_sizes(config) == (16, 3)


def test_precision_follows_the_base_and_bf16_runs_on_a_cpu_too(monkeypatch):
    fake_cpu(monkeypatch, fast_bf16=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = {"trainer": {"precision": "auto", "accelerator": "auto"}}
    assert hf_peer.training_precision(config)[0] == "bf16-mixed"
    assert hf_peer.precision_arguments("bf16-mixed") == {"bf16": True, "use_cpu": True}
    assert hf_peer.precision_arguments("16-mixed") == {}  # transformers' fp16 needs a GPU: fp32 on a CPU
    config["trainer"]["precision"] = "32-true"
    assert hf_peer.training_precision(config) == ("32-true", "trainer.precision of the config")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hf_peer.precision_arguments("16-mixed") == {"fp16": True}
    assert hf_peer.precision_arguments("bf16-mixed") == {"bf16": True}


def test_a_missing_accelerate_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate now raises ImportError
    with pytest.raises(ImportError, match=r"needs accelerate .*pip install 'lit-lm\[peer\]'"):
        hf_peer.run_hf_peer({}, SECONDS, tmp_path / "heldout.pt", tmp_path / "out")
    with pytest.raises(SystemExit) as exit_:
        hf_peer.main(["--config", "x.yaml", "--seconds", "1", "--heldout", "h.pt", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "pip install 'lit-lm[peer]'" in capsys.readouterr().err
