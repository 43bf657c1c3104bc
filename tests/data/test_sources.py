import pytest

from lit_lm.data.sources import CorpusError, CorpusStats, read_documents, resolve_paths


def test_files_folders_and_globs_resolve_to_one_sorted_list(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    (tmp_path / "a" / "y.md").write_text("y")
    (tmp_path / "a" / "skip.bin").write_bytes(b"\0")
    (tmp_path / "b.txt").write_text("b")
    files = resolve_paths([str(tmp_path / "a"), str(tmp_path / "*.txt"), str(tmp_path / "b.txt")])
    assert sorted(f.name for f in files) == [
        "b.txt", "x.txt", "y.md"]
    assert files == sorted(files)


@pytest.mark.parametrize("spec, match", [("missing.txt", "does not exist"), ("nothing-*.txt", "matches no file")])
def test_missing_paths_are_clear_errors(tmp_path, spec, match):
    with pytest.raises(CorpusError, match=match):
        resolve_paths([str(tmp_path / spec)])


def test_folder_without_text_is_a_clear_error(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"\0\1")
    with pytest.raises(CorpusError, match="holds no text file"):
        resolve_paths([str(tmp_path)])


def test_documents_by_file_or_by_paragraph_skip_empty_ones(tmp_path):
    (tmp_path / "one.txt").write_text("first para\n\nsecond para\n")
    (tmp_path / "empty.txt").write_text("  \n\n ")
    files = resolve_paths([str(tmp_path)])
    stats = CorpusStats()
    assert list(read_documents(files, "file", stats)) == ["first para\n\nsecond para"]
    assert stats.files == 2 and stats.docs == 1
    assert list(read_documents(files, "paragraph", CorpusStats())) == ["first para", "second para"]
    with pytest.raises(CorpusError, match="data.split"):
        list(read_documents(files, "sentence", CorpusStats()))
