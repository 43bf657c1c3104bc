from pathlib import Path

import pytest

from lit_lm.data.labelled import LabelledFileError, LabelledRows, read_labelled
from tests.conftest import shared_data


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def consistent(rows: LabelledRows) -> LabelledRows:
    """The invariant: every data row read is either kept or counted as skipped."""
    assert rows.rows_read == len(rows.labels) + sum(rows.skipped.values())
    assert len(rows.texts) == len(rows.labels)
    assert set(rows.first_bad) == set(rows.skipped)
    return rows


def test_tsv_with_header_and_quotes_is_split_on_tabs_only(tmp_path):
    path = write(tmp_path, "train.tsv", 'sentence\tlabel\nhe said "hi" , then left \t1\n"open quote only\t0\n')
    rows = consistent(read_labelled(path, ["sentence"], "label"))
    assert rows.texts == [('he said "hi" , then left',), ('"open quote only',)]
    assert rows.labels == [1, 0] and rows.label_names is None and rows.rows_read == 2 and rows.skipped == {}


def test_csv_uses_csv_quoting_and_a_quoted_field_may_span_lines(tmp_path):
    path = write(tmp_path, "t.csv", 'a,b,label\n"x, with comma","say ""yes""",1\n"two\nlines",b2,0\nbad,row\n')
    rows = consistent(read_labelled(path, ["a", "b"], "label"))
    assert rows.texts == [("x, with comma", 'say "yes"'), ("two\nlines", "b2")]
    assert rows.labels == [1, 0]
    assert rows.skipped == {"wrong column count": 1} and rows.first_bad == {"wrong column count": 5}  # after 2 lines


def test_bom_is_dropped_and_names_find_columns(tmp_path):
    path = write(tmp_path, "mrpc.tsv", "\ufeffQuality\t#1 ID\t#1 String\t#2 String\n1\t7\tone\ttwo\n")
    rows = consistent(read_labelled(path, ["#1 String", "#2 String"], "Quality"))
    assert rows.texts == [("one", "two")] and rows.labels == [1]


def test_no_header_indices_negative_indices_and_most_common_width(tmp_path):
    path = write(tmp_path, "cola.tsv", "gj04\t1\t\tGood one.\ngj04\t0\t*\tBad one.\nextra\t1\t\tx\ty\n")
    rows = consistent(read_labelled(path, [-1], 1, header=False))
    assert rows.texts == [("Good one.",), ("Bad one.",)] and rows.labels == [1, 0]
    assert rows.skipped == {"wrong column count": 1} and rows.first_bad == {"wrong column count": 3}
    assert consistent(read_labelled(path, [3], "1", header=False)).texts == rows.texts  # "1" from a CLI is an index


def test_delimiter_guessed_from_the_first_line_or_given(tmp_path):
    path = write(tmp_path, "data.txt", "text;label\nbonjour, monde;2\n")
    rows = read_labelled(path, ["text"], "label")
    assert rows.texts == [("bonjour, monde",)] and rows.labels == [2]
    path = write(tmp_path, "data.dat", "text|label\na,b|3\n")
    assert read_labelled(path, [0], 1, delimiter="|").labels == [3]
    with pytest.raises(LabelledFileError, match="data.delimiter"):
        read_labelled(write(tmp_path, "one.txt", "nothing to split\n"), [0], 1, header=False)
    path = write(tmp_path, "tabs.txt", "a,b\tc\t1\n")  # from a command line, \t and tab mean a tab
    assert read_labelled(path, [0], 2, header=False, delimiter="\\t").texts == [("a,b",)]
    assert read_labelled(path, [1], 2, header=False, delimiter="tab").texts == [("c",)]
    with pytest.raises(LabelledFileError, match="data.delimiter must be one character"):
        read_labelled(path, [0], 1, delimiter=";;")


