"""A content-keyed cache of prepared data, written atomically."""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


def default_cache_dir() -> Path:
    return Path(os.environ.get("LIT_LM_CACHE", Path.home() / ".cache" / "lit-lm")).expanduser()


def cache_key(settings: dict) -> str:
    """A short hash of everything that shaped a cached artefact."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def build_lock(final: Path) -> Iterator[None]:
    """Serialise builds of one cache entry across processes (DDP ranks, parallel runs). The lock dies with its
    holder, so a build killed midway leaves only its temporary folder, removed here by the next holder."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        for stale in final.parent.glob(f".tmp-{final.name}-*"):  # no one else builds this entry: we hold its lock
            shutil.rmtree(stale, ignore_errors=True)
        yield


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; it becomes ``final`` in one rename only if the block succeeds.

    An interrupted build leaves at most a stray ``.tmp-*`` folder, never a ``final`` that looks complete.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
