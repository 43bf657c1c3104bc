"""Where pretraining text comes from: text files (also .gz), JSONL, Parquet, HuggingFace datasets, the default corpus.

A source is read as a stream of *raw blocks* (a whole text file, a slice of a large one cut at a line or paragraph
boundary, a run of JSONL lines, or a batch of already-decoded records); turning blocks into clean documents happens
in `lit_lm.data.pipeline`'s worker processes. Nothing here holds more than one block of one file in memory, except a
text file read as a single document (`split: file`), which is one document by definition.
"""

import glob
import gzip
import itertools
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lit_lm.data import default_corpus

SourceFormat = Literal["auto", "text", "jsonl", "parquet", "arrow"]
TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ""}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
PARQUET_SUFFIXES = {".parquet"}
BLOCK_BYTES = 4 << 20  # read large text files in slices of about this size

SNIFF_BYTES = 8192  # a text file whose first this many bytes hold a NUL byte is binary (as git and grep decide)

# A raw block: (kind, payload). kind "text": bytes of a whole text file; "text-part": bytes of a slice of one, cut at a
# boundary the document split never crosses; "jsonl": bytes of whole JSON lines; "records": a list of str;
# "skipped": [why, path] of a file left out ("binary" or "empty": whole; "damaged": a compressed file that ends early
# or is corrupt, left out from the damage on), for the data card and a warning.
Block = tuple[str, bytes | list[str]]

DAMAGED = (EOFError, gzip.BadGzipFile, zlib.error)
"""What reading a truncated or corrupt .gz file raises (an interrupted download or copy leaves one)."""


class CorpusError(ValueError):
    """The corpus the user pointed at cannot be used; the message says which setting to change."""


@dataclass
class SourceConfig:
    """One source of text. Give `paths` (files, folders, globs) or a HuggingFace dataset `name`."""

    paths: list[str] | None = None
    """Files, folders (searched recursively) or globs: text (.txt .md .rst, also .gz), JSONL, Parquet, or a folder
    written by HuggingFace `datasets`' save_to_disk."""
    name: str | None = None
    """A HuggingFace hub dataset name, streamed with `datasets.load_dataset` (needs `datasets` and a reachable hub)."""
    subset: str | None = None
    """The hub dataset's configuration name, e.g. 'wikitext-103-raw-v1'."""
    hf_split: str = "train"
    """Which split of a hub dataset or of a saved DatasetDict folder to read."""
    format: SourceFormat = "auto"
    """How to read the files; 'auto' decides by suffix (.jsonl/.ndjson/.json, .parquet, .arrow folders, else text)."""
    text_field: str = "text"
    """The field holding the text in JSONL, Parquet and dataset records."""
    weight: float = 1.0
    """Mixing weight: each kept document of this source is used `weight` times (0.5 keeps a seeded half, 2 doubles)."""

    def __post_init__(self) -> None:
        if (self.paths is None) == (self.name is None):
            raise CorpusError("each entry of data.sources needs exactly one of `paths` or `name`.")
        if self.paths is not None and len(self.paths) == 0:
            raise CorpusError("data.sources: `paths` is an empty list; give files, folders or globs.")
        if not self.weight > 0:
            raise CorpusError(f"data.sources: weight must be > 0, got {self.weight}.")


