import json

import numpy as np
import pytest

from lit_lm.data import CorpusError, PretrainingDataModule, TokenizerConfig
from lit_lm.data import datamodule as dm_module
from lit_lm.data.datamodule import split_documents
from tests.conftest import shared_data


def make(corpus, tmp_path, **kw) -> PretrainingDataModule:
    kw.setdefault("tokenizer", TokenizerConfig(vocab_size=300))
    kw.setdefault("seq_length", 32)
    kw.setdefault("batch_size", 4)
    return PretrainingDataModule(paths=[str(corpus)], split="paragraph", cache_dir=str(tmp_path / "cache"), **kw)


def test_store_builds_once_and_is_reused(corpus, tmp_path):
    first = make(corpus, tmp_path)
    first.prepare_data()
    assert first.card["cache_hit"] is False
    assert first.card["docs_in"] == 6 * 20 and first.card["sequences"] > 0
    second = make(corpus, tmp_path)
    assert second.store_dir == first.store_dir
    assert second.card["cache_hit"] is True
    assert second.vocab_size == first.vocab_size <= 300
    assert second.special_token_ids == [0, 1, 2, 3, 4] and second.mask_token_id == 4


@pytest.mark.parametrize("change", [dict(seq_length=64), dict(tokenizer=TokenizerConfig(vocab_size=250)),
                                    dict(val_fraction=0.2), dict(seed=1)])
def test_changing_a_setting_builds_a_new_store(corpus, tmp_path, change):
    base = make(corpus, tmp_path)
    other = make(corpus, tmp_path, **change)
    assert other.store_dir != base.store_dir
    assert other.card["cache_hit"] is False


def test_editing_the_corpus_invalidates_the_cache(corpus, tmp_path):
    before = make(corpus, tmp_path).store_dir
    (corpus / "doc0.txt").write_text("a changed document about a changed garden.\n\nand another one.\n")
    assert make(corpus, tmp_path).store_dir != before


def test_an_interrupted_build_leaves_no_cache_that_looks_complete(corpus, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption while packing")
    monkeypatch.setattr(dm_module, "pack", explode)
    with pytest.raises(KeyboardInterrupt):
        make(corpus, tmp_path).prepare_data()
    stores = tmp_path / "cache" / "stores"
    assert [p.name for p in stores.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    rebuilt = make(corpus, tmp_path)
    rebuilt.prepare_data()
    assert rebuilt.card["cache_hit"] is False and (rebuilt.store_dir / "card.json").is_file()


def test_batches_are_packed_rows_with_cls_first(corpus, tmp_path):
    dm = make(corpus, tmp_path)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 32)
    assert (batch["input_ids"][:, 0] == 2).all()
    assert batch["attention_mask"].all()
    val_batch = next(iter(dm.val_dataloader()))
    assert val_batch["input_ids"].shape[1] == 32


def test_validation_documents_are_held_out_by_document():
    docs = [f"document number {i}" for i in range(100)]
    train, val = split_documents(docs, 0.1, seed=0)
    assert len(val) == 10 and len(train) == 90
    assert not set(train) & set(val) and set(train) | set(val) == set(docs)
    assert split_documents(docs, 0.1, seed=0) == (train, val)
    assert split_documents(docs, 0.1, seed=1)[1] != val


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("\n\n   \n")
    with pytest.raises(CorpusError, match="yielded no text"):
        make(tmp_path / "empty", tmp_path).prepare_data()


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
    (folder / "a.txt").write_bytes(text.encode() + b"\xff\xfe\n\n" + text.encode())
    dm = make(folder, tmp_path, tokenizer=TokenizerConfig(vocab_size=100))
    dm.prepare_data()
    assert dm.card["replaced_bytes"] == 2


def test_default_corpus_is_python_documentation(tmp_path):
    dm = PretrainingDataModule(paths=None, tokenizer=TokenizerConfig(vocab_size=2000), seq_length=64,
                               cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    card = json.loads((dm.store_dir / "card.json").read_text())
    assert card["docs_in"] > 1000 and card["tokens"] > 200_000
    assert dm.tokenizer.token_to_id("function") is not None


def test_wikitext_from_shared_data(tmp_path):
    path = shared_data("wikitext-2/valid.txt")
    dm = PretrainingDataModule(paths=[str(path)], split="paragraph", tokenizer=TokenizerConfig(vocab_size=2000),
                               seq_length=128, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    assert dm.card["docs_in"] > 1000 and dm.card["tokens"] > 150_000
    rows = np.load(dm.store_dir / "train.npy")
    assert rows.shape[1] == 128 and (rows[:, 0] == dm.special_tokens.cls).all()
