"""The bad-input suite (issue 16): every way a user can hand train.py bad input ends in one clear message that names
the setting and the fix, never a Python traceback; a non-zero exit where nothing can be done; a warning and a count
in the data card where the input can be cleaned; and no corrupted cache or checkpoint in any case.

Each case runs the command line a user types, in this process (``lit_lm.cli.run``: what ``python train.py`` and
``python -m lit_lm.data prepare`` call, with the same exit status and stderr; a subprocess would add ~10 s of imports
per case), against one tiny corpus, store and checkpoint shared by the module. ``test_train_py_itself`` runs one case
through ``python train.py`` in a subprocess, to show the script's real stderr. A full disk is simulated by
``FullDisk``: every file written through Python's ``open`` (and ``torch.save``) fails with ENOSPC, after writing what
still fits, once a given number of bytes has been written.
"""

import builtins
import errno
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from lit_lm.cli import run
from lit_lm.data.store import TokenStore
from lit_lm.runs import find_last_checkpoint
from tests.conftest import user_runs, ROOT, tiny_tokenizer, write_corpus
from tests.test_recipes import TINY

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
FAST = [*TINY, "--trainer.precision", "32-true", "--data.init_args.progress", "false",
        "--data.init_args.num_proc", "1", "--trainer.logger", "lit_lm.loggers.CSVLogger"]