@dataclass(frozen=True)
class Source:
    """One source with its paths resolved once (`Source.resolve`): the value that flows from the settings to the
    store's cache key (`fingerprint`) and to the build (`blocks`)."""

    config: SourceConfig
    files: tuple[Path, ...]
    """The files (and saved-dataset folders) its `paths` name, sorted; empty for a hub dataset."""

    @classmethod
    def resolve(cls, config: SourceConfig) -> "Source":
        return cls(config, tuple(resolve_paths(config.paths)) if config.paths else ())

    def fingerprint(self) -> dict:
        """What identifies this source for caching: its settings and each file's path, size and modification time."""
        def stat(p: Path) -> tuple:
            if p.is_dir():  # a saved dataset: its files
                return (str(p), sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                       for f in p.rglob("*") if f.is_file()))
            return (str(p), (st := p.stat()).st_size, st.st_mtime_ns)
        settings = {k: v for k, v in vars(self.config).items() if k != "paths"}
        return {**settings, "files": [stat(p) for p in self.files]}

    def blocks(self, split: str) -> Iterator[Block]:
        """Every raw block of this source, in a fixed order."""
        source = self.config
        if source.name is not None:
            yield from read_hub_dataset(source)
            return
        for path in self.files:
            fmt = file_format(path, source.format)
            if fmt == "text":
                yield from read_text_file(path, split)
            elif fmt == "jsonl":
                yield from _blocks(path, (b"\n",), "jsonl")
            elif fmt == "parquet":
                yield from read_parquet(path, source.text_field)
            elif fmt == "arrow":
                yield from read_arrow_dataset(path, source.text_field, source.hf_split)
            else:
                raise CorpusError(f"data.sources: unknown format {fmt!r}; use auto, text, jsonl, parquet or arrow.")


def _suffixes(path: Path) -> tuple[str, bool]:
    """The format-deciding suffix of a file and whether it is gzip-compressed (``x.jsonl.gz`` -> ``.jsonl``, True)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        return (suffixes[-2] if len(suffixes) > 1 else ""), True
    return (suffixes[-1] if suffixes else ""), False


def is_arrow_dataset(path: Path) -> bool:
    """A folder written by `datasets.Dataset.save_to_disk` (or a DatasetDict of them)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _readable(path: Path) -> bool:
    suffix, _ = _suffixes(path)
    return suffix in TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES


def resolve_paths(paths: Sequence[str]) -> list[Path]:
    """Expand files, folders (recursively, readable files only) and globs into a sorted, de-duplicated list.

    A folder saved by HuggingFace `datasets` is kept as one entry (it is read as a dataset, not as files).
    """
    found: set[Path] = set()
    for spec in paths:
        spec = os.path.expanduser(str(spec))
        matches = glob.glob(spec, recursive=True) if glob.has_magic(spec) else [spec]
        if not matches:
            raise CorpusError(f"data.paths: the glob {spec!r} matches no file.")
        for match in matches:
            path = Path(match)
            if is_arrow_dataset(path):
                found.add(path)
            elif path.is_dir():
                files = [p for p in path.rglob("*") if p.is_file() and _readable(p)
                         and not any(part.startswith(".") for part in p.relative_to(path).parts)]
                if not files:
                    raise CorpusError(f"data.paths: the folder {str(path)!r} holds no text, JSONL or Parquet file "
                                      "(.txt .md .rst .jsonl .parquet, optionally .gz).")
                found.update(files)
            elif path.is_file():
                found.add(path)
            else:
                raise CorpusError(f"data.paths: {spec!r} does not exist; give existing files, folders or globs.")
    return sorted(p.resolve() for p in found)


def file_format(path: Path, declared: SourceFormat = "auto") -> str:
    if declared != "auto":
        return declared
    if is_arrow_dataset(path):
        return "arrow"
    suffix, _ = _suffixes(path)
    return "jsonl" if suffix in JSONL_SUFFIXES else "parquet" if suffix in PARQUET_SUFFIXES else "text"


def _open(path: Path):
    return gzip.open(path, "rb") if _suffixes(path)[1] else open(path, "rb")


def _cut(buffer: bytes, separators: tuple[bytes, ...]) -> int:
    """Index just after the last separator in ``buffer`` (0 if none): where a block may end."""
    return max((i + len(s) for s in separators if (i := buffer.rfind(s)) >= 0), default=0)


def _blocks(path: Path, separators: tuple[bytes, ...], kind: str) -> Iterator[Block]:
    """A file in slices of about BLOCK_BYTES, each ending just after a separator (a line or paragraph break). A
    compressed file that is damaged keeps its blocks before the damage; the unfinished one at the damage is dropped."""
    with _open(path) as f:
        buffer = b""
        try:
            while chunk := f.read(BLOCK_BYTES):
                buffer += chunk
                end = _cut(buffer, separators)
                if end:
                    yield kind, buffer[:end]
                    buffer = buffer[end:]
        except DAMAGED:
            yield "skipped", ["damaged", str(path)]
            return
        if buffer:
            yield kind, buffer


