"""Cleaning: raw bytes or strings -> normalised text -> documents."""

import codecs
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Literal

REPLACEMENT_CHAR = "\ufffd"
_LINE_ENDS = re.compile(r"\r\n?")
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")

DocumentSplit = Literal["file", "paragraph", "line"]


@dataclass
class CleaningConfig:
    """How raw text is normalised and filtered before deduplication and tokenization."""

    unicode_normalization: Literal["NFC", "NFKC"] | None = "NFC"
    """Unicode normal form applied to every document (NFKC also folds compatibility characters such as ligatures)."""
    lowercase: bool = False
    """Lower-case the stored text (for uncased models; the tokenizer's own `lowercase` is what an exported model keeps)."""
    strip_accents: bool = False
    """Remove combining accents from the stored text (e.g. for uncased BERT)."""
    min_chars: int = 1
    """Drop documents shorter than this many characters."""
    max_chars: int | None = None
    """Drop documents longer than this many characters; None keeps all."""
    max_line_chars: int | None = 1_000_000
    """Drop any line longer than this many characters before splitting into documents (a minified file, a base64
    blob, a dump without line breaks: one 20 MB line would otherwise be hashed and tokenized as one sequence); each
    is counted as ``long_lines`` in the data card. None keeps every line."""
    encoding: str = "utf-8"
    """How text and JSONL files are decoded. utf-8: undecodable bytes become U+FFFD and are counted
    (``replaced_bytes``); set the corpus's own codec (latin-1, cp1252, ...) for files written in another encoding."""
    max_tokens_per_char: float | None = None
    """Drop documents whose tokens-per-character ratio is above this (cramming's junk filter, Geiping & Goldstein 2022;
    ~0.25 suits English with a 32k WordPiece vocabulary); None keeps all."""

    def __post_init__(self) -> None:
        if self.unicode_normalization not in ("NFC", "NFKC", None):
            raise ValueError(f"data.cleaning.unicode_normalization must be NFC, NFKC or null, got {self.unicode_normalization!r}.")
        if self.min_chars < 0 or (self.max_chars is not None and self.max_chars < max(1, self.min_chars)):
            raise ValueError("data.cleaning.min_chars must be >= 0 and data.cleaning.max_chars >= min_chars (or null).")
        if self.max_line_chars is not None and self.max_line_chars < 1:
            raise ValueError(f"data.cleaning.max_line_chars must be >= 1 or null, got {self.max_line_chars}.")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"data.cleaning.encoding: {self.encoding!r} is not a codec Python knows; use utf-8, "
                             "latin-1, cp1252 or another name from Python's codecs list.") from None
        if self.max_tokens_per_char is not None and self.max_tokens_per_char <= 0:
            raise ValueError(f"data.cleaning.max_tokens_per_char must be > 0 or null, got {self.max_tokens_per_char}.")


    def identity(self) -> dict:
        """These settings as a store's cache key takes them: the fields added since stores were first cached are left
        out while at their defaults, so that those stores keep their keys."""
        values = asdict(self)
        for name, default in (("max_line_chars", 1_000_000), ("encoding", "utf-8")):
            if values[name] == default:
                del values[name]
        return values


@dataclass
class DecodedText:
    text: str
    replaced_bytes: int
    """How many undecodable byte sequences were replaced by U+FFFD."""


def decode(raw: bytes, encoding: str = "utf-8") -> DecodedText:
    """A decode that never fails (UTF-8 unless told): undecodable bytes become U+FFFD and are counted; BOMs and CR
    line ends go."""
    before = raw.count(REPLACEMENT_CHAR.encode()) if encoding.replace("-", "").lower() == "utf8" else 0
    text = raw.decode(encoding, errors="replace")
    replaced = text.count(REPLACEMENT_CHAR) - before
    return DecodedText(text=normalise_line_ends(text), replaced_bytes=replaced)


def normalise_line_ends(text: str) -> str:
    """Drop byte-order marks and turn CRLF and lone CR line ends into LF."""
    return _LINE_ENDS.sub("\n", text.replace("\ufeff", "")) if ("\r" in text or "\ufeff" in text) else text


def drop_long_lines(text: str, limit: int | None) -> tuple[str, int]:
    """``text`` without its lines longer than ``limit`` characters, and how many were dropped."""
    if limit is None or len(text) <= limit:
        return text, 0
    lines = text.split("\n")
    kept = [line for line in lines if len(line) <= limit]
    return ("\n".join(kept), len(lines) - len(kept)) if len(kept) < len(lines) else (text, 0)


def normalise(text: str, config: CleaningConfig) -> str:
    """Unicode normal form, then optional lower-casing and accent stripping."""
    if config.strip_accents:  # decompose, drop combining marks, recompose below
        text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    if config.unicode_normalization and not (text.isascii()):
        text = unicodedata.normalize(config.unicode_normalization, text)
    if config.lowercase:
        text = text.lower()
    return text


def split_paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, stripped, empty ones dropped."""
    return [p.strip() for p in _BLANK_LINES.split(text) if p.strip()]


def split_documents(text: str, split: DocumentSplit) -> Iterator[str]:
    """The documents of one file or record: all of it, each blank-line paragraph, or each non-empty line."""
    if split == "file":
        text = text.strip()
        if text:
            yield text
    elif split == "paragraph":
        yield from split_paragraphs(text)
    elif split == "line":
        yield from (line.strip() for line in text.split("\n") if line.strip())
    else:
        raise ValueError(f"data.split must be 'file', 'paragraph' or 'line', got {split!r}.")
