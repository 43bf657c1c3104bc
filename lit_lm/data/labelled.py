"""Reading one GLUE-style labelled file (TSV or CSV): one or two text columns and a label column per row.

GLUE's TSV files are not CSV-quoted (SST-2 and MRPC texts hold bare `"` characters), so a tab-separated file is split
on tabs only (csv.QUOTE_NONE); any other delimiter is read with ordinary CSV quoting. Text is UTF-8, with or without a
byte-order mark. Malformed rows are counted per reason and skipped, or refused at the first one, as the caller
chooses; they are never silently dropped: ``rows_read == len(labels) + sum(skipped.values())``.
"""

import codecs
import csv
import io
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from lit_lm.data.sources import CorpusError

Task = Literal["classification", "regression"]
BadRows = Literal["skip", "error"]
Column = str | int

# Why a row was refused (the keys of LabelledRows.skipped and .first_bad).
WRONG_COLUMNS = "wrong column count"
EMPTY_TEXT = "empty text"
UNPARSABLE_LABEL = "unparsable label"
UNKNOWN_LABEL = "unknown label"
NEGATIVE_LABEL = "negative label"
UNDECODABLE = "undecodable bytes"

SNIFFED_DELIMITERS = ("\t", ",", ";", "|")
SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, kept by errors="surrogateescape"


class LabelledFileError(CorpusError):
    """A labelled (GLUE-style) file cannot be used as asked; the message names the file, the line and the setting."""


@dataclass
class LabelledRows:
    """The good rows of one labelled file, and what was skipped.

    Args:
        path: The file read.
        texts: One tuple per good row: (text,) or (text_a, text_b).
        labels: Class ids (classification) or floats (regression), one per good row.
        label_names: Class names in id order when the labels were strings; None for integer labels and regression.
        rows_read: Data rows in the file (header and blank lines not counted), good and skipped.
        skipped: Rows skipped, by reason.
        first_bad: The 1-based line number (as an editor shows it, header included) of the first row skipped for
            each reason.
        blank_lines: Entirely empty lines, ignored (not rows).
    """

    path: Path
    texts: list[tuple[str] | tuple[str, str]]
    labels: list[int] | list[float]
    label_names: list[str] | None
    rows_read: int
    skipped: dict[str, int] = field(default_factory=dict)
    first_bad: dict[str, int] = field(default_factory=dict)
    blank_lines: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> "LabelledRows":
        """The first `n` good rows (all with None); the counts still describe the whole file."""
        if n is None or n >= len(self):
            return self
        return LabelledRows(self.path, self.texts[:n], self.labels[:n], self.label_names, self.rows_read,
                            self.skipped, self.first_bad, self.blank_lines)

    def summary(self) -> str:
        """One line: e.g. "train.tsv: 67349 rows, skipped 3 (2 wrong column count, first at line 17; 1 empty text,
        line 40)"."""
        line = f"{self.path.name}: {self.rows_read} rows"
        if self.skipped:
            parts = [f"{count} {reason}, {'first at line' if count > 1 else 'line'} {self.first_bad[reason]}"
                     for reason, count in self.skipped.items()]
            line += f", skipped {sum(self.skipped.values())} ({'; '.join(parts)})"
        else:
            line += ", none skipped"
        if self.blank_lines:
            line += f", {self.blank_lines} blank line(s) ignored"
        return line


