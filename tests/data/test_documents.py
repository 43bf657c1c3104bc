"""The clean-and-deduplicate pass's worker pool."""

import signal

import pytest

from lit_lm.data import PretrainingDataModule, documents
from lit_lm.data.tokenizer import TokenizerConfig


CLEAN_CHUNK = documents.clean_chunk


def reporting_clean_chunk(*args, **kwargs):
    """``clean_chunk``, failing the build when the pool worker running it kept its parent's signal handlers."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        raise RuntimeError("a pool worker kept its parent's SIGTERM handler")
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        raise RuntimeError("a pool worker would take the parent's Ctrl-C")
    return CLEAN_CHUNK(*args, **kwargs)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="POSIX signals")
def test_pool_workers_end_on_sigterm_whatever_handler_the_parent_had(tmp_path, corpus, monkeypatch):
    # Lightning's SIGTERM notifier only records the signal: a forked worker that inherited it could not be ended by
    # Pool.terminate, and a build hung forever when a worker was stuck on a lock another thread held at the fork
    seen = []
    monkeypatch.setattr(documents, "clean_chunk", reporting_clean_chunk)
    previous = signal.signal(signal.SIGTERM, lambda *args: seen.append(args))
    try:
        datamodule = PretrainingDataModule(paths=[str(corpus)], cache_dir=str(tmp_path / "cache"), num_proc=2,
                                           progress=False, seq_length=32,
                                           tokenizer=TokenizerConfig(vocab_size=200))
        datamodule.prepare_data()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert datamodule.card["docs_out"] > 0 and not datamodule.card["cache_hit"]
    assert not seen  # the parent's own handler was left in place and never called