def sniff(path: Path) -> str | None:
    """Why a text file cannot be read as text: "empty", "binary" (a NUL byte near its start: an image, an archive,
    a UTF-16 file), "damaged" (a compressed file whose start cannot be read), or None."""
    head = b""
    try:
        with _open(path) as f:  # in small reads: a damaged file still shows the part before the damage
            while len(head) < SNIFF_BYTES and (piece := f.read(min(1024, SNIFF_BYTES - len(head)))):
                head += piece
    except DAMAGED:
        if not head:
            return "damaged"
    return "empty" if not head else "binary" if b"\x00" in head else None


def read_text_file(path: Path, split: str) -> Iterator[Block]:
    if (why := sniff(path)) is not None:
        yield "skipped", [why, str(path)]
        return
    if split == "file":  # one document: read whole, or left out whole when damaged (half a document is none)
        try:
            with _open(path) as f:
                text = f.read()
        except DAMAGED:
            yield "skipped", ["damaged", str(path)]
            return
        yield "text", text
        return
    separators = (b"\n\n", b"\r\n\r\n", b"\r\r") if split == "paragraph" else (b"\n", b"\r")
    yield from _blocks(path, separators, "text-part")


def read_parquet(path: Path, text_field: str) -> Iterator[Block]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise CorpusError(f"data.paths: reading {path.name} needs pyarrow (pip install pyarrow).") from err
    file = pq.ParquetFile(path)
    if text_field not in file.schema_arrow.names:
        raise CorpusError(f"data: {str(path)!r} has no column {text_field!r} (columns: {file.schema_arrow.names}); "
                          "set text_field in data.sources.")
    for batch in file.iter_batches(columns=[text_field], batch_size=2048):
        yield "records", [t for t in batch.column(0).to_pylist() if t]


def read_arrow_dataset(path: Path, text_field: str, split: str) -> Iterator[Block]:
    """A folder saved by `datasets` (Arrow IPC stream files listed in state.json), read with pyarrow alone."""
    import pyarrow as pa

    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        if split not in splits:
            raise CorpusError(f"data: the saved dataset {str(path)!r} has splits {splits}, not {split!r}; "
                              "set hf_split.")
        path = path / split
    state = json.loads((path / "state.json").read_text())
    for entry in state["_data_files"]:
        with pa.memory_map(str(path / entry["filename"])) as source:
            reader = pa.ipc.open_stream(source)
            if text_field not in reader.schema.names:
                raise CorpusError(f"data: the saved dataset {str(path)!r} has no column {text_field!r} "
                                  f"(columns: {reader.schema.names}); set text_field in data.sources.")
            for batch in reader:
                yield "records", [t for t in batch.column(text_field).to_pylist() if t]


def read_hub_dataset(source: SourceConfig) -> Iterator[Block]:
    try:
        import datasets
    except ImportError as err:
        raise CorpusError(f"data.sources: the hub dataset {source.name!r} needs the `datasets` package "
                          "(pip install datasets); or save it with save_to_disk and give its folder in paths.") from err
    try:
        stream = datasets.load_dataset(source.name, source.subset, split=source.hf_split, streaming=True)
        texts = (text for record in stream if (text := record.get(source.text_field)))
        yield from _record_blocks(texts, 2048)
    except (ConnectionError, OSError, ValueError) as err:
        raise CorpusError(f"data.sources: cannot read the hub dataset {source.name!r} ({err}). Without a reachable "
                          "hub, save it with save_to_disk elsewhere and give its folder in paths.") from err


def read_default_corpus() -> Iterator[Block]:
    yield from _record_blocks(default_corpus.documents(), 512)


def _record_blocks(texts: Iterable[str], size: int) -> Iterator[Block]:
    """Already-decoded texts as blocks of `size` records."""
    texts = iter(texts)
    while batch := list(itertools.islice(texts, size)):
        yield "records", batch
