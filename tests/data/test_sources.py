import gzip
import json

import pytest

from lit_lm.data.documents import clean_chunk
from lit_lm.data.dedup import DedupConfig
from lit_lm.data.sources import CorpusError, Source, SourceConfig, file_format, read_hub_dataset, resolve_paths
from lit_lm.data.text import CleaningConfig
from lit_lm.data import sources as sources_module


def documents(source: SourceConfig, split: str = "file", cleaning: CleaningConfig = CleaningConfig()):
    """The clean documents a source yields, through the same worker function the pipeline uses."""
    chunk = [(0, kind, payload) for kind, payload in Source.resolve(source).blocks(split)]
    _, counters, hashed = clean_chunk(chunk, [source.text_field], split, cleaning, DedupConfig(near=False))
    return hashed.texts, counters


def test_files_folders_and_globs_resolve_to_one_sorted_list(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    (tmp_path / "a" / "y.md").write_text("y")
    (tmp_path / "a" / "z.jsonl.gz").write_bytes(gzip.compress(b'{"text": "z"}\n'))
    (tmp_path / "a" / "skip.bin").write_bytes(b"\0")
    (tmp_path / "b.txt").write_text("b")
    files = resolve_paths([str(tmp_path / "a"), str(tmp_path / "*.txt"), str(tmp_path / "b.txt")])
    assert sorted(f.name for f in files) == ["b.txt", "x.txt", "y.md", "z.jsonl.gz"]
    assert [file_format(f) for f in files if f.name == "z.jsonl.gz"] == ["jsonl"]


@pytest.mark.parametrize("spec, match", [("missing.txt", "does not exist"), ("nothing-*.txt", "matches no file")])
def test_missing_paths_are_clear_errors(tmp_path, spec, match):
    with pytest.raises(CorpusError, match=match):
        resolve_paths([str(tmp_path / spec)])


def test_folder_without_text_is_a_clear_error(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"\0\1")
    with pytest.raises(CorpusError, match="holds no text"):
        resolve_paths([str(tmp_path)])


def test_plain_and_gzipped_text(tmp_path):
    (tmp_path / "a.txt").write_text("first para\n\nsecond para\n")
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(b"zipped one\r\n\r\nzipped two\r\n"))
    (tmp_path / "empty.txt").write_text("  \n\n ")
    docs, counters = documents(SourceConfig(paths=[str(tmp_path)]))
    assert docs == ["first para\n\nsecond para", "zipped one\n\nzipped two"]
    docs, _ = documents(SourceConfig(paths=[str(tmp_path)]), split="paragraph")
    assert docs == ["first para", "second para", "zipped one", "zipped two"]


def test_a_large_text_file_is_read_in_blocks_cut_at_paragraphs(tmp_path, monkeypatch):
    monkeypatch.setattr(sources_module, "BLOCK_BYTES", 64)
    paragraphs = [f"paragraph number {i} " * 3 for i in range(40)]
    (tmp_path / "big.txt").write_text("\r\n\r\n".join(paragraphs))
    blocks = list(Source.resolve(SourceConfig(paths=[str(tmp_path)])).blocks("paragraph"))
    assert len(blocks) > 10 and all(kind == "text-part" for kind, _ in blocks)
    docs, _ = documents(SourceConfig(paths=[str(tmp_path)]), split="paragraph")
    assert docs == [p.strip() for p in paragraphs]


