"""Training and loading tokenizers with HuggingFace `tokenizers`; saved as a `tokenizer.json` transformers loads.

Three models, each with the special tokens of the family that uses it:
  wordpiece  BERT (Wu et al. 2016):            [PAD] [UNK] [CLS] [SEP] [MASK]
  byte_bpe   RoBERTa / GPT-2 (Radford et al. 2019): <s> <pad> </s> <unk> <mask>  or  <|endoftext|>
  unigram    ALBERT / T5 style (Kudo 2018):     [PAD] [UNK] [CLS] [SEP] [MASK]  (or RoBERTa's)
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

TokenizerKind = Literal["wordpiece", "byte_bpe", "unigram"]
SpecialStyle = Literal["bert", "roberta", "gpt"]

# The special tokens of each family, in id order, and which token plays which role.
STYLES: dict[str, dict[str, str]] = {
    "bert": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "roberta": {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"},
    "gpt": {"eos": "<|endoftext|>"},
}
DEFAULT_STYLE = {"wordpiece": "bert", "byte_bpe": "gpt", "unigram": "bert"}


class TokenizerError(ValueError):
    """A tokenizer cannot serve the model; the message says which setting to change."""


@dataclass
class TokenizerConfig:
    """Which tokenizer to use, or how to train one on the corpus."""

    path: str | None = None
    """A tokenizer.json, or a folder holding one (e.g. a local HuggingFace model folder). None trains one."""
    kind: TokenizerKind = "wordpiece"
    """The model to train: wordpiece (BERT), byte_bpe (GPT-2, RoBERTa) or unigram (ALBERT, T5)."""
    special_tokens: SpecialStyle | None = None
    """Special tokens to give a trained tokenizer: bert, roberta or gpt; None picks the kind's usual family
    (wordpiece and unigram: bert, byte_bpe: gpt)."""
    vocab_size: int = 8192
    """Vocabulary size of a trained tokenizer, special tokens included."""
    lowercase: bool | None = None
    """Lower-case and strip accents inside the tokenizer (an uncased model; kept in tokenizer.json). None: True for
    wordpiece (uncased BERT), False otherwise."""
    min_frequency: int = 2
    """Minimum count for a merge or a vocabulary entry when training."""
    max_train_bytes: int | None = 200_000_000
    """Train on at most this much text, an evenly spread sample of the training documents; None uses all."""

    def __post_init__(self) -> None:
        if self.kind not in DEFAULT_STYLE:
            raise ValueError(f"data.tokenizer.kind must be wordpiece, byte_bpe or unigram, got {self.kind!r}.")
        if self.special_tokens not in (None, *STYLES):
            raise ValueError(f"data.tokenizer.special_tokens must be bert, roberta, gpt or null, got {self.special_tokens!r}.")
        if self.vocab_size < 32:
            raise ValueError(f"data.tokenizer.vocab_size must be at least 32, got {self.vocab_size}.")

    @property
    def style(self) -> str:
        return self.special_tokens or DEFAULT_STYLE[self.kind]

    @property
    def uncased(self) -> bool:
        return self.kind == "wordpiece" if self.lowercase is None else self.lowercase


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of a tokenizer's special tokens by role; None where the tokenizer has none for that role."""

    pad: int | None = None
    unk: int | None = None
    cls: int | None = None
    sep: int | None = None
    mask: int | None = None
    bos: int | None = None
    eos: int | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> "SpecialTokens":
        """Find the special tokens by their usual names (BERT's, RoBERTa's, GPT-2's)."""
        def first(*names: str) -> int | None:
            return next((i for n in names if (i := tokenizer.token_to_id(n)) is not None), None)
        eos = first("</s>", "<|endoftext|>")
        found = dict(
            unk=first("[UNK]", "<unk>"), cls=first("[CLS]", "<s>"), sep=first("[SEP]", "</s>"),
            mask=first("[MASK]", "<mask>"), bos=first("<s>", "<|endoftext|>"), eos=eos,
        )
        found["pad"] = first("[PAD]", "<pad>", "<|pad|>")
        if found["pad"] is None:
            found["pad"] = eos  # GPT-2 has no pad token: its end-of-text token pads (rows record their lengths)
        if found["cls"] is None and found["sep"] is None and eos is None:
            raise TokenizerError(
                "data.tokenizer: the tokenizer has none of [CLS]/[SEP], <s>/</s> or <|endoftext|>, so documents "
                "cannot be separated; use a BERT, RoBERTa or GPT-2 style tokenizer or leave data.tokenizer.path unset."
            )
        return cls(**found)

    @property
    def row_start(self) -> int | None:
        """The token every packed row begins with: [CLS] / <s> for encoders; none for GPT-style decoders."""
        return self.cls if self.cls != self.eos else None

    @property
    def separator(self) -> int:
        """The token written after every document: [SEP], </s> or <|endoftext|>."""
        return self.sep if self.sep is not None else self.eos

    @property
    def ids(self) -> list[int]:
        return sorted({i for i in (self.pad, self.unk, self.cls, self.sep, self.mask, self.bos, self.eos) if i is not None})


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    """A tokenizer of `config.kind` trained on `texts`; its special tokens take the first ids."""
    specials = list(STYLES[config.style].values())
    unk = next((t for t in specials if t in ("[UNK]", "<unk>")), None)
    show = False
    if config.kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=unk or "[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=config.uncased, lowercase=config.uncased)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(vocab_size=config.vocab_size, min_frequency=config.min_frequency,
                                            special_tokens=specials if unk else [*specials, "[UNK]"],
                                            continuing_subword_prefix="##", show_progress=show)
    elif config.kind == "byte_bpe":  # GPT-2's byte-level BPE: every byte sequence is encodable, no [UNK] needed
        tokenizer = Tokenizer(models.BPE())
        if config.uncased:
            tokenizer.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(),
                                                         normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=config.vocab_size, min_frequency=config.min_frequency,
                                      special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=show)
    else:  # unigram over Metaspace pre-tokens, as SentencePiece does
        tokenizer = Tokenizer(models.Unigram())
        steps = [normalizers.NFKC()] + ([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()]
                                        if config.uncased else [])
        tokenizer.normalizer = normalizers.Sequence(steps)
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        unk = unk or "[UNK]"
        trainer = trainers.UnigramTrainer(vocab_size=config.vocab_size, special_tokens=specials if unk in specials
                                          else [*specials, unk], unk_token=unk, show_progress=show)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    _add_post_processor(tokenizer, config.style)
    return tokenizer