@dataclass
class Shared:
    """What the cases share: a corpus, a cache holding its store, and a run folder holding a 2-step checkpoint."""

    root: Path
    corpus: Path
    cache: Path
    run: Path  # the working folder of the trained run: runs/quickstart/... under it

    def args(self, command: str, *extra: str, paths: str | None = None) -> list[str]:
        return [command, "--config", QUICKSTART, *FAST, "--data.init_args.cache_dir", str(self.cache),
                "--data.init_args.paths", f"[{paths or self.corpus}]", *extra]

    @property
    def checkpoint(self) -> Path:
        return next((self.run / "runs").rglob("last.ckpt"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Shared:
    root = tmp_path_factory.mktemp("bad-input")
    shared = Shared(root, write_corpus(root / "corpus", n_files=4, paragraphs=20), root / "cache", root / "trained")
    shared.run.mkdir()
    with pytest.MonkeyPatch.context() as patch:  # module scope: the autouse fixtures of conftest come later
        patch.setenv("WANDB_MODE", "disabled")
        patch.setattr(sys, "argv", ["train.py"])
        patch.chdir(shared.run)
        run(shared.args("fit", "--trainer.max_steps", "2", "--trainer.enable_checkpointing", "true"))
    return shared


@pytest.fixture(autouse=True)
def as_a_user(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])  # in-process runs take their arguments from args= alone


def assert_one_clear_message(err: str, *needles: str) -> str:
    """stderr ends in one ``error:`` message (no traceback) holding every regex of ``needles``; the message."""
    assert "Traceback" not in err, err[-3000:]
    assert err.count("\nerror: ") + err.startswith("error: ") == 1, err[-3000:]
    message = err[err.index("error: "):]
    for needle in needles:
        assert re.search(needle, message), f"{needle!r} not in {message!r}"
    return message


def card_of(out: str) -> dict:
    """The data card ``prepare`` prints as its last line."""
    return json.loads(out.strip().splitlines()[-1])


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- inputs nothing can be done with: exit status 2, one line naming the setting and the fix ---------------------

@dataclass
class Case:
    name: str
    command: str
    extra: list[str] = field(default_factory=list)
    paths: str | None = None  # relative to the case's tmp_path; None: the shared corpus
    message: tuple[str, ...] = ()
    make: object = None  # make(tmp_path, shared): files the case needs


def empty_files(tmp: Path, shared: Shared) -> None:
    (tmp / "empty").mkdir()
    for i in range(3):
        (tmp / "empty" / f"e{i}.txt").write_bytes(b"")


def binary_file(tmp: Path, shared: Shared) -> None:
    (tmp / "photo.txt").write_bytes(bytes(range(256)) * 400)  # NUL bytes: what images and archives look like


def garbage_checkpoint(tmp: Path, shared: Shared) -> None:
    (tmp / "garbage.ckpt").write_bytes(b"PK\x03\x04 not a checkpoint" * 100)


def truncated_checkpoint(tmp: Path, shared: Shared) -> None:
    whole = shared.checkpoint.read_bytes()
    (tmp / "half.ckpt").write_bytes(whole[: len(whole) // 2])  # what an interrupted copy leaves


def other_tokenizer(tmp: Path, shared: Shared) -> None:
    tiny_tokenizer("wordpiece", 120).save(str(tmp / "other-tokenizer.json"))


CASES = [
    Case("a missing path", "prepare", paths="nowhere/corpus.txt",
         message=("data.paths", "does not exist", "give existing files, folders or globs")),
    Case("an empty folder", "prepare", paths="void", make=lambda tmp, _: (tmp / "void").mkdir(),
         message=("data.paths", "holds no text, JSONL or Parquet file")),
    Case("empty files", "prepare", paths="empty", make=empty_files,
         message=("data.paths", "every file is empty or blank", "Point data.paths at text")),
    Case("a binary file", "prepare", paths="photo.txt", make=binary_file,
         message=("data.paths", "binary", "point data.paths at text files")),
    Case("a sequence length beyond the model's positions", "fit", ["--data.init_args.seq_length", "256"],
         message=(r"data.seq_length \(256\)", r"max_position_embeddings \(128", "lower the first or raise the second")),
    Case("heads that do not divide the width", "fit", ["--model.init_args.config.num_heads", "3"],
         message=(r"hidden_size \(32\) must be divisible by num_heads \(3\)", "pick num_heads from the divisors")),
    Case("a negative learning rate", "fit", ["--model.init_args.optimizer.lr", "-0.001"],
         message=("model.optimizer.lr", "must be positive")),
    Case("a width of the wrong type", "fit", ["--model.init_args.config.hidden_size", "wide"],
         message=("model.config.hidden_size", "Expected a <class 'int'>", "--help")),
    Case("an unparsable max_time", "fit", ["--trainer.max_time", "4h"],
         message=("trainer.max_time", "'4h' is not a duration", "DD:HH:MM:SS")),
    Case("a missing checkpoint", "fit", ["--ckpt_path", "nowhere.ckpt"],
         message=("--ckpt_path", "does not exist", "drop --ckpt_path to start a new run")),
    Case("a corrupt checkpoint", "fit", ["--ckpt_path", "garbage.ckpt"], make=garbage_checkpoint,
         message=("--ckpt_path", "is not a readable checkpoint", "damaged or incomplete", "drop --ckpt_path")),
    Case("a half-written checkpoint", "fit", ["--ckpt_path", "half.ckpt"], make=truncated_checkpoint,
         message=("--ckpt_path", "is not a readable checkpoint", "damaged or incomplete")),
    Case("a checkpoint whose vocabulary does not match the tokenizer", "fit",
         ["--ckpt_path", "{checkpoint}", "--data.init_args.tokenizer.path", "other-tokenizer.json"],
         make=other_tokenizer, message=("cannot resume", r"config.vocab_size: \d+ in the checkpoint, \d+ now",
                                        "drop --ckpt_path to train a new run")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@pytest.mark.slow
def test_input_nothing_can_be_done_with_is_one_clear_message(case, shared, tmp_path, capsys):
    if case.make:
        case.make(tmp_path, shared)
    before = digest(shared.run)
    extra = [arg.format(checkpoint=shared.checkpoint) for arg in case.extra]
    code, _, err = user_runs(shared.args(case.command, *extra, "--trainer.max_steps", "2",
                                         paths=str(tmp_path / case.paths) if case.paths else None), tmp_path, capsys)
    assert code == 2
    assert_one_clear_message(err, *case.message)
    assert digest(shared.run) == before  # the checkpoint it might have resumed is untouched


# ---- input that can be cleaned: exit 0, a warning naming the setting, and a count in the data card ---------------

@pytest.mark.slow
def test_binary_and_empty_files_beside_text_are_left_out_counted_and_named(shared, tmp_path, capsys):
    corpus = shutil.copytree(shared.corpus, tmp_path / "corpus")
    binary_file(corpus, shared)
    (corpus / "blank.txt").write_bytes(b"")
    code, out, err = user_runs(shared.args("prepare", paths=str(corpus)), tmp_path, capsys)
    assert code == 0 and "Traceback" not in err
    card = card_of(out)
    assert (card["binary_files"], card["empty_files"]) == (1, 1)
    assert card["docs_in"] == 80  # the 4 x 20 paragraphs of text, nothing from the binary file
    assert re.search(r"warning: data.paths: left out 1 binary file\(s\) \(.*photo.txt\)", err)
    assert re.search(r"warning: data.paths: left out 1 empty file\(s\) \(.*blank.txt\)", err)


@pytest.mark.slow
def test_truncated_and_corrupt_gz_files_are_read_up_to_the_damage_counted_and_named(shared, tmp_path, capsys):
    corpus = shutil.copytree(shared.corpus, tmp_path / "corpus")
    text = "\n\n".join(f"paragraph {i} of a download that stopped half way." for i in range(2000)).encode()
    whole = gzip.compress(text)
    (corpus / "cut.txt.gz").write_bytes(whole[: len(whole) * 2 // 3])  # an interrupted download
    records = gzip.compress("".join(f'{{"text": "record {i} of {i * 7919 % 1009}"}}\n' for i in range(500)).encode())
    (corpus / "cut.jsonl.gz").write_bytes(records[: len(records) // 2])
    (corpus / "fake.txt.gz").write_bytes(b"plain text, not gzip at all\n")  # named .gz, never compressed
    code, out, err = user_runs(shared.args("prepare", paths=str(corpus)), tmp_path, capsys)
    assert code == 0 and "Traceback" not in err
    card = card_of(out)
    assert card["damaged_files"] == 3 and card["binary_files"] == card["empty_files"] == 0
    assert card["docs_in"] == 80  # the 4 x 20 paragraphs of text: each damaged file broke in its first 4 MB block
    assert re.search(r"warning: data.paths: 3 compressed file\(s\) end early or are corrupt \(.*cut.txt.gz.*\): their "
                     r"text up to the damage was kept", err)


@pytest.mark.slow
def test_a_latin_1_corpus_is_counted_and_named_then_read_right_with_its_encoding(shared, tmp_path, capsys):
    corpus = tmp_path / "latin"
    corpus.mkdir()
    for file in shared.corpus.iterdir():
        (corpus / file.name).write_bytes(file.read_text().replace("the ", "thé café ").encode("latin-1"))
    code, out, err = user_runs(shared.args("prepare", paths=str(corpus)), tmp_path, capsys)
    assert code == 0 and "Traceback" not in err
    replaced = card_of(out)["replaced_bytes"]
    assert replaced == sum(f.read_bytes().count(b"\xe9") for f in corpus.iterdir())  # every é, nothing else
    assert re.search(rf"warning: data.cleaning.encoding: {replaced} byte sequence\(s\) were not valid utf-8.*"
                     r"set data.cleaning.encoding \(e.g. latin-1", err)
    code, out, err = user_runs(shared.args("prepare", "--data.init_args.cleaning.encoding", "latin-1",
                                           paths=str(corpus)), tmp_path, capsys)
    assert code == 0 and card_of(out)["replaced_bytes"] == 0 and "warning" not in err
    store = Path(card_of(out)["store"])
    assert "cafe" in json.loads((store / "tokenizer.json").read_text())["model"]["vocab"]  # é read as é (uncased: e)


@pytest.mark.slow
def test_a_20_mb_line_is_dropped_counted_and_named_before_tokenizing(shared, tmp_path, capsys):
    corpus = shutil.copytree(shared.corpus, tmp_path / "corpus")
    (corpus / "dump.txt").write_text("token layer " * (20_000_000 // 12) + "\n")
    code, out, err = user_runs(shared.args("prepare", paths=str(corpus)), tmp_path, capsys)
    assert code == 0 and "Traceback" not in err
    card = card_of(out)
    assert card["long_lines"] == 1 and card["bytes"] > 20_000_000 and card["docs_in"] == 80
    # none of it reached the tokenizer (tokenizing it as one sequence took minutes): the same tokens and sequences
    # as the corpus without the dump
    code, without, _ = user_runs(shared.args("prepare", paths=str(shared.corpus)), tmp_path, capsys)
    assert code == 0
    assert (card["tokens"], card["sequences"]) == (card_of(without)["tokens"], card_of(without)["sequences"])
    assert re.search(r"warning: data.cleaning.max_line_chars: dropped 1 line\(s\) longer than 1000000 characters.*"
                     r"raise data.cleaning.max_line_chars, or null", err)


# ---- a full disk: a clear message, the previous store / checkpoint intact, nothing half-written left -------------

class FullDisk:
    """A disk with ``room`` bytes left: writes through Python's ``open`` (and ``torch.save`` to a path) fail with
    ENOSPC once it is full, after writing the part that still fits, as a real full disk does."""

    def __init__(self, monkeypatch, room: int) -> None:
        self.room, self.open, self.save = room, builtins.open, torch.save
        monkeypatch.setattr(builtins, "open", self.opened)
        monkeypatch.setattr(torch, "save", self.saved)

    def opened(self, file, mode="r", *args, **kwargs):
        handle = self.open(file, mode, *args, **kwargs)
        return self.Writer(handle, self) if isinstance(mode, str) and set(mode) & set("wax+") else handle

    def saved(self, obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            with self.opened(f, "wb") as handle:
                return self.save(obj, handle, *args, **kwargs)
        return self.save(obj, f, *args, **kwargs)

    class Writer:
        def __init__(self, handle, disk: "FullDisk") -> None:
            self._handle, self._disk = handle, disk

        def write(self, data):
            if len(data) > self._disk.room:
                self._handle.write(data[: self._disk.room])
                self._disk.room = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._disk.room -= len(data)
            return self._handle.write(data)

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __iter__(self):
            return iter(self._handle)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self._handle.close()


@pytest.mark.slow
def test_a_full_disk_while_writing_a_store_keeps_the_cache_whole(shared, tmp_path, capsys, monkeypatch):
    stores = shared.cache / "stores"  # the shared corpus's store, built by the fixture's run
    before = {store.name: digest(store) for store in stores.iterdir() if store.is_dir()}
    corpus = write_corpus(tmp_path / "new", n_files=4, paragraphs=20, seed=1)
    with monkeypatch.context() as patch:
        FullDisk(patch, room=20_000)
        code, _, err = user_runs(shared.args("prepare", paths=str(corpus)), tmp_path, capsys)
    assert code == 2
    assert_one_clear_message(err, "the disk is full", "writing the data store", "Free space there",
                             r"data.cache_dir \(or \$LIT_LM_CACHE\)")
    after = {store.name: digest(store) for store in stores.iterdir() if store.is_dir()}
    assert after == before  # no new entry, no half-built one (.tmp-*), every old store byte for byte
    old = [store for store in stores.iterdir() if store.is_dir()][0]
    assert len(TokenStore(old / "train")) > 0
    code, out, _ = user_runs(shared.args("prepare", paths=str(corpus)), tmp_path, capsys)  # with room: it builds
    assert code == 0 and not card_of(out)["cache_hit"]


@pytest.mark.slow
def test_a_full_disk_while_writing_a_checkpoint_keeps_the_last_one_loadable(shared, tmp_path, capsys, monkeypatch):
    shutil.copytree(shared.run / "runs", tmp_path / "runs")
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    before = last.read_bytes()
    scratch = tmp_path / "scratch"  # where temporary files go: what a failed write leaves there is visible
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with monkeypatch.context() as patch:  # a new run of the recipe, in the same run folder, on a filling disk
        FullDisk(patch, room=len(before) // 2)  # the logs fit, its checkpoint only half
        code, _, err = user_runs(shared.args("fit", "--trainer.max_steps", "2"), tmp_path, capsys)
    assert code == 2
    assert_one_clear_message(err, "the disk is full", r"writing the checkpoint \S+\.ckpt", "Free space there",
                             r"trainer.default_root_dir")
    assert last.read_bytes() == before  # the previous checkpoint, byte for byte
    written = [p for p in [*scratch.rglob("*"), *(tmp_path / "runs").rglob("*.ckpt*")] if p.is_file() and p != last]
    assert written == []  # nothing half-written stays behind to be read
    assert find_last_checkpoint([tmp_path / "runs"]) == last  # so --ckpt_path last resumes the whole one
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2


# ---- the script itself ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_py_itself_prints_one_line_and_exits_2(shared, tmp_path):
    garbage_checkpoint(tmp_path, shared)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *shared.args("fit", "--ckpt_path", "garbage.ckpt")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert_one_clear_message(proc.stderr, "--ckpt_path", "is not a readable checkpoint")