def test_string_labels_take_sorted_ids_or_the_given_order(tmp_path):
    text = "p\th\tlabel\na\tb\tneutral\nc\td\tentailment\ne\tf\tcontradiction\ng\th\tneutral\n"
    path = write(tmp_path, "nli.tsv", text)
    rows = consistent(read_labelled(path, ["p", "h"], "label"))
    assert rows.label_names == ["contradiction", "entailment", "neutral"] and rows.labels == [2, 1, 0, 2]
    rows = consistent(read_labelled(path, ["p", "h"], "label", label_names=["entailment", "neutral", "contradiction"]))
    assert rows.labels == [1, 0, 2, 1]
    rows = consistent(read_labelled(path, ["p", "h"], "label", label_names=["entailment", "neutral"]))
    assert rows.labels == [1, 0, 1] and rows.skipped == {"unknown label": 1} and rows.first_bad == {"unknown label": 4}
    with pytest.raises(LabelledFileError, match=r"line 4: unknown label: label 'contradiction' is not one of"):
        read_labelled(path, ["p", "h"], "label", label_names=["entailment", "neutral"], bad_rows="error")


def test_regression_labels_are_floats(tmp_path):
    path = write(tmp_path, "sts.csv", "s1,s2,score\na,b,4.5\nc,d,0\ne,f,nan\ng,h,high\n")
    rows = consistent(read_labelled(path, [0, 1], 2, task="regression"))
    assert rows.labels == [4.5, 0.0] and all(isinstance(v, float) for v in rows.labels) and rows.label_names is None
    assert rows.skipped == {"unparsable label": 2} and rows.first_bad == {"unparsable label": 4}


BAD = ("text\tlabel\n"
       "fine\t1\n"            # line 2
       "too\tmany\t1\n"       # line 3: wrong column count
       "   \t0\n"             # line 4: empty text
       "fine again\tyes\n"    # line 5: unparsable label
       "negative\t-1\n"       # line 6: negative label
       "\n"                   # line 7: blank, ignored
       "half\t0.5\n"          # line 8: unparsable (not an integer)
       "float int\t1.0\n"     # line 9: 1.0 is 1
       "also\tmany\tcols\t0\n")  # line 10: wrong column count


def test_each_malformed_row_is_counted_with_its_first_line(tmp_path):
    rows = consistent(read_labelled(write(tmp_path, "bad.tsv", BAD), ["text"], "label"))
    assert rows.texts == [("fine",), ("float int",)] and rows.labels == [1, 1]
    assert rows.rows_read == 8 and rows.blank_lines == 1
    assert rows.skipped == {"wrong column count": 2, "empty text": 1, "unparsable label": 2, "negative label": 1}
    assert rows.first_bad == {"wrong column count": 3, "empty text": 4, "unparsable label": 5, "negative label": 6}
    assert rows.summary() == ("bad.tsv: 8 rows, skipped 6 (2 wrong column count, first at line 3; 1 empty text, "
                              "line 4; 2 unparsable label, first at line 5; 1 negative label, line 6), "
                              "1 blank line(s) ignored")


@pytest.mark.parametrize("drop_before, line, what", [
    (0, 3, "wrong column count: 3 columns where the header has 2"),
    (1, 4, "empty text"),
    (2, 5, "unparsable label: label 'yes' is not an integer >= 0"),
    (3, 6, "negative label"),
])
def test_error_mode_stops_at_the_first_bad_row_naming_its_line(tmp_path, drop_before, line, what):
    lines = BAD.splitlines(keepends=True)
    fixed = "".join(lines[:2] + ["ok\t0\n"] * drop_before + lines[2 + drop_before:])  # earlier bad rows fixed
    path = write(tmp_path, "bad.tsv", fixed)
    with pytest.raises(LabelledFileError) as err:
        read_labelled(path, ["text"], "label", bad_rows="error")
    message = str(err.value)
    assert f"bad.tsv: line {line}: {what}" in message and "data.bad_rows skip" in message


