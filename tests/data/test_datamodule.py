import json
import re

import lightning as L
import numpy as np
import pytest
import torch

from lit_lm.data import (CleaningConfig, CorpusError, DedupConfig, PretrainingDataModule, SourceConfig,
                         TokenizerConfig)
from lit_lm.data import documents, pipeline
from lit_lm.data.pipeline import validation_mask
from lit_lm.models import TransformerConfig
from lit_lm.modules import MaskedLMModule
from tests.conftest import shared_data, write_corpus


def make(corpus, tmp_path, **kw) -> PretrainingDataModule:
    kw.setdefault("tokenizer", TokenizerConfig(vocab_size=300))
    kw.setdefault("seq_length", 32)
    kw.setdefault("batch_size", 4)
    kw.setdefault("split", "paragraph")
    kw.setdefault("num_proc", 1)
    kw.setdefault("progress", False)
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    paths = kw.pop("paths", [str(corpus)])
    return PretrainingDataModule(paths=paths, **kw)


def test_store_builds_once_and_is_reused(corpus, tmp_path):
    first = make(corpus, tmp_path)
    first.prepare_data()
    card = first.card
    assert card["cache_hit"] is False
    assert card["docs_in"] == 6 * 20 and card["docs_out"] == card["train_docs"] + card["val_docs"] > 100
    assert card["tokens"] == card["train_tokens"] + card["val_tokens"] > 0
    assert card["sequences"] == card["train_sequences"] + card["val_sequences"] > 0
    assert {"exact_duplicates", "near_duplicates", "seconds"} <= card.keys()
    second = make(corpus, tmp_path)
    assert second.store_dir == first.store_dir == tmp_path / "cache" / "stores" / first.recipe.key
    assert second.card["cache_hit"] is True and second.card["tokens"] == card["tokens"]
    assert second.vocab_size == first.vocab_size <= 300
    assert second.special_token_ids == [0, 1, 2, 3, 4] and second.mask_token_id == 4 and second.pad_token_id == 0
    assert second.bos_token_id is None and second.eos_token_id is None


@pytest.mark.parametrize("change", [
    dict(seq_length=64), dict(tokenizer=TokenizerConfig(vocab_size=250)), dict(val_fraction=0.2), dict(seed=1),
    dict(cleaning=CleaningConfig(lowercase=True)), dict(dedup=DedupConfig(threshold=0.7)),
    dict(cross_documents=False), dict(split="line"), dict(tokenizer=TokenizerConfig(vocab_size=300, kind="unigram")),
])
def test_changing_a_setting_builds_a_new_store(corpus, tmp_path, change):
    base = make(corpus, tmp_path)
    other = make(corpus, tmp_path, **change)
    assert other.store_dir != base.store_dir
    assert other.card["cache_hit"] is False


