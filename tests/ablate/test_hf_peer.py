"""The HuggingFace peer run: transformers' Trainer on lit-lm's rows for a budget of steps (the same work whatever the
machine's speed), scored like lit-lm."""

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from lit_lm.ablate import hf_peer  # noqa: E402
from lit_lm.cli import resolved_config  # noqa: E402
from lit_lm.modules.masking import mask_tokens  # noqa: E402
from tests.conftest import ROOT, fake_cpu, write_corpus  # noqa: E402

STEPS, EVAL_EVERY = 6, 2  # optimizer steps of 8 rows (micro-batches of 4, accumulated twice); a score every 2
SECONDS = 2.5  # for the tests that never train
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


def first_epoch_rows(datamodule, rows: int) -> list[dict]:
    """The first ``rows`` rows lit-lm's own training loader serves (epoch 0), one dict of tensors per row."""
    served = []
    for batch in datamodule.train_dataloader():
        served += [{key: value[i] for key, value in batch.items()} for i in range(len(batch["input_ids"]))]
        if len(served) >= rows:
            return served[:rows]
    raise AssertionError(f"the training split has fewer than {rows} rows")


@pytest.fixture(scope="module")
def run(config, heldout, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("run") / "peer"
    for stale in ("model", "trainer-old", ".model-old"):  # what an interrupted run leaves: it starts again
        (out / stale).mkdir(parents=True)
        (out / stale / "stale.txt").write_text("from an interrupted run")
    (out / "curve.csv").write_text("step,train_seconds,tokens_seen,heldout_loss\n999,1.0,1,9.9\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # one thread: a tiny model's steps stay fast on a CPU shared with others
        return hf_peer.run_hf_peer(config, None, heldout, out, eval_every=EVAL_EVERY, max_steps=STEPS), out


def read_curve(out: Path) -> list[dict]:
    with open(out / "curve.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_the_subprocess_trains_the_given_steps_and_writes_its_result(run, datamodule):
    result, out = run
    assert tuple(result) == hf_peer.RESULT_KEYS
    assert json.loads((out / "result.json").read_text()) == result
    assert (result["micro_batch_size"], result["gradient_accumulation_steps"], result["batch_size"]) == (4, 2, 8)
    assert result["budget"] == {"kind": "steps", "value": STEPS}
    assert result["steps"] == result["max_steps"] == STEPS and result["stopped_by"] == "max_steps"
    assert result["max_steps_estimate"] is None  # nothing calibrated: the steps are given
    # BERT's 1% warmup, rounded down: 0.06 of a step is none; then linear decay from 1e-4 towards 0 over the 6
    # steps: step k (from 0) trains at 1e-4 x (6 - k) / 6, as the Trainer logs it after each step (to 4 digits)
    assert result["lr_schedule"]["warmup_steps"] == 0
    logs = [ast.literal_eval(line) for line in (out / "train.log").read_text().splitlines()
            if line.startswith("{'loss'")]
    assert [float(log["learning_rate"]) for log in logs] == pytest.approx(
        [1e-4, 8.333e-5, 6.667e-5, 5e-5, 3.333e-5, 1.667e-5], rel=1e-3)
    # tokens: the real tokens of the first 6 steps x 8 rows lit-lm's own loader serves
    rows = first_epoch_rows(datamodule, STEPS * 8)
    assert result["tokens_seen"] == sum(int(row["attention_mask"].sum()) for row in rows)
    # the Trainer's own training loss is a mean over the accumulated batch, not their sum (transformers#47688)
    train_loss = float(ast.literal_eval(next(line for line in (out / "train.log").read_text().splitlines()
                                             if line.startswith("{'train_runtime'")))["train_loss"])
    assert train_loss == pytest.approx(result["heldout_loss"], rel=0.25)
    # train_seconds is rounded to 1 ms (a relative error of 0.0005 / train_seconds), tokens_per_sec to 0.1
    rate, seconds = result["tokens_seen"] / result["train_seconds"], result["train_seconds"]
    assert abs(result["tokens_per_sec"] - rate) <= rate * 0.0005 / seconds + 0.05


@pytest.mark.slow
def test_the_curve_has_a_point_every_two_steps_and_the_loss_falls(run, datamodule):
    result, out = run
    curve = read_curve(out)
    assert [row["step"] for row in curve] == [2, 4, 6]  # every EVAL_EVERY steps, the last at the end
    rows = first_epoch_rows(datamodule, STEPS * 8)
    assert [row["tokens_seen"] for row in curve] == [
        sum(int(r["attention_mask"].sum()) for r in rows[:8 * step]) for step in (2, 4, 6)]
    assert all(a["train_seconds"] < b["train_seconds"] for a, b in zip(curve, curve[1:]))  # the clock counts on
    assert curve[-1]["heldout_loss"] == pytest.approx(result["heldout_loss"])
    assert curve[-1]["heldout_loss"] < curve[0]["heldout_loss"]


def test_warmup_is_one_percent_of_the_steps_rounded_down():
    assert [hf_peer.warmup_steps(n) for n in (6, 99, 100, 199, 250)] == [0, 0, 1, 1, 2]


@pytest.mark.slow
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


@pytest.mark.slow  # its fixture, the run, starts the peer's process
def test_a_finished_run_is_detected_by_its_result(run, heldout, monkeypatch):
    result, out = run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a finished run was started again"))
    assert hf_peer.run_hf_peer({}, None, heldout, out, max_steps=STEPS) == result


@pytest.mark.slow  # starts a process (a stand-in for the interpreter)
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


def test_the_rows_are_lit_lm_s_first_epoch_in_order_with_their_lengths_and_special_tokens(datamodule):
    rows = hf_peer.OrderedRows(datamodule.train_store, datamodule.seed, datamodule.special_token_ids, limit=40,
                               chunk=16)  # chunks of 16: the order must run on across them
    examples = list(rows)
    served = first_epoch_rows(datamodule, 40)
    assert len(examples) == 40  # the limit
    assert torch.equal(torch.stack([e["input_ids"] for e in examples]), torch.stack([r["input_ids"] for r in served]))
    assert torch.equal(torch.stack([e["attention_mask"] for e in examples]),
                       torch.stack([r["attention_mask"] for r in served]))
    assert rows.lengths == [int(r["attention_mask"].sum()) for r in served]
    tokenizer = datamodule.tokenizer
    special = {tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]")} - {None}
    for example in examples:
        ids = example["input_ids"].tolist()
        assert example["special_tokens_mask"].tolist() == [int(i in special) for i in ids]
        assert ids[0] == tokenizer.token_to_id("[CLS]")  # BERT's rows open with [CLS]: never a masking candidate
        assert example["special_tokens_mask"][0] == 1
    again = [e["input_ids"] for e in rows]  # a second pass starts over, its lengths too
    assert torch.equal(torch.stack(again), torch.stack([e["input_ids"] for e in examples])) and len(rows.lengths) == 40


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


def test_the_peer_takes_one_budget_seconds_or_steps(tmp_path, capsys):
    for seconds, steps in ((SECONDS, STEPS), (None, None)):
        with pytest.raises(ValueError, match="one budget"):
            hf_peer.run_hf_peer({}, seconds, tmp_path / "heldout.pt", tmp_path / "out", max_steps=steps)
    with pytest.raises(SystemExit) as exit_:
        hf_peer.main(["--config", "x.yaml", "--seconds", "1", "--steps", "2", "--heldout", "h.pt", "--out", "o"])
    assert exit_.value.code == 2 and "not allowed with argument --seconds" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