def test_integer_or_string_labels_are_decided_by_most_rows_or_forced(tmp_path):
    path = write(tmp_path, "mixed.tsv", "t\tl\na\t0\nb\t1\nc\t1\nd\toops\n")
    rows = consistent(read_labelled(path, [0], 1))
    assert rows.label_names is None and rows.labels == [0, 1, 1] and rows.skipped == {"unparsable label": 1}
    rows = consistent(read_labelled(path, [0], 1, integer_labels=False))
    assert rows.label_names == ["0", "1", "oops"] and rows.labels == [0, 1, 1, 2]
    rows = consistent(read_labelled(path, [0], 1, integer_labels=True, num_classes=1))
    assert rows.labels == [0] and rows.skipped == {"unknown label": 2, "unparsable label": 1}


def test_undecodable_bytes_error_names_byte_and_line_or_skip_the_row(tmp_path):
    path = write(tmp_path, "latin.tsv", "text\tlabel\ngood\t1\ncaf\xe9\t0\n".encode("latin-1"))
    with pytest.raises(LabelledFileError, match=r"latin.tsv: line 3: byte 21 .* is not UTF-8.*iconv"):
        read_labelled(path, ["text"], "label", bad_rows="error")
    rows = consistent(read_labelled(path, ["text"], "label"))
    assert rows.texts == [("good",)] and rows.skipped == {"undecodable bytes": 1}
    assert rows.first_bad == {"undecodable bytes": 3}
    path = write(tmp_path, "bom.tsv", b"\xef\xbb\xbftext\tlabel\nx\xff\t1\n")  # offsets count the BOM too
    with pytest.raises(LabelledFileError, match=r"bom.tsv: line 2: byte 15 \(b'\\xff'\)"):
        read_labelled(path, ["text"], "label", bad_rows="error")


@pytest.mark.parametrize("text, match", [
    ("", "no data rows"),
    ("\ufeffsentence\tlabel\n", r"no data rows \(only a header line\)"),
    ("sentence\tlabel\n\t1\n \t0\n", "no usable rows"),
])
def test_empty_files_are_refused_clearly(tmp_path, text, match):
    with pytest.raises(LabelledFileError, match=match):
        read_labelled(write(tmp_path, "empty.tsv", text), ["sentence"], "label")


def test_unknown_or_unusable_columns_are_refused_clearly(tmp_path):
    path = write(tmp_path, "t.tsv", "sentence\tlabel\nhi\t1\n")
    with pytest.raises(LabelledFileError, match=r"no column 'text'; its header names \['sentence', 'label'\]"):
        read_labelled(path, ["text"], "label")
    with pytest.raises(LabelledFileError, match="column 2 is out of range.*2 columns"):
        read_labelled(path, [2], 1)
    with pytest.raises(LabelledFileError, match="data.header is false"):
        read_labelled(path, ["sentence"], 1, header=False)
    with pytest.raises(LabelledFileError, match="also a text column"):
        read_labelled(path, [0], "sentence")
    with pytest.raises(LabelledFileError, match="one or two text columns"):
        read_labelled(path, [0, 0, 0], 1)
    with pytest.raises(LabelledFileError, match="no such file"):
        read_labelled(path.with_name("missing.tsv"), [0], 1)


GLUE = {  # task: file settings, rows in train and dev
    "SST-2": (dict(text_columns=["sentence"], label_column="label"), 67349, 872),
    "CoLA": (dict(text_columns=[3], label_column=1, header=False), 8551, 527),
    "MRPC": (dict(text_columns=["#1 String", "#2 String"], label_column="Quality"), 3668, 408),
}


@pytest.mark.parametrize("task", GLUE)
def test_real_glue_files_read_whole(task):
    folder = shared_data(f"glue/{task}")
    settings, *counts = GLUE[task]
    for split, count in zip(("train", "dev"), counts):
        rows = consistent(read_labelled(folder / f"{split}.tsv", **settings, bad_rows="error"))
        assert len(rows) == rows.rows_read == count and rows.skipped == {}
        assert set(rows.labels) == {0, 1} and all(all(t) for t in rows.texts)
        assert len(rows.texts[0]) == len(settings["text_columns"])
