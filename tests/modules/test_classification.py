"""SequenceClassificationModule: GLUE metrics, a short fit, pretrained starts, checkpoints that reload alone."""

import math

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM
from lit_lm.modules import METRICS, SequenceClassificationModule
from lit_lm.runs import ResumeError
from tests.float_error import UNIT_ROUNDOFF, accumulation_tolerance
from tests.models.helpers import tiny
from tests.models.test_decoder import GPT2
from tests.test_checkpoint import save_run_checkpoint

DROPOUT_OFF = dict(dropout=0.0, attention_dropout=0.0, classifier_dropout=0.0)




@pytest.fixture
def tokenizer_file(tmp_path, bert_tokenizer):
    path = tmp_path / "tokenizer.json"
    bert_tokenizer.save(str(path))
    return path


def scratch(tokenizer_file, **settings) -> SequenceClassificationModule:
    torch.manual_seed(0)
    return SequenceClassificationModule(config=tiny_config(), tokenizer=str(tokenizer_file), **settings)


def tiny_config():
    return tiny(num_layers=1, max_position_embeddings=16)


def trainer(**settings) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **settings)


def separable_rows(n: int, vocab: int, seed: int, regression: bool = False) -> list[dict]:
    """[CLS] then four copies of the class's own token (10 or 11), then random filler: separable by any pooling."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        label = i % 2
        ids = torch.cat([torch.tensor([2]), torch.full((4,), 10 + label), torch.randint(12, vocab, (5,), generator=g)])
        rows.append({"input_ids": ids, "attention_mask": torch.ones(10, dtype=torch.long),
                     "labels": torch.tensor(float(label) if regression else label)})
    return rows


# ---- metrics, against values computed by hand ----
def mcc(predicted: np.ndarray, actual: np.ndarray, classes: int) -> float:
    """Matthews' correlation for K classes (Gorodkin 2004), from the confusion matrix."""
    confusion = np.zeros((classes, classes))
    for a, p in zip(actual, predicted):
        confusion[a, p] += 1
    s, c = confusion.sum(), np.trace(confusion)
    t, p = confusion.sum(1), confusion.sum(0)
    return (c * s - t @ p) / math.sqrt((s ** 2 - p @ p) * (s ** 2 - t @ t))


def ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(float)


def compute(metric: str, num_labels: int, predictions, labels) -> dict[str, float]:
    results = {}
    for name, build in METRICS[metric].metrics.items():
        m = build(num_labels)
        m.update(torch.tensor(predictions), torch.tensor(labels))
        results[name] = m.compute().item()
    return results


def test_each_metric_is_glue_s_on_fixed_predictions():
    predicted, actual = np.array([1, 1, 0, 1, 0, 0, 1, 1]), np.array([1, 0, 0, 1, 1, 0, 1, 1])
    tp, fp, fn = 4, 1, 1
    got = compute("f1_accuracy", 2, predicted, actual)
    assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn)) and got["accuracy"] == pytest.approx(6 / 8)
    assert compute("accuracy", 2, predicted, actual)["accuracy"] == pytest.approx(0.75)
    binary_mcc = (tp * 2 - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (2 + fp) * (2 + fn))  # tn = 2
    assert compute("matthews", 2, predicted, actual)["matthews"] == pytest.approx(binary_mcc)
    assert mcc(predicted, actual, 2) == pytest.approx(binary_mcc)
    three_p, three_a = np.array([0, 1, 2, 2, 1, 0, 2, 1, 0]), np.array([0, 1, 2, 1, 1, 0, 2, 2, 1])
    assert compute("matthews", 3, three_p, three_a)["matthews"] == pytest.approx(mcc(three_p, three_a, 3), abs=1e-6)
    scores = np.array([0.1, 2.5, 1.0, 4.2, 3.3, 0.7], dtype=np.float32)
    truth = np.array([0.0, 2.0, 1.5, 5.0, 2.8, 1.0], dtype=np.float32)
    got = compute("pearson_spearman", 1, scores, truth)
    float32_error = accumulation_tolerance(scores, truth, ranks(scores), ranks(truth))  # against float64 references
    assert got["pearson"] == pytest.approx(np.corrcoef(scores, truth)[0, 1], abs=float32_error)
    assert got["spearman"] == pytest.approx(np.corrcoef(ranks(scores), ranks(truth))[0, 1], abs=float32_error)


