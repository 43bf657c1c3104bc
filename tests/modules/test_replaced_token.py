"""Replaced-token detection (ELECTRA): the replaced labels, embedding sharing (plain and GDES), the generator's shape
and its errors, and a run through train.py that learns, resumes, exports its discriminator and fine-tunes it."""

import csv
from pathlib import Path

import pytest
import torch

import lit_lm.models.replaced_token as rtd
from lit_lm.checkpoint import Checkpoint
from lit_lm.cli import LitLMCLI, main
from lit_lm.models import TransformerConfig
from lit_lm.models.output import IGNORE_INDEX
from lit_lm.models.replaced_token import GeneratorShape, discriminator_as_masked_lm
from lit_lm.modules import ReplacedTokenDetectionModule, SequenceClassificationModule
from tests.conftest import ROOT, InterruptAt, write_corpus

VOCAB, SEQ = 60, 16


def config(**overrides) -> TransformerConfig:
    return TransformerConfig(**{**dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                                       intermediate_size=64, max_position_embeddings=SEQ, type_vocab_size=0,
                                       dropout=0.0, attention_dropout=0.0, norm_placement="pre", final_norm=True),
                                **overrides})


def module(sparse: bool = True, **kw) -> ReplacedTokenDetectionModule:
    return ReplacedTokenDetectionModule(config(sparse_prediction=sparse), special_token_ids=[0, 1, 2, 3, 4],
                                        mask_token_id=4, seq_length=SEQ, mask_rate=0.3, **kw)


def batch(rows: int = 4) -> torch.Tensor:
    return torch.randint(5, VOCAB, (rows, SEQ), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("sparse", [False, True])
def test_a_sampled_token_equal_to_the_original_counts_as_original(sparse, monkeypatch):
    lm = module(sparse)
    ids = batch()
    masked, labels = lm._mask(ids, torch.Generator().manual_seed(1))
    labelled = (labels != IGNORE_INDEX).reshape(-1)
    slots = labelled.nonzero().squeeze(-1)  # sparse prediction: the labelled positions in row-major order

    def every_other_slot_draws_the_original(logits, banned_ids=None):
        n = len(logits)
        position = torch.arange(n) if not sparse else torch.cat([slots, torch.zeros(n, dtype=torch.long)])[:n]
        original = ids.reshape(-1)[position]
        other = (original - 5 + 1) % (VOCAB - 5) + 5  # a different non-special token
        return torch.where(torch.arange(n) % 2 == 0, original, other)

    monkeypatch.setattr(rtd, "sample_replacements", every_other_slot_draws_the_original)
    out = lm.model(ids, masked, labels)
    expected = torch.zeros(ids.numel(), dtype=torch.bool)
    rank = slots if not sparse else torch.arange(len(slots))
    expected[slots] = rank % 2 == 1  # the odd slots drew another token: replaced; the even ones drew the original
    assert labelled.sum() > 4 and expected.any() and (labelled & ~expected).any()
    assert torch.equal(out.replaced.reshape(-1), expected)
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, out.generator_loss + 50.0 * out.discriminator_loss)


def test_the_generator_never_samples_special_tokens_and_replaces_only_masked_positions():
    torch.manual_seed(0)
    lm = module(sparse=True)
    ids = batch(8)
    masked, labels = lm._mask(ids, torch.Generator().manual_seed(3))
    out = lm.model(ids, masked, labels)
    assert out.replaced.any()
    assert not (out.replaced & (labels == IGNORE_INDEX)).any()
    logits = torch.zeros(50, VOCAB)
    logits[:, :5] = 100.0  # the special tokens are by far the likeliest: still never drawn
    assert rtd.sample_replacements(logits, torch.arange(5)).min() >= 5


def test_the_generator_is_a_fraction_of_the_discriminator_and_bad_settings_are_named():
    lm = module(generator_width_fraction=0.5, generator_num_layers=1)
    generator = lm.model.generator
    assert generator.config.num_layers == 1 and generator.config.layer_widths == [16]
    assert generator.config.num_heads == 2  # the discriminator's head size, 8
    assert generator.encoder.blocks[0].ffn is not None  # built: its feed-forward width scales too
    assert sum(p.numel() for p in generator.encoder.blocks.parameters()) < \
        sum(p.numel() for p in lm.model.discriminator.encoder.blocks.parameters()) / 4
    for kwargs, setting in (({"generator_width_fraction": 0.0}, "generator_width_fraction"),
                            ({"generator_width_fraction": 1.5}, "generator_width_fraction"),
                            ({"generator_num_heads": 3}, "generator_num_heads"),
                            ({"generator_num_layers": 0}, "generator_num_layers"),
                            ({"embedding_sharing": "tied"}, "embedding_sharing"),
                            ({"discriminator_loss_weight": 0.0}, "discriminator_loss_weight")):
        with pytest.raises(ValueError, match=f"model.{setting}"):
            module(**kwargs)
    with pytest.raises(ValueError, match="generator_width_fraction"):  # rotary needs every width at hidden_size
        ReplacedTokenDetectionModule(config(relative_positions="rotary", position_embedding="none"),
                                     special_token_ids=[0, 4], seq_length=SEQ)


