"""CausalLMModule end to end: the decoder quickstart through train.py, then generation and perplexity on its
checkpoint from the command line; the loss falling; FLOPs; sample logging to wandb."""

import csv
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import MagicMock

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import WandbLogger
from tokenizers import Tokenizer

from lit_lm.callbacks import TextSamples
from lit_lm.data import PretrainingDataModule
from lit_lm.data.tokenizer import TokenizerConfig
from lit_lm.checkpoint import load_causal_lm
from lit_lm.evaluate import main as evaluate_main
from lit_lm.evaluate import perplexity
from lit_lm.generate import main as generate_main
from lit_lm.hf.__main__ import main as hf_main
from lit_lm.models import DecoderForCausalLM, TransformerConfig
from lit_lm.modules import CausalLMModule
from tests.conftest import ROOT

RUN = Path("runs/quickstart-decoder")
TINY = ["--model.init_args.config.hidden_size", "32", "--model.init_args.config.num_layers", "1",
        "--model.init_args.config.num_heads", "2", "--model.init_args.config.intermediate_size", "64",
        "--data.init_args.tokenizer.vocab_size", "300", "--data.init_args.seq_length", "32",
        "--data.init_args.batch_size", "8", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false"]


@pytest.mark.slow
def test_decoder_quickstart_trains_through_train_py_then_generates_and_evaluates(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cmd = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "quickstart-decoder.yaml"),
           *TINY, "--data.init_args.paths", f"[{corpus}]", "--data.init_args.split", "paragraph",
           "--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(RUN / "logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train/loss") for r in rows)
    val = [r for r in rows if r.get("val/loss")]
    assert len(val) == 2 and all(math.isclose(float(r["val/ppl"]), math.exp(float(r["val/loss"])), rel_tol=1e-4)
                                 for r in val)
    samples = (RUN / "logs" / "version_0" / "samples.txt").read_text()
    assert "--- step 6 | prompt 'The list'" in samples  # logged at the end of training
    checkpoint = torch.load(RUN / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["eos_token_id"] == 0 and hparams["config"]["vocab_size"] <= 300  # linked from the tokenizer
    assert "<|endoftext|>" in checkpoint["tokenizer"]

    generate_main(["--checkpoint", str(RUN / "logs" / "version_0" / "checkpoints" / "last.ckpt"), "--prompt", "the quick cat",
                   "--max-new-tokens", "8", "--temperature", "0"])
    assert capsys.readouterr().out.startswith("the quick cat")
    evaluate_main(["perplexity", "--checkpoint", str(RUN / "logs" / "version_0" / "checkpoints" / "last.ckpt"),
                   "--file", str(corpus / "doc0.txt"), "--context-length", "32", "--stride", "16"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the checkpoint's own model and tokenizer, evaluated as lit_lm.evaluate does in this process: the same numbers
    # (a CLI that loaded other weights, another tokenizer or windows would differ)
    model, tokenizer = load_causal_lm(RUN / "logs" / "version_0" / "checkpoints" / "last.ckpt")
    expected = perplexity(model, tokenizer, (corpus / "doc0.txt").read_text(), context_length=32, stride=16)
    assert result["tokens"] == expected.tokens > 100 and result["bytes"] == expected.bytes
    assert result["token_perplexity"] == pytest.approx(expected.token_perplexity, rel=1e-4)
    # by hand, from the checkpoint's own weights and tokenizer and nothing of lit_lm.evaluate: the text's tokens after
    # one end-of-text token; token t (t >= 1) is scored in the first window of 32 (windows start every 16 tokens) that
    # holds it and a token before it, given that window's tokens before it; perplexity = exp(mean NLL)
    hand_model = DecoderForCausalLM(TransformerConfig(**hparams["config"])).double().eval()  # a float64 reference
    hand_model.load_state_dict({k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()
                                if k.startswith("model.")})
    text = (corpus / "doc0.txt").read_text()
    ids = [hparams["eos_token_id"], *Tokenizer.from_str(checkpoint["tokenizer"]).encode(
        text, add_special_tokens=False).ids]
    nll, largest = [], 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            start = 0 if t < 32 else 16 * ((t - 16) // 16)  # the window [start, start + 32) with start + 16 <= t
            logits = hand_model(torch.tensor([ids[start:t]])).logits[0, -1]
            largest = max(largest, float(logits.abs().max()))
            nll.append(float(-torch.log_softmax(logits, -1)[ids[t]]))
    assert result["tokens"] == len(nll) and result["bytes"] == len(text.encode("utf-8"))
    # float32 (the command) against the float64 reference: each float32 operation rounds with relative error at most
    # u = 2^-24 = 6e-8. A log-probability of this one-layer model is reached through reductions of total length about
    # 800 (LayerNorm means and variances over 32, three times; Q/K/V, output and head products over 32; scores over
    # 16; softmax and value sums over at most 32; the FFN's down projection over 64; the log-sum-exp over <= 300
    # tokens), so its error is at most about 800 u = 5e-5 times the size of what it sums: the logits, below 10
    # (asserted), so about 5e-4 nats. The mean NLL, which is ln(perplexity), errs no more than its terms: 1e-3 on
    # ln(perplexity) keeps a factor 2 over that bound. bits per byte: total NLL / ln 2 / bytes, the same relative error.
    assert largest < 10
    mean_nll = sum(nll) / len(nll)
    assert abs(math.log(result["token_perplexity"]) - mean_nll) < 1e-3
    assert result["bits_per_byte"] == pytest.approx(sum(nll) / math.log(2) / result["bytes"], rel=1e-3)
    transformers = pytest.importorskip("transformers")
    hf_main(["export", str(RUN / "logs" / "version_0" / "checkpoints" / "last.ckpt"), str(tmp_path / "export")])  # its own tokenizer
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", trust_remote_code=True)
    assert type(hf).__name__ == "LitLMForCausalLM" and hf.generation_config.eos_token_id == 0  # qkv_bias: false
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "export", trust_remote_code=True).eos_token == \
        "<|endoftext|>"


def tiny_config(vocab: int) -> TransformerConfig:
    return TransformerConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                             max_position_embeddings=32, type_vocab_size=0, norm_placement="pre", final_norm=True,
                             embedding_norm=False, head_transform=False, dropout=0.0, attention_dropout=0.0)


def test_training_lowers_the_validation_loss(corpus):
    torch.manual_seed(0)
    data = PretrainingDataModule(paths=[str(corpus)], split="paragraph", seq_length=32, batch_size=8,
                                 tokenizer=TokenizerConfig(kind="byte_bpe", vocab_size=300), progress=False)
    lm = CausalLMModule(tiny_config(data.vocab_size), seq_length=32, eos_token_id=data.eos_token_id)
    trainer = L.Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=4, num_sanity_val_steps=0)
    before = trainer.validate(lm, datamodule=data, verbose=False)[0]
    trainer.fit(lm, datamodule=data)
    after = trainer.validate(lm, datamodule=data, verbose=False)[0]
    assert after["val/loss"] < before["val/loss"] - 1.0
    assert after["val/ppl"] == pytest.approx(math.exp(after["val/loss"]), rel=1e-4)


def test_perplexity_scores_every_token_once_in_its_window_by_hand(gpt_tokenizer):
    """lit_lm.evaluate.perplexity against the definition, on a float64 model whose predictions depend strongly on
    their context (large random weights), so a token scored with the wrong context would show: windows of 16 tokens
    starting every 6; token t (t >= 1) is scored in the first window that holds it and a token before it, given that
    window's tokens before it. perplexity = exp(mean NLL), bits per byte = total NLL / ln 2 / bytes."""
    torch.manual_seed(0)
    model = DecoderForCausalLM(replace(tiny_config(gpt_tokenizer.get_vocab_size()), initializer_range=0.5))
    model = model.double().eval()
    text = "the careful cat follows the dark river. the small teacher reads the hidden model. " * 3
    result = perplexity(model, gpt_tokenizer, text, context_length=16, stride=6)
    ids = [gpt_tokenizer.token_to_id("<|endoftext|>"), *gpt_tokenizer.encode(text, add_special_tokens=False).ids]
    nll, largest = [], 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            start = 0 if t < 16 else 6 * ((t - 16) // 6 + 1)  # the first window [start, start + 16) past t
            logits = model(torch.tensor([ids[start:t]])).logits[0, -1]
            largest = max(largest, float(logits.abs().max()))
            nll.append(float(-torch.log_softmax(logits, -1)[ids[t]]))
    assert result.tokens == len(nll) > 60 and result.bytes == len(text.encode("utf-8"))
    # the forward is float64 on both sides (the same model); perplexity() rounds the logits to float32 (relative
    # error u = 2^-24 = 6e-8 each), takes a float32 log-softmax over 280 tokens (error about (2 + 280) u times
    # |logit| + log-sum-exp, below 30 + 6: 6e-4 nats at the very worst, per token) and sums each window's <= 16
    # terms in float32 (relative 16 u). The mean NLL errs no more than its terms: 1e-3 on ln(perplexity). With these
    # large weights a token's NLL depends on its context by nats, so windows that start one token late move the mean
    # by about 0.2.
    assert largest < 30
    assert abs(math.log(result.token_perplexity) - sum(nll) / len(nll)) < 1e-3
    assert result.bits_per_byte == pytest.approx(sum(nll) / math.log(2) / result.bytes, rel=1e-3)


def test_training_flops_count_forward_and_backward():
    """The count by hand from the shapes (2 FLOPs per multiply-add, matmuls only, as Lightning's measure_flops
    counts): an integer count, so it must agree exactly."""
    lm = CausalLMModule(tiny_config(300), seq_length=32)
    batch = {"input_ids": torch.randint(0, 300, (4, 32)), "attention_mask": torch.ones(4, 32, dtype=torch.long)}
    rows, s, h, ffn, vocab, layers = 4, 32, 32, 64, 300, 2  # tiny_config; the position table is a lookup
    per_token = layers * (h * 3 * h + h * h + h * ffn + ffn * h) + h * vocab  # Q/K/V, output, FFN up and down; head
    attention = layers * 2 * (2 * s * s * h)  # per row: q k^T and p v over every (query, key) pair of the square
    forward = 2 * s * per_token + attention
    # backward: two matmuls per forward one (the gradients of both operands: every input needs one, down to the
    # embeddings, which train)
    assert lm.training_flops(batch) == rows * 3 * forward == 23_101_440


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="data.seq_length"):
        CausalLMModule(tiny_config(300), seq_length=64)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        CausalLMModule(tiny_config(300), seq_length=32, eos_token_id=300)


def test_samples_go_to_a_wandb_table():
    from lit_lm.data.tokenizer import TokenizerConfig as TC, train_tokenizer
    tokenizer = train_tokenizer(["the cat sees the dog. the dog sees the cat."] * 50, TC(kind="byte_bpe", vocab_size=270))
    lm = CausalLMModule(tiny_config(tokenizer.get_vocab_size()), seq_length=32)
    wandb = MagicMock(spec=WandbLogger)
    trainer = SimpleNamespace(global_step=7, datamodule=SimpleNamespace(tokenizer=tokenizer), loggers=[wandb])
    TextSamples(prompts=["the cat", ""], max_new_tokens=4).log_samples(trainer, lm)
    kwargs = wandb.log_text.call_args.kwargs
    assert kwargs["key"] == "samples" and kwargs["columns"] == ["step", "prompt", "text"] and kwargs["step"] == 7
    assert [row[:2] for row in kwargs["data"]] == [[7, "the cat"], [7, ""]]
    assert kwargs["data"][0][2].startswith("the cat")