def standardize_the_head(module, rows: list[dict]) -> None:
    """An untrained model pools nearly the same vector for every row: its scores sit far from 0 (0.61) and spread
    little (7e-4), the worst case for a float32 correlation (kappa ~ 1e6: tests/float_error.py). Shift and scale the output layer
    so that each logit has mean 0 and sd 1 over ``rows``: the ranking and every correlation stay the same."""
    batch = next(iter(DataLoader(rows, batch_size=len(rows))))
    with torch.no_grad():
        logits = module(batch["input_ids"], batch["attention_mask"]).logits.double()
        mean, sd = logits.mean(0), logits.std(0)
        out = module.model.head.out
        out.weight.copy_(out.weight / sd[:, None].float())
        out.bias.copy_(((out.bias.double() - mean) / sd).float())


@pytest.mark.parametrize(("metric", "num_labels"), [("f1_accuracy", 2), ("pearson_spearman", 1), ("matthews", 3)])
def test_validation_accumulates_the_whole_set_and_scores_the_metrics_mean(tokenizer_file, metric, num_labels):
    module = scratch(tokenizer_file, num_labels=num_labels, metric=metric, **DROPOUT_OFF).eval()
    rows = separable_rows(10, 100, seed=3, regression=num_labels == 1)
    if num_labels == 3:
        for i, row in enumerate(rows):
            row["labels"] = torch.tensor(i % 3)
    standardize_the_head(module, rows)
    [logged] = trainer().validate(module, DataLoader(rows, batch_size=3), verbose=False)
    # the same forward passes as validation's (batches of 3: the same kernels, so the same logits bit for bit), then
    # the metrics over the whole set at once: only how the metrics accumulate differs
    batches = list(DataLoader(rows, batch_size=3))
    with torch.no_grad():
        outs = [module(b["input_ids"], b["attention_mask"], labels=b["labels"]) for b in batches]
    logits, labels = torch.cat([o.logits for o in outs]), torch.cat([b["labels"] for b in batches])
    predictions = module.predictions(logits).numpy()
    whole = compute(metric, num_labels, predictions, labels.numpy())
    scores = predictions.astype(np.float64)
    tolerance = accumulation_tolerance(scores, labels.numpy().astype(np.float64), ranks(scores), ranks(labels.numpy()))
    assert num_labels > 1 or abs(scores.mean()) < scores.std()  # standardized scores: kappa is about 1
    for name, value in whole.items():
        assert logged[f"val/{name}"] == pytest.approx(value, abs=tolerance), name
    assert logged["val/score"] == pytest.approx(sum(whole.values()) / len(whole), abs=tolerance)
    names = [key.removeprefix("val/") for key in logged if key not in ("val/loss", "val/score")]
    assert names == list(METRICS[metric].metrics)  # in GLUE's order: F1 before accuracy, Pearson before Spearman
    loss = sum(o.loss.item() * len(b["labels"]) for o, b in zip(outs, batches)) / len(rows)  # a mean over rows
    assert logged["val/loss"] == pytest.approx(loss, rel=4 * len(rows) * UNIT_ROUNDOFF)


# ---- training ----
def test_forward_and_backward_on_a_tiny_config(tokenizer_file, bert_tokenizer):
    module = scratch(tokenizer_file, num_labels=3)
    assert module.config.vocab_size == bert_tokenizer.get_vocab_size() and module.config.pad_token_id == 0
    assert module.tokenizer.to_str() == bert_tokenizer.to_str() and not module.causal
    batch = {"input_ids": torch.randint(5, 100, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long),
             "token_type_ids": torch.zeros(4, 8, dtype=torch.long), "labels": torch.tensor([0, 1, 2, 1])}
    out = module._run(batch)
    assert out.logits.shape == (4, 3) and out.loss.item() == pytest.approx(math.log(3), abs=0.3)
    out.loss.backward()
    assert all(p.grad is not None for p in module.model.parameters())
    with pytest.raises(ValueError, match="a batch has label 3 but model.num_labels is 3 .*labels 0 .. 2"):
        module._run({**batch, "labels": torch.tensor([0, 3, 1, 1])})


def test_a_short_fit_learns_a_separable_task_and_reloads_alone_from_its_checkpoint(tmp_path, tokenizer_file):
    module = scratch(tokenizer_file, optimizer={"lr": 3e-3, "weight_decay": 0.01})
    train, val = DataLoader(separable_rows(64, 100, 0), batch_size=8, shuffle=True), \
        DataLoader(separable_rows(24, 100, 1), batch_size=8)
    run = trainer(max_steps=24, num_sanity_val_steps=0, check_val_every_n_epoch=1)
    [before] = trainer().validate(module, val, verbose=False)
    run.fit(module, train, val)
    [after] = trainer().validate(module, val, verbose=False)
    assert after["val/loss"] < 0.5 * before["val/loss"]
    assert after["val/accuracy"] >= 0.95 and after["val/score"] == after["val/accuracy"]

    path = tmp_path / "finetuned.ckpt"
    run.save_checkpoint(path)
    tokenizer_file.unlink()  # the reloaded module needs nothing but the checkpoint
    loaded = SequenceClassificationModule.load_from_checkpoint(path).eval()
    assert loaded.tokenizer.to_str() == module.tokenizer.to_str() and loaded.config == module.config
    batch = next(iter(val))
    with torch.no_grad():
        assert torch.equal(loaded(batch["input_ids"], batch["attention_mask"]).logits,
                           module.eval()(batch["input_ids"], batch["attention_mask"]).logits)

    tokenizer_file.write_text(module.tokenizer.to_str())
    other = scratch(tokenizer_file, num_labels=3)
    with pytest.raises(ResumeError, match="model.init_args.num_labels: 2 in the checkpoint, 3 now"):
        other.on_load_checkpoint(torch.load(path, weights_only=False))


