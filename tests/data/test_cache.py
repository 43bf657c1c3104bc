"""The store is built once however many processes ask for it at the same time (DDP ranks, parallel runs): one
builds under the entry's lock, the others wait and read that same store; a build killed midway is cleaned up."""

import hashlib
import multiprocessing
from pathlib import Path

import pytest

from lit_lm.data.cache import build_lock
from tests.conftest import write_corpus

PROCESSES = 3


def build(corpus: str, cache: str, barrier, results) -> None:
    """One process (a DDP rank): plan the same recipe and build or reuse its store, starting with the others."""
    from lit_lm.data.recipe import Recipe, TokenizerConfig

    recipe = Recipe.plan([corpus], split="paragraph", tokenizer=TokenizerConfig(vocab_size=200), seq_length=32)
    barrier.wait()  # all ask at once
    store, card = recipe.build(Path(cache), num_proc=1, progress=False)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((store / "train").iterdir()))).hexdigest()
    results.put((str(store), card["cache_hit"], digest))


@pytest.mark.slow
def test_processes_racing_to_build_one_store_build_it_once_and_all_read_it(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_files=2, paragraphs=8)
    context = multiprocessing.get_context("spawn")  # fresh processes, as DDP ranks are
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    processes = [context.Process(target=build, args=(str(corpus), str(tmp_path / "cache"), barrier, results))
                 for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    got = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert sorted(hit for _, hit, _ in got) == [False] + [True] * (PROCESSES - 1)  # built once, reused twice
    assert len({store for store, _, _ in got}) == 1 and len({digest for _, _, digest in got}) == 1
    assert not list((tmp_path / "cache" / "stores").glob(".tmp-*"))


def test_the_next_build_removes_a_killed_builds_temporary_folder(tmp_path):
    final = tmp_path / "stores" / "abc"
    stale = tmp_path / "stores" / ".tmp-abc-x1y2"  # what a build killed midway leaves (its lock died with it)
    other = tmp_path / "stores" / ".tmp-abcd-x1y2"  # another entry's build, perhaps running: not ours to remove
    for folder in (stale, other):
        folder.mkdir(parents=True)
        (folder / "shard-00000.tokens").write_bytes(b"half")
    with build_lock(final):
        assert not stale.exists() and other.exists()