def test_shared_embeddings_are_one_tensor_trained_by_both_losses():
    lm = module(embedding_sharing="shared")
    generator, discriminator = lm.model.generator.encoder, lm.model.discriminator.encoder
    assert discriminator.token_embedding.weight is generator.token_embedding.weight
    assert discriminator.position_embedding.weight is generator.position_embedding.weight
    assert lm.model.generator.head.decoder.weight is generator.token_embedding.weight  # tied
    optimizer = lm.configure_optimizers()
    params = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(params) == len(set(params)) == len(list(lm.model.parameters()))
    ids = batch()
    masked, labels = lm._mask(ids, torch.Generator().manual_seed(1))
    lm.model(ids, masked, labels).discriminator_loss.backward()
    assert generator.token_embedding.weight.grad.abs().sum() > 0  # the discriminator pulls on the shared table


def test_gdes_the_discriminator_loss_trains_only_the_delta_and_the_export_holds_the_sum():
    lm = module(embedding_sharing="gradient_disentangled")
    detector = lm.model
    generator = detector.generator
    embedding = detector.discriminator.encoder.token_embedding
    assert torch.count_nonzero(embedding.delta_weight) == 0  # E_delta starts at zero
    assert not any("generator" in name for name in detector.discriminator.state_dict())  # the deltas only
    ids = batch()
    masked, labels = lm._mask(ids, torch.Generator().manual_seed(1))
    detector(ids, masked, labels).discriminator_loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in generator.parameters())  # no gradient into the generator
    assert embedding.delta_weight.grad.abs().sum() > 0
    assert detector.discriminator.encoder.position_embedding.delta_weight.grad.abs().sum() > 0
    detector.zero_grad()
    detector(ids, masked, labels).generator_loss.backward()
    assert generator.encoder.token_embedding.weight.grad.abs().sum() > 0 and embedding.delta_weight.grad is None
    with torch.no_grad():
        embedding.delta_weight.normal_()
    exported = discriminator_as_masked_lm(detector)
    torch.testing.assert_close(exported.encoder.token_embedding.weight,
                               generator.encoder.token_embedding.weight + embedding.delta_weight)
    torch.testing.assert_close(exported.head.decoder.weight, exported.encoder.token_embedding.weight)  # tied
    with torch.no_grad():
        ours = detector.discriminator.encoder(ids).hidden_states
        torch.testing.assert_close(exported.encoder(ids).hidden_states, ours)


def test_training_flops_count_both_networks_and_leave_no_trace():
    lm = module()
    b = {"input_ids": batch()}
    state = torch.get_rng_state()
    flops = lm.training_flops(b)
    assert torch.equal(torch.get_rng_state(), state)
    shape = GeneratorShape(0.25)
    assert shape.config(lm.config).layer_widths == [8, 8]
    h, f, layers = 32, 64, 2
    discriminator_body = 3 * 4 * SEQ * 2 * layers * (4 * h * h + 2 * h * f + 2 * SEQ * h)
    assert flops > discriminator_body  # and the generator, the heads on top


# ---- through train.py ----
TINY = ["--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--model.class_path", "lit_lm.modules.ReplacedTokenDetectionModule",
        "--model.init_args.config.hidden_size", "32", "--model.init_args.config.num_layers", "2",
        "--model.init_args.config.num_heads", "2", "--model.init_args.config.intermediate_size", "64",
        # post-LN with Q/K/V biases: a built-in BertForMaskedLM represents the exported discriminator
        "--model.init_args.config.norm_placement", "post", "--model.init_args.config.final_norm", "false",
        "--model.init_args.config.qkv_bias", "true", "--model.init_args.config.norm_eps", "1e-12",
        "--model.init_args.generator_width_fraction", "0.5", "--model.init_args.mask_rate", "0.15",
        "--data.init_args.tokenizer.vocab_size", "200", "--data.init_args.seq_length", "32",
        "--data.init_args.batch_size", "8", "--data.init_args.split", "paragraph", "--data.init_args.num_workers", "0",
        "--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "10", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.precision", "32-true", "--trainer.logger", "lit_lm.loggers.CSVLogger",
        "--trainer.callbacks.OneCycleLR=null"]