# ---- pretrained starts ----
@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
def test_init_from_loads_the_body_and_pretrained_weights_false_does_not(tmp_path, causal, bert_tokenizer,
                                                                        gpt_tokenizer):
    tokenizer = gpt_tokenizer if causal else bert_tokenizer
    torch.manual_seed(5)
    config = tiny(**(GPT2 if causal else {}), vocab_size=tokenizer.get_vocab_size(), dropout=0.3)
    lm = (DecoderForCausalLM if causal else EncoderForMaskedLM)(config)
    path = save_run_checkpoint(tmp_path / "pretrained.ckpt", lm, tokenizer)
    torch.manual_seed(0)
    module = SequenceClassificationModule(init_from=str(path), dropout=0.05)
    assert module.causal == causal and module.hparams.causal == causal
    assert module.hparams.pooling == ("last" if causal else "first")
    assert module.config.dropout == 0.05 and module.config.hidden_size == config.hidden_size  # the recipe's dropout
    assert module.tokenizer.to_str() == tokenizer.to_str() and "init_from" not in module.hparams
    for name, value in lm.body.state_dict().items():
        assert torch.equal(module.model.body.state_dict()[name], value), name
    torch.manual_seed(0)
    baseline = SequenceClassificationModule(init_from=str(path), pretrained_weights=False, dropout=0.05)
    assert baseline.config == module.config and baseline.causal == causal
    assert not torch.equal(baseline.model.body.token_embedding.weight, lm.body.token_embedding.weight)
    assert torch.equal(baseline.model.head.out.weight, module.model.head.out.weight)  # the same fresh head


def test_a_decoder_reads_its_last_real_token_so_padding_changes_nothing(tmp_path, gpt_tokenizer):
    torch.manual_seed(0)
    lm = DecoderForCausalLM(tiny(**GPT2, vocab_size=gpt_tokenizer.get_vocab_size(), max_position_embeddings=64))
    path = save_run_checkpoint(tmp_path / "gpt.ckpt", lm, gpt_tokenizer)
    module = SequenceClassificationModule(init_from=str(path), **DROPOUT_OFF).eval()
    short = torch.tensor(gpt_tokenizer.encode("the cat sees the dog.").ids)
    long = torch.tensor(gpt_tokenizer.encode("the quick bird follows the dark river.").ids)
    ids = torch.zeros(2, len(long), dtype=torch.long)  # right padding, with a pad id that is a real token
    ids[0, :len(short)], ids[1] = short, long
    mask = (torch.arange(len(long)) < torch.tensor([[len(short)], [len(long)]])).long()
    with torch.no_grad():
        batched = module(ids, mask).logits
        assert torch.allclose(batched[0], module(short[None]).logits[0], atol=1e-5)
        assert torch.allclose(batched[1], module(long[None]).logits[0], atol=1e-5)