def read_labelled(
    path: str | Path,
    text_columns: list[Column],
    label_column: Column,
    header: bool = True,
    delimiter: str | None = None,
    task: Task = "classification",
    label_names: list[str] | None = None,
    bad_rows: BadRows = "skip",
    integer_labels: bool | None = None,
    num_classes: int | None = None,
) -> LabelledRows:
    """Read the good rows of one labelled file.

    Args:
        path: A .tsv, .csv or other delimited text file, UTF-8 (a byte-order mark is fine).
        text_columns: One or two columns holding the text(s), by header name or 0-based index (negative indices count
            from the last column, as in Python).
        label_column: The column holding the label, by header name or index.
        header: Whether the first line names the columns (it is not a row).
        delimiter: One character (\\t or 'tab' for a tab); None: a tab for .tsv, a comma for .csv, otherwise whichever
            of tab, comma, semicolon or bar the first line holds most of. Tab-separated files are split on tabs only
            (no quoting, as GLUE's are).
        task: classification (integer or string labels) or regression (float labels).
        label_names: Class names in id order; the label column then holds these strings. None: integer labels are
            kept as they are, string labels get the ids of their sorted set of names.
        bad_rows: skip: count malformed rows per reason and skip them; error: stop at the first one.
        integer_labels: Classification without label_names: whether labels must be integers (True) or are names
            (False); None: integers when most labels are numbers (the other rows are then bad), names otherwise.
        num_classes: Integer labels at or above this are unknown (a validation file checked against training's).

    Bytes that are not UTF-8: with bad_rows "error" the file is refused naming the byte offset and line; with "skip"
    the rows holding them are skipped as "undecodable bytes".
    """
    path = Path(path)
    if len(text_columns) not in (1, 2):
        raise LabelledFileError(f"data.text_columns: give one or two text columns, got {list(text_columns)!r}.")
    if task not in ("classification", "regression") or bad_rows not in ("skip", "error"):
        raise LabelledFileError(f"data.task must be classification or regression and data.bad_rows skip or error; "
                                f"got {task!r} and {bad_rows!r}.")
    if label_names is not None and (len(label_names) < 1 or len(set(label_names)) != len(label_names)):
        raise LabelledFileError(f"data.labels: give distinct label names in id order, got {label_names!r}.")
    delimiter = check_delimiter(delimiter)
    text, undecodable = _decode(path, bad_rows)
    delimiter = delimiter or _guess_delimiter(path, text)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    try:
        lines = _rows_with_line_numbers(text, delimiter, quoting)
    except csv.Error as err:
        raise LabelledFileError(f"{path}: not readable as delimited text ({err}); check data.delimiter.") from err
    blank = sum(1 for _, row in lines if not row)
    lines = [(n, row) for n, row in lines if row]
    names = lines.pop(0)[1] if header and lines else None
    if not lines:
        raise LabelledFileError(f"{path}: the file has no data rows"
                                f"{' (only a header line)' if names else ''}; point data at a file with labelled rows.")
    width = len(names) if names is not None else Counter(len(row) for _, row in lines).most_common(1)[0][0]
    columns = [_column_index(path, c, names, width, "data.text_columns") for c in text_columns]
    label_at = _column_index(path, label_column, names, width, "data.label_column")
    if label_at in columns:
        raise LabelledFileError(f"data.label_column {label_column!r} is also a text column; name different columns.")

    def problem(row: list[str]) -> tuple[str, str] | None:
        """Why a row's shape or texts are bad, or None."""
        if undecodable and any(SURROGATE.search(cell) for cell in row):
            return UNDECODABLE, "bytes that are not UTF-8"
        if len(row) != width:
            return WRONG_COLUMNS, (f"{len(row)} columns where {'the header has' if names else 'most rows have'} "
                                   f"{width} (a stray delimiter in a text?)")
        if not all(row[c].strip() for c in columns):
            return EMPTY_TEXT, "a text column is empty"
        return None

    problems = [problem(row) for _, row in lines]
    shaped = [row[label_at].strip() for (_, row), bad in zip(lines, problems) if bad is None]
    parse, label_names = _label_parser(task, label_names, shaped, integer_labels, num_classes)
    rows = Rows(path, bad_rows)
    texts: list[tuple[str, ...]] = []
    labels: list = []
    for (line, row), bad in zip(lines, problems):  # in file order: bad_rows 'error' stops at the first bad row
        rows.read += 1
        if bad is not None:
            rows.bad(bad[0], line, bad[1])
        elif isinstance(label := parse(row[label_at].strip()), str):  # a reason
            rows.bad(label, line, f"label {row[label_at].strip()!r} is not {_expected(task, label_names, num_classes)}")
        else:
            texts.append(tuple(row[c].strip() for c in columns))
            labels.append(label)
    good = LabelledRows(path, texts, labels, label_names, rows.read, dict(rows.skipped), dict(rows.first_bad), blank)
    if not good.labels:
        raise LabelledFileError(f"{good.summary()}: no usable rows; check data.text_columns, data.label_column, "
                                f"data.header, data.delimiter, data.task and data.labels.")
    return good


class Rows:
    """Counts skipped rows per reason, or raises at the first one (bad_rows 'error')."""

    def __init__(self, path: Path, bad_rows: BadRows) -> None:
        self.path, self.mode, self.read = path, bad_rows, 0
        self.skipped: Counter = Counter()
        self.first_bad: dict[str, int] = {}

    def bad(self, reason: str, line: int, what: str) -> None:
        if self.mode == "error":
            raise LabelledFileError(f"{self.path}: line {line}: {reason}: {what}. Fix the file, or set "
                                    f"data.bad_rows skip to count and skip such rows.")
        self.skipped[reason] += 1
        self.first_bad.setdefault(reason, line)