def metrics(version: Path) -> list[dict]:
    with open(version / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run of the objective: interrupted (Ctrl-C) at step 12, then resumed with --ckpt_path last up to 16."""
    folder = tmp_path_factory.mktemp("electra")
    corpus = write_corpus(folder / "corpus", n_files=6, paragraphs=30)  # about 28 batches: one epoch holds 16
    args = [*TINY, "--data.init_args.paths", f"[{corpus}]", "--trainer.default_root_dir", str(folder / "run")]
    first = LitLMCLI(args=[*args, "--trainer.max_steps", "16"], run=False)
    first.trainer.callbacks.append(InterruptAt(step=12))
    with pytest.raises(SystemExit):  # the recipe's checkpoint callback saves last.ckpt on the way out
        first.trainer.fit(first.model, datamodule=first.datamodule)
    resumed = main(["fit", *args, "--trainer.max_steps", "16", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 16
    return folder / "run"


@pytest.mark.slow
def test_train_py_learns_and_resumes_with_the_objective(run):
    first, second = (metrics(run / "logs" / f"version_{i}") for i in (0, 1))
    losses = [float(r["train/loss"]) for r in first if r.get("train/loss")]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 2.0  # the loss falls over 12 steps (from about 40)
    for name in ("train/generator_loss", "train/discriminator_loss"):
        assert any(r.get(name) for r in first)
    validated = [r for r in first if r.get("val/rtd_acc")]
    assert validated and 0.5 < float(validated[-1]["val/rtd_acc"]) <= 1.0
    assert all(r.get(n) for n in ("val/loss", "val/generator_loss", "val/discriminator_loss") for r in validated)
    steps = [int(r["step"]) for r in second if r.get("train/loss")]
    assert steps and min(steps) >= 12  # the resumed run went on from step 12


@pytest.mark.slow
def test_the_discriminator_exports_to_a_transformers_folder_with_the_same_hidden_states(run, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lit_lm.hf.__main__ import main as hf_main

    hf_main(["export", str(run), str(tmp_path / "hf")])
    hf_model = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf_model).__name__ == "BertForMaskedLM"
    checkpoint = Checkpoint.read(run)
    ours = checkpoint.model()
    ids = torch.randint(5, ours.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = hf_model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(theirs, ours.encoder(ids).hidden_states, atol=1e-5, rtol=1e-4)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.mask_token == "[MASK]"


@pytest.mark.slow
def test_the_suite_fine_tunes_the_discriminator_of_a_run(run, tmp_path):
    from lit_lm.glue import run_suite
    from tests.glue.test_suite import SMALL, write_task

    classifier = SequenceClassificationModule(init_from=str(run))
    discriminator = Checkpoint.read(run).model()
    for name, value in discriminator.encoder.state_dict().items():
        torch.testing.assert_close(classifier.model.encoder.state_dict()[name], value)  # starts from its body
    results = run_suite([f"electra={run}"], [str(write_task(tmp_path / "task", "bright", rows=48))],
                        tmp_path / "out", [*SMALL, "--trainer.max_epochs", "1"])
    assert "| bright | accuracy |" in results.markdown()
    assert 0.0 <= results.get("electra", "bright").score <= 1.0


def test_a_sequence_length_warmup_trains_windows_of_the_rows_every_token_once(monkeypatch):
    lm = module()
    ids, seen = batch(rows=2), []
    run_model = lm.run_model

    def recording_run_model(**inputs):
        seen.append(inputs)
        return run_model(**inputs)

    monkeypatch.setattr(lm, "run_model", recording_run_model)
    lm.train_length = SEQ // 4  # what lit_lm.callbacks.SequenceLengthWarmup sets early in a run
    monkeypatch.setattr(lm, "log", lambda *args, **kwargs: None)
    loss = lm.training_step({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 0)
    assert torch.isfinite(loss) and lm.windows_taken
    assert torch.equal(seen[0]["input_ids"], ids.reshape(8, SEQ // 4))  # each row cut in order, nothing dropped
    assert seen[0]["attention_mask"].shape == (8, SEQ // 4)
    lm.train_length = None
    lm.training_step({"input_ids": ids}, 1)
    assert torch.equal(seen[1]["input_ids"], ids)