def test_settings_that_cannot_work_are_clear_errors(tmp_path, tokenizer_file, gpt_tokenizer):
    with pytest.raises(ValueError, match="model.metric pearson_spearman needs exactly 1 .* model.num_labels is 2"):
        scratch(tokenizer_file, metric="pearson_spearman")
    with pytest.raises(ValueError, match="model.metric f1_accuracy needs exactly 2 labels"):
        scratch(tokenizer_file, metric="f1_accuracy", num_labels=3)
    with pytest.raises(ValueError, match="model.metric accuracy needs at least 2"):
        scratch(tokenizer_file, num_labels=1)
    with pytest.raises(ValueError, match="model.metric must be one of"):
        scratch(tokenizer_file, metric="bleu")
    with pytest.raises(ValueError, match="model.init_args.tokenizer is required without model.init_args.init_from"):
        SequenceClassificationModule(config=tiny_config())
    small = save_run_checkpoint(tmp_path / "small.ckpt", EncoderForMaskedLM(tiny()))  # vocab 50, no tokenizer
    with pytest.raises(ValueError, match="holds no tokenizer; .*--model.init_args.tokenizer"):
        SequenceClassificationModule(init_from=str(small))
    gpt_file = tmp_path / "gpt.json"
    gpt_tokenizer.save(str(gpt_file))
    with pytest.raises(ValueError, match="tokenizer has 280 tokens but the model's vocabulary 50"):
        SequenceClassificationModule(init_from=str(small), tokenizer=str(gpt_file))
    with pytest.raises(ValueError, match="model.init_args.tokenizer: '.*nothing.json' is neither a tokenizer.json"):
        SequenceClassificationModule(config=tiny_config(), tokenizer=str(tmp_path / "nothing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="model.init_args.tokenizer: .*bad.json' is not a valid tokenizer.json"):
        SequenceClassificationModule(config=tiny_config(), tokenizer=str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="model.init_args.init_from: .* does not exist"):
        SequenceClassificationModule(init_from=str(tmp_path / "missing"))


class TinyTextData(L.LightningDataModule):
    """The least a pretraining run's data module offers: token rows and the tokenizer that made them."""

    def __init__(self, tokenizer, rows: list[dict]) -> None:
        super().__init__()
        self.tokenizer, self.rows = tokenizer, rows

    def train_dataloader(self):
        return DataLoader(self.rows, batch_size=4)


def test_a_masked_lm_run_s_own_checkpoint_starts_a_fine_tune_with_its_tokenizer(tmp_path, bert_tokenizer):
    from lit_lm.modules import MaskedLMModule

    torch.manual_seed(0)
    mlm = MaskedLMModule(tiny(vocab_size=bert_tokenizer.get_vocab_size(), num_layers=1), seq_length=10,
                         mask_token_id=bert_tokenizer.token_to_id("[MASK]"))
    rows = [{"input_ids": row["input_ids"]} for row in separable_rows(8, 100, seed=0)]
    run = trainer(max_steps=2)
    run.fit(mlm, datamodule=TinyTextData(bert_tokenizer, rows))
    run.save_checkpoint(tmp_path / "mlm.ckpt")
    module = SequenceClassificationModule(init_from=str(tmp_path / "mlm.ckpt"))
    assert module.tokenizer.to_str() == bert_tokenizer.to_str() and not module.causal
    for name, value in mlm.model.body.state_dict().items():
        assert torch.equal(module.model.body.state_dict()[name], value), name


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize(("metric", "num_labels"), [("matthews", 2), ("pearson_spearman", 1)])
@pytest.mark.slow
def test_fine_tuning_runs_under_mixed_precision(tokenizer_file, precision, metric, num_labels):
    module = scratch(tokenizer_file, metric=metric, num_labels=num_labels, optimizer={"lr": 1e-3})
    rows = separable_rows(16, 100, seed=0, regression=num_labels == 1)
    from lit_lm.cli import Trainer  # installs lit_lm.precision.MixedPrecision: fp16 with a loss scale on CPU too

    run = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, max_steps=2, precision=precision, num_sanity_val_steps=0,
                  gradient_clip_val=1.0)
    run.fit(module, DataLoader(rows, batch_size=8), DataLoader(rows, batch_size=8))
    assert run.precision == precision
    logged = run.callback_metrics
    assert math.isfinite(logged["train/loss"].item()) and math.isfinite(logged["val/score"].item())


@pytest.mark.parametrize("num_labels", [2, 1])
def test_sophia_fine_tunes_a_classifier_and_a_regressor(tokenizer_file, num_labels):
    """Sophia's curvature from sampled labels (a class from the softmax; a score from N(prediction, 1/2)) on every
    step: the separable task is learnt."""
    pytest.importorskip("pytorch_optimizer")
    metric = "accuracy" if num_labels == 2 else "pearson_spearman"
    module = scratch(tokenizer_file, metric=metric, num_labels=num_labels,
                     optimizer={"name": "sophia", "lr": 3e-3, "hessian_update_period": 1})
    regression = num_labels == 1
    train, val = DataLoader(separable_rows(64, 100, 0, regression), batch_size=8, shuffle=True), \
        DataLoader(separable_rows(24, 100, 1, regression), batch_size=8)
    run = trainer(max_steps=24, num_sanity_val_steps=0, check_val_every_n_epoch=1)
    [before] = trainer().validate(module, val, verbose=False)
    run.fit(module, train, val)
    [after] = trainer().validate(module, val, verbose=False)
    assert after["val/loss"] < 0.5 * before["val/loss"], (before, after)
    assert after["val/score"] > 0.9
    optimizer = run.optimizers[0]
    assert all(float(optimizer.state[p]["hessian_moment"].sum()) > 0 for p in module.model.head.parameters())
