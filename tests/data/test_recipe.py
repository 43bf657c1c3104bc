"""The recipe owns the store's settings and cache key: an unchanged recipe keeps the key it had, so caches are
reused."""

import os

import pytest

from lit_lm.data import default_corpus
from lit_lm.data.cache import cache_key
from lit_lm.data.recipe import CleaningConfig, CorpusError, DedupConfig, Recipe, SourceConfig, TokenizerConfig
from lit_lm.data.sources import Source

FIXED_DEFAULT_CORPUS = {"corpus": "python-docs", "version": 1}


def test_a_hub_source_recipe_keeps_the_key_it_had_before_the_recipe_owned_it():
    # the value computed with PretrainingDataModule.settings before the refactor: existing caches stay valid
    hub = SourceConfig(name="wikitext", subset="wikitext-2-raw-v1", weight=0.5)
    recipe = Recipe([Source.resolve(hub)], "paragraph", CleaningConfig(), DedupConfig(),
                    TokenizerConfig(vocab_size=8192), 128, 0.05, 0, True)
    assert recipe.key == "9ab58dd055310bd5"
    assert recipe.key == cache_key(recipe.settings)


@pytest.mark.parametrize("recipe, key", [
    (dict(), "d8dbf61b1bf12d06"),
    (dict(split="line", cleaning=CleaningConfig(lowercase=True), dedup=DedupConfig(threshold=0.7),
          tokenizer=TokenizerConfig(kind="byte_bpe", vocab_size=300), seq_length=64, val_fraction=0.1, seed=3,
          cross_documents=False), "5a7cd172671e44dc"),
])
def test_default_corpus_recipes_keep_their_keys(monkeypatch, recipe, key):
    monkeypatch.setattr(default_corpus, "fingerprint", lambda: FIXED_DEFAULT_CORPUS)  # it names this Python's stdlib
    assert Recipe.plan(**recipe).key == key


def test_a_file_source_is_identified_by_path_size_and_time(tmp_path):
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.txt").write_text("a")
    os.utime(tmp_path / "a.txt", ns=(1, 1_700_000_000_000_000_000))
    source = Source.resolve(SourceConfig(paths=[str(tmp_path)], weight=2.0))
    a, b = (tmp_path / "a.txt").resolve(), (tmp_path / "b.txt").resolve()
    assert source.files == (a, b)
    assert source.fingerprint() == {"name": None, "subset": None, "hf_split": "train", "format": "auto",
                                    "text_field": "text", "weight": 2.0,
                                    "files": [(str(a), 1, 1_700_000_000_000_000_000),
                                              (str(b), 3, b.stat().st_mtime_ns)]}


def test_paths_come_first_and_are_resolved_once_into_sources(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    (tmp_path / "y.jsonl").write_text('{"text": "y"}\n')
    recipe = Recipe.plan(paths=[str(tmp_path / "*.txt")], sources=[SourceConfig(paths=[str(tmp_path / "y.jsonl")])])
    assert [s.files for s in recipe.sources] == [((tmp_path / "x.txt").resolve(),), ((tmp_path / "y.jsonl").resolve(),)]
    assert recipe.sources[0].config == SourceConfig(paths=[str(tmp_path / "*.txt")])
    assert Recipe.plan().sources is None  # neither: the embedded default corpus


def test_the_settings_and_key_are_read_once(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    recipe = Recipe.plan(paths=[str(tmp_path)])
    key = recipe.key
    (tmp_path / "x.txt").write_text("changed")
    assert recipe.key == key  # the store asked for is the one resumed
    assert Recipe.plan(paths=[str(tmp_path)]).key != key  # a new plan sees the change
    assert recipe.identity()["corpus"] == cache_key(recipe.settings["corpus"])


def test_bad_settings_name_the_setting():
    with pytest.raises(ValueError, match="data.seq_length"):
        Recipe.plan(seq_length=4)
    with pytest.raises(ValueError, match="data.val_fraction"):
        Recipe.plan(val_fraction=0.0)
    with pytest.raises(ValueError, match="data.split"):
        Recipe.plan(split="sentence")
    with pytest.raises(CorpusError, match="empty list"):
        Recipe.plan(paths=[])
    with pytest.raises(CorpusError, match="does not exist"):
        Recipe.plan(paths=["/nonexistent/corpus"])


def test_building_twice_reuses_the_store(corpus, tmp_path):
    recipe = Recipe.plan(paths=[str(corpus)], split="paragraph", tokenizer=TokenizerConfig(vocab_size=300),
                         seq_length=32)
    store, card = recipe.build(tmp_path / "cache", progress=False)
    again, card_again = Recipe.plan(paths=[str(corpus)], split="paragraph", tokenizer=TokenizerConfig(vocab_size=300),
                                    seq_length=32).build(tmp_path / "cache", progress=False)
    assert store == again == tmp_path / "cache" / "stores" / recipe.key and (store / "tokenizer.json").is_file()
    assert card["cache_hit"] is False and card_again["cache_hit"] is True
    assert card_again["tokens"] == card["tokens"] > 0 and card_again["store"] == str(store)
