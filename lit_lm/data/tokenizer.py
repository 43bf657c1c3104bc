"""Training and loading tokenizers with HuggingFace `tokenizers`; saved as a `tokenizer.json` transformers loads."""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

BERT_SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


class TokenizerError(ValueError):
    """A tokenizer cannot serve the model; the message says which setting to change."""


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens a masked-LM needs."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, names: dict[str, str] = BERT_SPECIAL_TOKENS) -> "SpecialTokens":
        ids = {}
        for role, token in names.items():
            token_id = tokenizer.token_to_id(token)
            if token_id is None:
                raise TokenizerError(
                    f"data.tokenizer: the tokenizer has no {token} token, which the masked-LM needs as its {role} "
                    f"token; use a BERT-style tokenizer or leave data.tokenizer unset to train one."
                )
            ids[role] = token_id
        return cls(**ids)

    @property
    def ids(self) -> list[int]:
        return sorted({self.pad, self.unk, self.cls, self.sep, self.mask})


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True, min_frequency: int = 2) -> Tokenizer:
    """A BERT WordPiece tokenizer (Wu et al. 2016) trained on ``texts``; special tokens take the first ids."""
    tokenizer = Tokenizer(models.WordPiece(unk_token=BERT_SPECIAL_TOKENS["unk"]))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(BERT_SPECIAL_TOKENS.values()),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_token, sep_token = BERT_SPECIAL_TOKENS["cls"], BERT_SPECIAL_TOKENS["sep"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls_token} $A {sep_token}",
        pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
        special_tokens=[(cls_token, tokenizer.token_to_id(cls_token)), (sep_token, tokenizer.token_to_id(sep_token))],
    )
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer from a ``tokenizer.json`` file or a folder holding one (a HuggingFace model folder works)."""
    path = Path(path).expanduser()
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise TokenizerError(
            f"data.tokenizer: {str(path)!r} is neither a tokenizer.json nor a folder holding one; "
            f"leave data.tokenizer unset to train a tokenizer on the corpus."
        )
    try:
        return Tokenizer.from_file(str(file))
    except Exception as err:  # tokenizers raises a bare Exception on malformed files
        raise TokenizerError(f"data.tokenizer: {str(file)!r} is not a valid tokenizer.json ({err}).") from err
