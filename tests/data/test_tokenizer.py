import pytest

from lit_lm.data.tokenizer import SpecialTokens, TokenizerError, load_tokenizer, train_wordpiece
from tests.conftest import sentence

import random


@pytest.fixture(scope="module")
def texts():
    rng = random.Random(0)
    return [" ".join(sentence(rng) for _ in range(5)) for _ in range(300)] + ["Unusual Words: zebra, quokka!"]


def test_wordpiece_round_trip_and_special_ids(texts):
    tok = train_wordpiece(texts, vocab_size=200)
    special = SpecialTokens.from_tokenizer(tok)
    assert (special.pad, special.unk, special.cls, special.sep, special.mask) == (0, 1, 2, 3, 4)
    text = "the quick cat sees the hidden garden."
    enc = tok.encode(text)
    assert enc.ids[0] == special.cls and enc.ids[-1] == special.sep
    assert tok.decode(enc.ids) == text
    # unseen words come back too, as lower-cased word pieces: none become [UNK]
    enc = tok.encode("Quokka, Zebra!", add_special_tokens=False)
    assert special.unk not in enc.ids
    assert tok.decode(enc.ids) == "quokka, zebra!"


def test_cased_tokenizer_keeps_case(texts):
    tok = train_wordpiece([t.title() for t in texts], vocab_size=300, lowercase=False)
    assert tok.decode(tok.encode("The Cat Sees", add_special_tokens=False).ids) == "The Cat Sees"


def test_saved_tokenizer_loads_here_and_in_transformers(texts, tmp_path):
    tok = train_wordpiece(texts, vocab_size=200)
    tok.save(str(tmp_path / "tokenizer.json"))
    assert load_tokenizer(tmp_path).encode("the cat").ids == tok.encode("the cat").ids
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert hf("the lazy dog")["input_ids"] == tok.encode("the lazy dog").ids


def test_missing_or_broken_tokenizer_files_are_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="data.tokenizer"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path)


def test_tokenizer_without_mask_token_is_rejected(texts):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    with pytest.raises(TokenizerError, match=r"no \[CLS\] token"):
        SpecialTokens.from_tokenizer(tok)
