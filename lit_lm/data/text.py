"""Turning raw bytes into clean text."""

import re
from dataclasses import dataclass

REPLACEMENT_CHAR = "\ufffd"
_LINE_ENDS = re.compile(r"\r\n?")
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")


@dataclass
class DecodedText:
    text: str
    replaced_bytes: int
    """How many undecodable byte sequences were replaced by U+FFFD."""


def decode(raw: bytes) -> DecodedText:
    """UTF-8 decode that never fails: undecodable bytes become U+FFFD and are counted; BOMs and CR line ends go."""
    before = raw.count(REPLACEMENT_CHAR.encode())
    text = raw.decode("utf-8", errors="replace")
    replaced = text.count(REPLACEMENT_CHAR) - before
    text = _LINE_ENDS.sub("\n", text.replace("\ufeff", ""))
    return DecodedText(text=text, replaced_bytes=replaced)


def split_paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, stripped, empty ones dropped."""
    return [p.strip() for p in _BLANK_LINES.split(text) if p.strip()]
