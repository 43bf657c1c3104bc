import pytest

from lit_lm.data.text import (CleaningConfig, DecodedText, decode, drop_long_lines, normalise, split_documents,
                              split_paragraphs)


def test_undecodable_bytes_are_replaced_and_counted():
    raw = "caf\u00e9 ".encode() + b"\xff\xfe broken \xc3" + " end".encode()
    out = decode(raw)
    assert out.replaced_bytes == 3
    assert out.text.startswith("caf\u00e9 ") and out.text.endswith(" end")


def test_replacement_chars_already_in_the_text_are_not_counted():
    assert decode("a \ufffd b".encode()).replaced_bytes == 0


def test_bom_and_line_ends_are_normalised():
    out = decode(b"\xef\xbb\xbfline one\r\nline two\rline three\n")
    assert out.text == "line one\nline two\nline three\n"


def test_paragraphs_split_on_blank_lines_including_whitespace_only_ones():
    assert split_paragraphs("a b\nc\n\n  \n\nd\n \t\ne\n\n") == ["a b\nc", "d", "e"]


def test_documents_by_file_paragraph_or_line():
    text = "first line\nsecond line\n\n  third para \n"
    assert list(split_documents(text, "file")) == ["first line\nsecond line\n\n  third para"]
    assert list(split_documents(text, "paragraph")) == ["first line\nsecond line", "third para"]
    assert list(split_documents(text, "line")) == ["first line", "second line", "third para"]
    assert list(split_documents(" \n\n ", "file")) == []
    with pytest.raises(ValueError, match="data.split"):
        list(split_documents(text, "sentence"))


def test_unicode_normal_forms():
    decomposed = "cafe\u0301 \ufb01ne"  # e + combining acute; the 'fi' ligature
    assert normalise(decomposed, CleaningConfig()) == "caf\u00e9 \ufb01ne"  # NFC composes, keeps the ligature
    assert normalise(decomposed, CleaningConfig(unicode_normalization="NFKC")) == "caf\u00e9 fine"
    assert normalise(decomposed, CleaningConfig(unicode_normalization=None)) == decomposed


def test_lower_casing_and_accent_stripping_for_uncased_models():
    assert normalise("Caf\u00e9 Cr\u00e8me", CleaningConfig(lowercase=True)) == "caf\u00e9 cr\u00e8me"
    assert normalise("Caf\u00e9 Cr\u00e8me", CleaningConfig(strip_accents=True)) == "Cafe Creme"
    assert normalise("Caf\u00e9", CleaningConfig(lowercase=True, strip_accents=True)) == "cafe"


def test_bad_cleaning_settings_name_the_setting():
    with pytest.raises(ValueError, match="unicode_normalization"):
        CleaningConfig(unicode_normalization="NFD")
    with pytest.raises(ValueError, match="max_chars"):
        CleaningConfig(min_chars=10, max_chars=5)
    with pytest.raises(ValueError, match="max_tokens_per_char"):
        CleaningConfig(max_tokens_per_char=0)


def test_lines_longer_than_the_limit_are_dropped_and_counted():
    assert drop_long_lines("a\n" + "x" * 11 + "\nb", 10) == ("a\nb", 1)
    assert drop_long_lines("a\n" + "x" * 10, 10) == ("a\n" + "x" * 10, 0)
    assert drop_long_lines("x" * 11, None) == ("x" * 11, 0)


def test_a_named_encoding_reads_what_utf_8_would_replace():
    raw = "café".encode("latin-1")
    assert decode(raw).replaced_bytes == 1
    assert decode(raw, "latin-1") == DecodedText("café", 0)
    with pytest.raises(ValueError, match="data.cleaning.encoding: 'klingon' is not a codec"):
        CleaningConfig(encoding="klingon")