def test_process_count_does_not_change_the_store(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(documents, "CHUNK_BYTES", 2000)  # many chunks, so both workers get some
    # one given tokenizer for both: `tokenizers` may break ties between equally frequent merges differently per run
    given = TokenizerConfig(path=str(make(corpus, tmp_path).store_dir / "tokenizer.json"))
    one = make(corpus, tmp_path, num_proc=1, cache_dir=str(tmp_path / "one"), tokenizer=given)
    two = make(corpus, tmp_path, num_proc=2, cache_dir=str(tmp_path / "two"), tokenizer=given)
    for name in ("train", "val"):
        a = (one.store_dir / name / "shard-00000.tokens").read_bytes()
        assert a == (two.store_dir / name / "shard-00000.tokens").read_bytes()
    assert one.card["docs_out"] == two.card["docs_out"] and one.card["tokens"] == two.card["tokens"]


def test_editing_the_corpus_invalidates_the_cache(fresh_corpus, tmp_path):
    corpus = fresh_corpus
    before = make(corpus, tmp_path).store_dir
    (corpus / "doc0.txt").write_text("a changed document about a changed garden.\n\nand another one.\n")
    assert make(corpus, tmp_path).store_dir != before


def test_an_interrupted_build_leaves_no_cache_that_looks_complete(corpus, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption while packing")
    monkeypatch.setattr(pipeline, "encode_and_pack", explode)
    with pytest.raises(KeyboardInterrupt):
        make(corpus, tmp_path).prepare_data()
    stores = tmp_path / "cache" / "stores"
    assert [p.name for p in stores.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    rebuilt = make(corpus, tmp_path)
    rebuilt.prepare_data()
    assert rebuilt.card["cache_hit"] is False and (rebuilt.store_dir / "card.json").is_file()
    assert not (rebuilt.store_dir / "work").exists()  # scratch files are gone


def test_batches_are_packed_rows_with_cls_first(corpus, tmp_path):
    dm = make(corpus, tmp_path)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 32)
    assert (batch["input_ids"][:, 0] == 2).all()
    assert batch["attention_mask"].all()
    val_batch = next(iter(dm.val_dataloader()))
    assert val_batch["input_ids"].shape[1] == 32


def test_decoder_rows_separate_documents_with_end_of_text_and_stay_inside_them(corpus, tmp_path):
    dm = make(corpus, tmp_path, tokenizer=TokenizerConfig(vocab_size=300, kind="byte_bpe"), cross_documents=False,
              seq_length=64)
    dm.setup("fit")
    assert dm.mask_token_id is None and dm.eos_token_id == dm.bos_token_id == dm.pad_token_id == 0
    tokens, lengths = dm.train_store.read(np.arange(len(dm.train_store)))
    assert (tokens[:, 0] != 0).all()  # rows start with text, not a special token
    padded = lengths < 64
    assert padded.mean() > 0.3  # whole documents only: many rows end padded
    for row, length in zip(tokens[padded], lengths[padded]):
        assert row[length - 1] == 0 and (row[length:] == 0).all()  # a padded row ends at a document's end
    batch = next(iter(dm.train_dataloader()))
    assert (batch["attention_mask"].sum(1) == torch.from_numpy(
        dm.train_store.read(dm.train_dataloader().dataset.rows(0, 0))[1].astype(np.int64))).all()


def test_validation_documents_are_held_out_by_document():
    mask = validation_mask(100, 0.1, seed=0)
    assert mask.sum() == 10
    assert np.array_equal(validation_mask(100, 0.1, seed=0), mask)
    assert not np.array_equal(validation_mask(100, 0.1, seed=1), mask)
    assert validation_mask(2, 0.01, seed=0).sum() == 1 and validation_mask(2, 0.99, seed=0).sum() == 1


def test_validation_text_is_never_trained_on(tmp_path):
    folder = tmp_path / "unique"
    folder.mkdir()
    # every document is one distinct number word repeated: decoding rows tells which documents they came from
    docs = [f"doc{i:03d} " * 40 for i in range(60)]
    (folder / "a.txt").write_text("\n\n".join(docs))
    dm = make(folder, tmp_path, paths=[str(folder)], val_fraction=0.2, dedup=DedupConfig(near=False),
              tokenizer=TokenizerConfig(vocab_size=400, min_frequency=1))
    dm.setup("fit")
    def words(store):  # whole document names only: a row boundary may cut a name into pieces
        texts = dm.tokenizer.decode_batch(store.read(np.arange(len(store)))[0].tolist())
        return {w for text in texts for w in text.split() if re.fullmatch(r"doc\d{3}", w)}
    train, val = words(dm.train_store), words(dm.val_store)
    assert len(val) == 12 and train and not train & val


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("\n\n   \n")
    with pytest.raises(CorpusError, match="yielded no text"):
        make(tmp_path / "empty", tmp_path).prepare_data()


def test_jsonl_without_the_text_field_says_which_field(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "some text"}\n{"body": "more text"}\n')
    with pytest.raises(CorpusError, match="field 'text'"):
        make(None, tmp_path, paths=[str(tmp_path / "a.jsonl")]).prepare_data()


def test_too_little_text_for_one_batch_is_a_clear_error(tmp_path):
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "a.txt").write_text("one short line.\n\nanother short line.\n")
    with pytest.raises(CorpusError, match="data.seq_length|data.batch_size"):
        dm = make(tmp_path / "small", tmp_path, tokenizer=TokenizerConfig(vocab_size=60, min_frequency=1))
        dm.prepare_data()
        dm.setup("fit")


def test_bad_settings_are_rejected_up_front(corpus, tmp_path):
    with pytest.raises(ValueError, match="data.val_fraction"):
        make(corpus, tmp_path, val_fraction=1.5)
    with pytest.raises(ValueError, match="data.split"):
        make(corpus, tmp_path, split="sentence")
    with pytest.raises(CorpusError, match="empty list"):
        PretrainingDataModule(paths=[])


def test_a_given_tokenizer_is_used_as_is(corpus, tmp_path):
    trained = make(corpus, tmp_path)
    path = trained.store_dir / "tokenizer.json"
    reused = make(corpus, tmp_path, tokenizer=TokenizerConfig(path=str(path)), seq_length=48)
    assert reused.tokenizer.get_vocab() == trained.tokenizer.get_vocab()


def test_undecodable_bytes_are_counted_in_the_card(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    text = " ".join(f"word{i % 50}" for i in range(3000))
    (folder / "a.txt").write_bytes(text.encode() + b"\xff\xfe\n\n" + text[:-40].encode())
    dm = make(folder, tmp_path, tokenizer=TokenizerConfig(vocab_size=100), dedup=DedupConfig(near=False))
    dm.prepare_data()
    assert dm.card["replaced_bytes"] == 2


def test_junk_documents_are_dropped_by_tokens_per_character(fresh_corpus, tmp_path):
    corpus = fresh_corpus
    (corpus / "junk.txt").write_text("\n\n".join("#$%^ &*!@ ~`|" * 5 + f" {i}" for i in range(10)))
    clean = make(corpus, tmp_path)
    filtered = make(corpus, tmp_path, cleaning=CleaningConfig(max_tokens_per_char=0.5))
    filtered.prepare_data()
    clean.prepare_data()
    assert clean.card["junk_docs"] == 0 and filtered.card["junk_docs"] >= 10
    assert filtered.card["docs_out"] == clean.card["docs_out"] - filtered.card["junk_docs"]


def test_sources_are_mixed_with_weights(tmp_path):
    a, b = write_corpus(tmp_path / "a", n_files=3, seed=1), write_corpus(tmp_path / "b", n_files=3, seed=2)
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": f"record {i} about a careful dog"}) for i in range(40)))
    dm = make(None, tmp_path, paths=None, dedup=DedupConfig(near=False), sources=[
        SourceConfig(paths=[str(a)], weight=2.0), SourceConfig(paths=[str(b)], weight=0.5),
        SourceConfig(paths=[str(tmp_path / "c.jsonl")])])
    dm.prepare_data()
    by_source = {s["source"]: s for s in dm.card["sources"]}
    sa, sb, sc = by_source[str(a)], by_source[str(b)], by_source[str(tmp_path / "c.jsonl")]
    assert sa["docs_in"] == sb["docs_in"] == 60 and sc["docs_in"] == 40
    assert sa["docs_out"] == 60 and 15 <= sb["docs_out"] <= 45 and sc["docs_out"] == 40
    assert sa["tokens"] > 2.5 * sb["tokens"]  # twice each document against about half of them


def test_wikitext_from_shared_data(tmp_path):
    path = shared_data("wikitext-2/valid.txt")
    dm = PretrainingDataModule(paths=[str(path)], split="paragraph", tokenizer=TokenizerConfig(vocab_size=2000),
                               seq_length=128, cache_dir=str(tmp_path / "cache"), progress=False)
    dm.setup("fit")
    assert dm.card["docs_in"] > 1000 and dm.card["tokens"] > 150_000
    assert dm.card["exact_duplicates"] > 0  # wikitext repeats its section headings
    tokens, lengths = dm.train_store.read(np.arange(10))
    assert tokens.shape == (10, 128) and (tokens[:, 0] == dm.special_tokens.cls).all() and (lengths == 128).all()


def test_a_validation_interval_longer_than_the_epoch_validates_at_its_end(corpus, tmp_path):
    """A recipe written for a large corpus (val_check_interval 10000) still runs on a small one."""
    data = make(corpus, tmp_path)
    data.prepare_data()
    model = MaskedLMModule(TransformerConfig(vocab_size=data.vocab_size, hidden_size=16, num_layers=1, num_heads=2,
                                             intermediate_size=32, max_position_embeddings=32),
                           mask_token_id=data.mask_token_id, special_token_ids=data.special_token_ids, seq_length=32)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, val_check_interval=10_000, limit_val_batches=2,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="val_check_interval 10000 is more than the"):
        trainer.fit(model, datamodule=data)
    assert trainer.val_check_interval == trainer.num_training_batches
    assert "val/loss" in trainer.callback_metrics