def test_a_truncated_gz_keeps_its_whole_paragraphs_before_the_damage_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(sources_module, "BLOCK_BYTES", 64)
    paragraphs = [f"paragraph {i} with words {i * 7919 % 1009} and {i * 104729 % 997}" for i in range(400)]
    whole = gzip.compress("\n\n".join(paragraphs).encode())
    (tmp_path / "cut.txt.gz").write_bytes(whole[: len(whole) // 2])
    blocks = list(Source.resolve(SourceConfig(paths=[str(tmp_path)])).blocks("paragraph"))
    assert blocks[-1] == ("skipped", ["damaged", str((tmp_path / "cut.txt.gz").resolve())])
    kept = b"".join(payload for _, payload in blocks[:-1]).decode().split("\n\n")[:-1]  # each block ends in a break
    assert 50 < len(kept) < 400 and kept == paragraphs[:len(kept)]  # whole paragraphs, in order, up to the damage
    assert list(Source.resolve(SourceConfig(paths=[str(tmp_path)])).blocks("file")) == [blocks[-1]]  # half a doc: none


def test_jsonl_with_a_configurable_field_bad_lines_and_bad_bytes(tmp_path):
    lines = [json.dumps({"body": "record one", "id": 1}), "{not json", json.dumps({"id": 3}),
             json.dumps({"body": "record\r\nfour"})]
    (tmp_path / "a.jsonl").write_bytes("\n".join(lines).encode() + b"\n" + b'{"body": "bad \xff byte"}\n')
    docs, counters = documents(SourceConfig(paths=[str(tmp_path / "a.jsonl")], text_field="body"))
    assert docs == ["record one", "record\nfour", "bad \ufffd byte"]
    assert counters.bad_records == 1 and counters.missing_field == 1 and counters.replaced_bytes == 1


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"content": ["first row", "", "third row"], "n": [1, 2, 3]}), tmp_path / "t.parquet")
    docs, _ = documents(SourceConfig(paths=[str(tmp_path / "t.parquet")], text_field="content"))
    assert docs == ["first row", "third row"]
    with pytest.raises(CorpusError, match="no column 'text'"):
        documents(SourceConfig(paths=[str(tmp_path / "t.parquet")]))


def write_saved_dataset(folder, texts):
    """The folder layout `datasets.Dataset.save_to_disk` writes: Arrow stream files listed in state.json."""
    pa = pytest.importorskip("pyarrow")
    folder.mkdir(parents=True)
    table = pa.table({"text": texts})
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (folder / "dataset_info.json").write_text("{}")


def test_a_saved_huggingface_dataset_folder(tmp_path):
    write_saved_dataset(tmp_path / "ds" / "train", ["saved one", "saved two"])
    (tmp_path / "ds" / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    assert resolve_paths([str(tmp_path / "ds")]) == [(tmp_path / "ds").resolve()]
    docs, _ = documents(SourceConfig(paths=[str(tmp_path / "ds")]))
    assert docs == ["saved one", "saved two"]
    with pytest.raises(CorpusError, match="hf_split"):
        documents(SourceConfig(paths=[str(tmp_path / "ds")], hf_split="validation"))


def test_a_folder_saved_by_the_datasets_library_itself(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["from datasets", "second"]}).save_to_disk(str(tmp_path / "real"))
    docs, _ = documents(SourceConfig(paths=[str(tmp_path / "real")]))
    assert docs == ["from datasets", "second"]


def test_a_hub_dataset_without_the_datasets_package_is_a_clear_error(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(CorpusError, match="pip install datasets"):
        list(read_hub_dataset(SourceConfig(name="wikitext", subset="wikitext-2-raw-v1")))


def test_a_source_needs_paths_or_a_name_and_a_positive_weight():
    with pytest.raises(CorpusError, match="exactly one"):
        SourceConfig()
    with pytest.raises(CorpusError, match="weight"):
        SourceConfig(paths=["x"], weight=0)


def test_length_filters_are_counted(tmp_path):
    (tmp_path / "a.txt").write_text("tiny\n\n" + "a fine paragraph of text\n\n" + "x" * 500)
    docs, counters = documents(SourceConfig(paths=[str(tmp_path)]), "paragraph",
                               CleaningConfig(min_chars=10, max_chars=100))
    assert docs == ["a fine paragraph of text"]
    assert (counters.docs_in, counters.too_short, counters.too_long) == (3, 1, 1)


def test_binary_and_empty_text_files_are_left_out_whole_and_said_so(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "b.txt").write_bytes(b"")
    (tmp_path / "c.txt").write_text("text\n")
    blocks = list(Source.resolve(SourceConfig(paths=[str(tmp_path)])).blocks("line"))
    assert blocks == [("skipped", ["binary", str((tmp_path / "a.txt").resolve())]),
                      ("skipped", ["empty", str((tmp_path / "b.txt").resolve())]), ("text-part", b"text\n")]
