from lit_lm.data.text import decode, split_paragraphs


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