def _add_post_processor(tokenizer: Tokenizer, style: str) -> None:
    """What `encode(text)` adds around a text: [CLS] x [SEP] / <s> x </s> / nothing (GPT-2)."""
    if style == "gpt":
        if isinstance(tokenizer.pre_tokenizer, pre_tokenizers.ByteLevel):
            tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        return
    start, end = ("[CLS]", "[SEP]") if style == "bert" else ("<s>", "</s>")
    pair = f"{start} $A {end} $B:1 {end}:1" if style == "bert" else f"{start} $A {end} {end} $B {end}"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{start} $A {end}", pair=pair,
        special_tokens=[(start, tokenizer.token_to_id(start)), (end, tokenizer.token_to_id(end))],
    )


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer from a ``tokenizer.json`` file or a folder holding one (a HuggingFace model folder works)."""
    path = Path(path).expanduser()
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise TokenizerError(
            f"data.tokenizer.path: {str(path)!r} is neither a tokenizer.json nor a folder holding one; "
            f"leave data.tokenizer.path unset to train a tokenizer on the corpus."
        )
    try:
        return Tokenizer.from_file(str(file))
    except Exception as err:  # tokenizers raises a bare Exception on malformed files
        raise TokenizerError(f"data.tokenizer.path: {str(file)!r} is not a valid tokenizer.json ({err}).") from err
