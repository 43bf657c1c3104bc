import random
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from lit_lm.data.classification import ClassificationDataModule, PadBatch, encode_rows
from lit_lm.data.labelled import LabelledFileError, read_labelled
from lit_lm.data.tokenizer import SpecialTokens, TokenizerConfig, train_tokenizer
from tests.conftest import sentence, shared_data

FAMILIES = {"bert": dict(kind="wordpiece"), "roberta": dict(kind="byte_bpe", special_tokens="roberta"),
            "gpt": dict(kind="byte_bpe")}


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Tokenizer]:
    rng = random.Random(0)
    texts = [" ".join(sentence(rng) for _ in range(3)) for _ in range(200)]
    return {name: train_tokenizer(texts, TokenizerConfig(vocab_size=300, **kw)) for name, kw in FAMILIES.items()}


def write_task(folder: Path, rows: int = 40, pairs: bool = False, labels=(0, 1), seed: int = 0,
               name: str = "train.tsv") -> Path:
    """A TSV with a header: sentence1 [sentence2] label, labels cycling through `labels`."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    head = "sentence1\tsentence2\tlabel" if pairs else "sentence1\tlabel"
    texts = [[sentence(rng)] + ([sentence(rng) + " " + sentence(rng)] if pairs else []) for _ in range(rows)]
    lines = [head] + ["\t".join(t + [str(labels[i % len(labels)])]) for i, t in enumerate(texts)]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def module(tmp_path, pairs=False, labels=(0, 1), val_labels=None, **settings) -> ClassificationDataModule:
    train = write_task(tmp_path, pairs=pairs, labels=labels)
    val = write_task(tmp_path, rows=12, pairs=pairs, labels=val_labels or labels, seed=1, name="val.tsv")
    columns = ["sentence1", "sentence2"] if pairs else ["sentence1"]
    return ClassificationDataModule(str(train), str(val), text_columns=columns, label_column="label", **settings)


# ---- what the CLI links into the model, without a tokenizer ----
def test_num_labels_metric_and_names_need_no_tokenizer(tmp_path):
    dm = module(tmp_path, labels=(0, 2, 1))
    assert dm.tokenizer is None and dm.num_labels == 3 and dm.metric == "accuracy" and dm.label_names is None
    dm = module(tmp_path / "s", labels=("pos", "neg"), metric="f1_accuracy")
    assert dm.num_labels == 2 and dm.label_names == ["neg", "pos"] and dm.metric == "f1_accuracy"
    dm = ClassificationDataModule(dm.train_file, dm.val_file, ["sentence1"], "label", labels=["pos", "neg", "meh"])
    assert dm.num_labels == 3 and dm.label_names == ["pos", "neg", "meh"]
    assert dm.val_rows.labels == [0, 1] * 6  # names in the given order
    dm = module(tmp_path / "r", labels=(0.5, 4.25), task="regression")
    assert dm.num_labels == 1 and dm.metric == "pearson_spearman" and dm.label_names is None
    assert dm.train_rows.labels[:2] == [0.5, 4.25]


def test_metric_must_fit_the_task(tmp_path):
    with pytest.raises(LabelledFileError, match="data.metric matthews does not score a regression task"):
        module(tmp_path, task="regression", metric="matthews")
    with pytest.raises(LabelledFileError, match="does not score a classification task"):
        module(tmp_path, metric="pearson_spearman")
    with pytest.raises(LabelledFileError, match="f1_accuracy scores two classes; the train file has 3"):
        _ = module(tmp_path, labels=(0, 1, 2), metric="f1_accuracy").metric
    with pytest.raises(LabelledFileError, match="data.labels names classes"):
        ClassificationDataModule("t.tsv", "v.tsv", task="regression", labels=["a"])


def test_validation_labels_must_be_trains(tmp_path):
    dm = module(tmp_path, labels=(0, 1), val_labels=(0, 1, 2))  # 2 is unseen in train: num_labels is 2
    assert dm.num_labels == 2 and len(dm.val_rows) == 8
    assert dm.val_rows.skipped == {"unknown label": 4} and dm.val_rows.first_bad == {"unknown label": 4}
    dm = module(tmp_path / "s", labels=("a", "b"), val_labels=("a", "c"))
    assert len(dm.val_rows) == 6 and dm.val_rows.skipped == {"unknown label": 6}
    assert dm.val_rows.label_names == ["a", "b"]
    dm = module(tmp_path / "e", labels=("a", "b"), val_labels=("a", "c"), bad_rows="error")
    with pytest.raises(LabelledFileError, match=r"val.tsv: line 3: unknown label: label 'c' is not one of \['a', 'b'"):
        _ = dm.val_rows
    dm = module(tmp_path / "t", labels=(0, 1), val_labels=("a", "b"))  # integer train labels, string validation
    with pytest.raises(LabelledFileError, match="val.tsv.*no usable rows"):
        _ = dm.val_rows


# ---- encodings the way each family expects ----
def tokens(tokenizer: Tokenizer, ids) -> list[str]:
    return [tokenizer.id_to_token(int(i)) for i in ids]


def test_bert_pairs_have_cls_sep_and_segment_ids(tokenizers, tmp_path):
    tok = tokenizers["bert"]
    rows = read_labelled(write_task(tmp_path, rows=3, pairs=True), [0, 1], 2)
    ids, types, label = encode_rows(rows, tok, causal=False, max_length=128)[0]
    a = tok.encode(rows.texts[0][0], add_special_tokens=False).ids
    b = tok.encode(rows.texts[0][1], add_special_tokens=False).ids
    assert ids.tolist() == [tok.token_to_id("[CLS]"), *a, tok.token_to_id("[SEP]"), *b, tok.token_to_id("[SEP]")]
    assert types.tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1) and label == 0
    single = read_labelled(write_task(tmp_path / "one", rows=2), [0], 1)
    ids, types, _ = encode_rows(single, tok, causal=False, max_length=128)[1]
    assert tokens(tok, ids)[0] == "[CLS]" and tokens(tok, ids)[-1] == "[SEP]" and not types.any()


def test_roberta_pairs_have_double_separator(tokenizers, tmp_path):
    tok = tokenizers["roberta"]
    rows = read_labelled(write_task(tmp_path, rows=3, pairs=True), [0, 1], 2)
    ids, types, _ = encode_rows(rows, tok, causal=False, max_length=128)[0]
    a = tok.encode(rows.texts[0][0], add_special_tokens=False).ids
    b = tok.encode(rows.texts[0][1], add_special_tokens=False).ids
    s, e = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    assert ids.tolist() == [s, *a, e, e, *b, e] and not types.any()


def test_pairs_for_an_encoder_without_separators_are_warned_about(tokenizers, tmp_path):
    rows = read_labelled(write_task(tmp_path, rows=2, pairs=True), [0, 1], 2)
    with pytest.warns(UserWarning, match="adds no separator"):
        ids, _, _ = encode_rows(rows, tokenizers["gpt"], causal=False, max_length=128)[0]
    assert ids.tolist() == tokenizers["gpt"].encode(*rows.texts[0]).ids


def test_decoder_examples_end_with_end_of_text(tokenizers, tmp_path):
    tok = tokenizers["gpt"]
    eos = tok.token_to_id("<|endoftext|>")
    rows = read_labelled(write_task(tmp_path, rows=3, pairs=True), [0, 1], 2)
    ids, types, _ = encode_rows(rows, tok, causal=True, max_length=128)[0]
    a = tok.encode(rows.texts[0][0], add_special_tokens=False).ids
    b = tok.encode(rows.texts[0][1], add_special_tokens=False).ids
    assert ids.tolist() == [*a, eos, *b, eos] and not types.any()
    for length in (8, 9, 15):  # truncated: the texts lose tokens, never the final end-of-text
        ids, _, _ = encode_rows(rows, tok, causal=True, max_length=length)[1]
        assert len(ids) == length and ids[-1] == eos and (ids == eos).sum() == 2
    single = read_labelled(write_task(tmp_path / "one", rows=2), [0], 1)
    ids, _, _ = encode_rows(single, tok, causal=True, max_length=5)[0]
    assert ids.tolist() == tok.encode(single.texts[0][0]).ids[:4] + [eos]


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("length", [8, 13, 20])
def test_encoder_truncation_is_tokenizers_longest_first_and_leaves_the_callers_tokenizer(tokenizers, tmp_path,
                                                                                         family, length):
    tok = tokenizers[family]
    rows = read_labelled(write_task(tmp_path, rows=10, pairs=True), [0, 1], 2)
    encoded = encode_rows(rows, tok, causal=False, max_length=length)
    reference = Tokenizer.from_str(tok.to_str())
    reference.enable_truncation(max_length=length, strategy="longest_first")
    for i, expected in enumerate(reference.encode_batch(rows.texts)):
        ids, types, _ = encoded[i]
        assert len(ids) == length and ids.tolist() == expected.ids and types.tolist() == expected.type_ids
    assert tok.truncation is None and tok.padding is None


def test_batches_pad_right_to_the_longest_row(tokenizers, tmp_path):
    dm = module(tmp_path, pairs=True, batch_size=4, eval_batch_size=5, max_length=24)
    dm.attach(tokenizers["roberta"])
    pad = tokenizers["roberta"].token_to_id("<pad>")
    val = dm.encoded("val")
    for start, batch in zip(range(0, 12, 5), dm.val_dataloader()):  # in file order
        lengths = [len(val[i][0]) for i in range(start, min(start + 5, 12))]
        assert batch["input_ids"].shape == (len(lengths), max(lengths)) and max(lengths) <= 24
        assert batch["attention_mask"].sum(1).tolist() == lengths
        for row, n in enumerate(lengths):
            assert batch["input_ids"][row, :n].tolist() == val[start + row][0].tolist()
            assert (batch["input_ids"][row, n:] == pad).all() and (batch["attention_mask"][row, n:] == 0).all()
        assert batch["labels"].tolist() == [(start + r) % 2 for r in range(len(lengths))]
        assert all(v.dtype == torch.long for v in batch.values())
    batch = PadBatch(0)([(val[0][0], val[0][1], torch.tensor(1.5).numpy())])
    assert batch["labels"].dtype == torch.float32


def test_regression_batches_have_float_labels(tokenizers, tmp_path):
    dm = module(tmp_path, labels=(0.5, 3.0), task="regression")
    dm.attach(tokenizers["bert"])
    batch = next(iter(dm.val_dataloader()))
    assert batch["labels"].dtype == torch.float32 and batch["labels"][:2].tolist() == [0.5, 3.0]


def test_training_order_is_shuffled_and_seeded_and_max_train_rows_cuts(tokenizers, tmp_path):
    dm = module(tmp_path, batch_size=40)
    dm.attach(tokenizers["bert"])

    def order(seed: int) -> list[tuple[int, ...]]:
        L.seed_everything(seed, verbose=False)
        batch = next(iter(dm.train_dataloader()))
        return [tuple(row[mask == 1].tolist()) for row, mask in zip(batch["input_ids"], batch["attention_mask"])]

    in_file = [tuple(dm.encoded("train")[i][0].tolist()) for i in range(40)]
    assert order(1) == order(1) and order(1) != order(2) and order(1) != in_file and sorted(order(1)) == sorted(in_file)
    assert [tuple(r.tolist()) for b in dm.val_dataloader() for r in b["input_ids"][:1]] == [
        tuple(dm.encoded("val")[0][0].tolist())]  # validation keeps the file's order
    dm = module(tmp_path / "cut", max_train_rows=7)
    dm.attach(tokenizers["bert"])
    assert len(dm.encoded("train")) == 7 and dm.num_labels == 2 and dm.train_rows.rows_read == 40


# ---- in a Trainer: the model's tokenizer, family and limits ----
class StubClassifier(L.LightningModule):
    """Just what the data module reads from a fine-tuning module: tokenizer, causal, config, num_labels."""

    def __init__(self, tokenizer: Tokenizer | None, num_labels: int = 2, causal: bool = False, positions: int = 64):
        super().__init__()
        self.tokenizer, self.causal, self.num_labels = tokenizer, causal, num_labels
        self.config = SimpleNamespace(max_sequence_length=positions)
        self.embedding = torch.nn.Embedding(400, 8)
        self.head = torch.nn.Linear(8, num_labels)
        self.batches: list[dict] = []

    def training_step(self, batch, index):
        self.batches.append(batch)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (self.embedding(batch["input_ids"]) * mask).sum(1) / mask.sum(1)
        return F.cross_entropy(self.head(pooled), batch["labels"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(model: L.LightningModule, dm: ClassificationDataModule, steps: int = 2) -> None:
    L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(model, dm)


def test_setup_takes_the_models_tokenizer_family_and_position_limit(tokenizers, tmp_path):
    dm = module(tmp_path, pairs=True, batch_size=4)
    model = StubClassifier(tokenizers["gpt"], causal=True, positions=12)
    fit(model, dm)
    assert dm.tokenizer is tokenizers["gpt"] and dm.causal and dm.length_limit == 12
    eos = tokenizers["gpt"].token_to_id("<|endoftext|>")
    for batch in model.batches:
        assert batch["input_ids"].shape[1] == 12 and (batch["input_ids"][:, -1] == eos).all()


def test_setup_refuses_a_model_without_tokenizer_or_with_too_few_labels(tokenizers, tmp_path):
    with pytest.raises(LabelledFileError, match="the model has no tokenizer.*model.init_args.tokenizer"):
        fit(StubClassifier(None), module(tmp_path))
    with pytest.raises(LabelledFileError, match="label id 2 .* model.init_args.num_labels 2; set it to 3"):
        fit(StubClassifier(tokenizers["bert"], num_labels=2), module(tmp_path / "3", labels=(0, 1, 2)))
    model = StubClassifier(tokenizers["bert"], num_labels=2)  # num_labels only as a hyperparameter
    del model.num_labels
    model.save_hyperparameters({"num_labels": 2})
    with pytest.raises(LabelledFileError, match="set it to 3"):
        fit(model, module(tmp_path / "h", labels=(0, 1, 2)))
    with pytest.raises(LabelledFileError, match="regression task needs 1"):
        fit(StubClassifier(tokenizers["bert"]), module(tmp_path / "r", labels=(0.5, 1), task="regression"))


def test_decoder_needs_an_end_of_text_token(tokenizers, tmp_path):
    dm = module(tmp_path)
    with pytest.raises(LabelledFileError, match="end-of-text"):
        dm.attach(tokenizers["bert"], causal=True)


# ---- the real GLUE files ----
GLUE = {  # task: settings, rows in train and dev
    "SST-2": (dict(text_columns=["sentence"], label_column="label"), 67349, 872),
    "CoLA": (dict(text_columns=[3], label_column=1, header=False, metric="matthews"), 8551, 527),
    "MRPC": (dict(text_columns=["#1 String", "#2 String"], label_column="Quality", metric="f1_accuracy"), 3668, 408),
}


@pytest.mark.parametrize("task", GLUE)
def test_real_glue_tasks(task, tokenizers):
    folder = shared_data(f"glue/{task}")
    settings, train, dev = GLUE[task]
    dm = ClassificationDataModule(str(folder / "train.tsv"), str(folder / "dev.tsv"), **settings, bad_rows="error")
    assert dm.num_labels == 2 and dm.metric == settings.get("metric", "accuracy")
    assert len(dm.train_rows) == train and len(dm.val_rows) == dev and not dm.train_rows.skipped
    if task == "MRPC":  # pairs: two segments, two separators
        dm.attach(tokenizers["bert"], max_positions=64)
        batch = next(iter(dm.val_dataloader()))
        sep = SpecialTokens.from_tokenizer(tokenizers["bert"]).sep
        assert ((batch["input_ids"] == sep).sum(1) == 2).all() and batch["input_ids"].shape[1] <= 64
        assert ((batch["token_type_ids"] * batch["attention_mask"]).sum(1) > 0).all()
        assert (batch["token_type_ids"][:, 1] == 0).all()