def _label_parser(task: Task, names: list[str] | None, labels: list[str], integer_labels: bool | None,
                  num_classes: int | None) -> tuple[Callable[[str], int | float | str], list[str] | None]:
    """How to turn a label's text into a class id or float (or the reason it cannot be), and the class names.
    `labels` are the label texts of the rows otherwise good, to infer integer or string labels and their names."""
    if task == "regression":
        return _float, None
    if names is not None:
        ids = {name: i for i, name in enumerate(names)}
        return (lambda s: ids.get(s, UNKNOWN_LABEL if s else UNPARSABLE_LABEL)), names
    if integer_labels is None:  # integers when most labels are numbers (-1 and 0.5 are then bad integer labels)
        integer_labels = 2 * sum(isinstance(_float(s), float) for s in labels) >= len(labels)
    if integer_labels:
        return (lambda s: _int(s, num_classes)), None
    ids = {name: i for i, name in enumerate(sorted({s for s in labels if s}))}
    return (lambda s: ids[s] if s else UNPARSABLE_LABEL), list(ids)


def _expected(task: Task, names: list[str] | None, num_classes: int | None) -> str:
    if task == "regression":
        return "a finite number"
    if names is not None:
        return f"one of {names}"
    return f"an integer in [0, {num_classes})" if num_classes else "an integer >= 0"


def _int(text: str, num_classes: int | None = None) -> int | str:
    """A class id, or the reason it is not one; "1.0" is 1."""
    try:
        value = float(text)
    except ValueError:
        return UNPARSABLE_LABEL
    if not value.is_integer():
        return UNPARSABLE_LABEL
    if value < 0:
        return NEGATIVE_LABEL
    if num_classes is not None and value >= num_classes:
        return UNKNOWN_LABEL
    return int(value)


def _float(text: str) -> float | str:
    try:
        value = float(text)
    except ValueError:
        return UNPARSABLE_LABEL
    return value if math.isfinite(value) else UNPARSABLE_LABEL


def _decode(path: Path, bad_rows: BadRows) -> tuple[str, bool]:
    """The file's text, UTF-8 with or without a BOM, and whether it holds undecodable bytes: those are an error
    (bad_rows 'error'), or kept as lone surrogates so the rows holding them are counted and skipped."""
    if not path.is_file():
        raise LabelledFileError(f"{path}: no such file; check data.train_file / data.val_file.")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError as err:
        if bad_rows == "error":
            offset = err.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
            line = data.count(b"\n", 0, offset) + 1
            raise LabelledFileError(
                f"{path}: line {line}: byte {offset} ({data[offset:offset + 1]!r}) is not UTF-8; convert the "
                f"file to UTF-8 (e.g. iconv -f latin1 -t utf-8), or set data.bad_rows skip to skip such rows."
            ) from err
        return data.decode("utf-8-sig", errors="surrogateescape"), True


def check_delimiter(delimiter: str | None) -> str | None:
    """One character; the two characters \\t and the word 'tab' (easier to type on a command line) mean a tab."""
    delimiter = {"\\t": "\t", "tab": "\t"}.get(delimiter, delimiter)
    if delimiter is not None and (len(delimiter) != 1 or delimiter in "\r\n"):
        raise LabelledFileError(f"data.delimiter must be one character (or \\t / tab), got {delimiter!r}.")
    return delimiter


def _guess_delimiter(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "\t"
    if suffix == ".csv":
        return ","
    first = text.split("\n", 1)[0]
    counts = {d: first.count(d) for d in SNIFFED_DELIMITERS}
    best = max(SNIFFED_DELIMITERS, key=lambda d: counts[d])  # ties go to the earlier (tab first)
    if counts[best] == 0:
        raise LabelledFileError(f"{path}: the first line holds no tab, comma, semicolon or bar; set data.delimiter.")
    return best


def _rows_with_line_numbers(text: str, delimiter: str, quoting: int) -> list[tuple[int, list[str]]]:
    """Each row with the 1-based line it starts on (a quoted CSV field may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows, previous = [], 0
    for row in reader:
        rows.append((previous + 1, row))
        previous = reader.line_num
    return rows


def _column_index(path: Path, column: Column, names: list[str] | None, width: int, setting: str) -> int:
    """A column's 0-based index from a header name or an index (negative counts from the end)."""
    if isinstance(column, str) and not (column.lstrip("-").isdigit() and (names is None or column not in names)):
        if names is None:
            raise LabelledFileError(f"{setting}: {column!r} is a column name but data.header is false; give a 0-based "
                                    f"column index, or set data.header true if the first line names the columns.")
        stripped = [n.strip() for n in names]
        if column.strip() not in stripped:
            raise LabelledFileError(f"{setting}: {path} has no column {column!r}; its header names {stripped}.")
        return stripped.index(column.strip())
    index = int(column)
    if not -width <= index < width:
        raise LabelledFileError(f"{setting}: column {index} is out of range: {path} has {width} columns "
                                f"(0 to {width - 1}, or -1 to -{width} from the end).")
    return index % width
