import random

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from lit_lm.data.tokenizer import SpecialTokens, TokenizerConfig, TokenizerError, load_tokenizer, train_tokenizer
from tests.conftest import sentence


@pytest.fixture(scope="module")
def texts():
    rng = random.Random(0)
    return [" ".join(sentence(rng) for _ in range(5)) for _ in range(300)] + ["Unusual Words: zebra, quokka!"]


FAMILIES = {  # kind, special-token style -> the tokens it must have, in id order
    "bert": (dict(kind="wordpiece"), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
    "roberta": (dict(kind="byte_bpe", special_tokens="roberta"), ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]),
    "gpt": (dict(kind="byte_bpe"), ["<|endoftext|>"]),
    "unigram": (dict(kind="unigram"), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_round_trips_and_has_its_special_tokens_first(texts, family, tmp_path):
    settings, specials = FAMILIES[family]
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=300, **settings))
    assert [tok.id_to_token(i) for i in range(len(specials))] == specials
    text = "the quick cat sees the hidden garden."
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids).strip() == text
    assert tok.token_to_id("[UNK]") not in ids and tok.token_to_id("<unk>") not in ids
    # the saved tokenizer.json loads back here and in transformers as a fast tokenizer, with the same ids
    tok.save(str(tmp_path / "tokenizer.json"))
    assert load_tokenizer(tmp_path).encode(text).ids == tok.encode(text).ids
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert hf.is_fast and hf(text)["input_ids"] == tok.encode(text).ids


def test_special_token_roles_per_family(texts):
    bert = SpecialTokens.from_tokenizer(train_tokenizer(texts, TokenizerConfig(vocab_size=200)))
    assert (bert.pad, bert.unk, bert.cls, bert.sep, bert.mask, bert.bos, bert.eos) == (0, 1, 2, 3, 4, None, None)
    assert (bert.row_start, bert.separator, bert.ids) == (2, 3, [0, 1, 2, 3, 4])
    roberta = SpecialTokens.from_tokenizer(
        train_tokenizer(texts, TokenizerConfig(vocab_size=300, kind="byte_bpe", special_tokens="roberta")))
    assert (roberta.bos, roberta.pad, roberta.eos, roberta.unk, roberta.mask) == (0, 1, 2, 3, 4)
    assert (roberta.row_start, roberta.separator) == (0, 2)
    gpt = SpecialTokens.from_tokenizer(train_tokenizer(texts, TokenizerConfig(vocab_size=300, kind="byte_bpe")))
    assert (gpt.eos, gpt.bos, gpt.pad, gpt.mask, gpt.row_start, gpt.separator, gpt.ids) == (0, 0, 0, None, None, 0, [0])


def test_byte_level_bpe_encodes_any_text_without_unknowns(texts):
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=300, kind="byte_bpe"))
    text = "Zürich 東京 \u2603 emoji \U0001f600"
    assert tok.decode(tok.encode(text).ids) == text


def test_uncased_and_cased(texts):
    uncased = train_tokenizer(texts, TokenizerConfig(vocab_size=200))
    assert uncased.decode(uncased.encode("Quokka, Zebra!", add_special_tokens=False).ids) == "quokka, zebra!"
    cased = train_tokenizer([t.title() for t in texts], TokenizerConfig(vocab_size=300, lowercase=False))
    assert cased.decode(cased.encode("The Cat Sees", add_special_tokens=False).ids) == "The Cat Sees"


def test_missing_or_broken_tokenizer_files_are_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="data.tokenizer.path"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path)


def test_a_tokenizer_without_separators_is_rejected(texts):
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    with pytest.raises(TokenizerError, match="cannot be separated"):
        SpecialTokens.from_tokenizer(tok)


def test_a_masked_lm_refuses_a_tokenizer_without_a_mask_token(texts):
    from lit_lm.modules import MaskedLMModule
    gpt = SpecialTokens.from_tokenizer(train_tokenizer(texts, TokenizerConfig(vocab_size=300, kind="byte_bpe")))
    with pytest.raises(ValueError, match="no mask token"):
        MaskedLMModule(special_token_ids=gpt.ids, mask_token_id=gpt.mask)


def test_bad_tokenizer_settings_name_the_setting():
    with pytest.raises(ValueError, match="data.tokenizer.kind"):
        TokenizerConfig(kind="sentencepiece")
    with pytest.raises(ValueError, match="special_tokens"):
        TokenizerConfig(special_tokens="t5")
