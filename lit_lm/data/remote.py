"""A prepared store on object storage (S3 or compatible, or any fsspec URL), read through a local read cache.

At the URL lies a copy of a local store folder (lit_lm.data.store), and a manifest written last::

    train/index.json, train/shard-*.tokens, train/shard-*.lengths, val/..., tokenizer.json, card.json
    manifest.json   the store's settings (the corpus by its hash), its data card, every file's size and sha256

A URL without ``manifest.json`` holds an upload in progress or an interrupted one, and is never read as a store.
``upload_store`` copies a built store there; ``fetch_store`` reads the manifest, checks it against the run's data
settings, and downloads the files into ``<cache_dir>/remote/<hash of the URL>-<hash of the manifest>/``, each to a
temporary name, checked against the manifest's size and sha256, then renamed. Files already there are reused (on the
next run, on a resume, by the other ranks of the node); the run then streams that folder as a local store.

s3fs (the ``s3`` extra) is imported only when an ``s3://`` URL is used. Credentials and endpoints are s3fs's own:
the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``) or
``~/.aws``, and ``data.storage_options`` for settings that are not secret (``endpoint_url``, ``client_kwargs``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path

from lit_lm.data.cache import build_lock, cache_key
from lit_lm.data.sources import CorpusError
from lit_lm.runs import flatten

MANIFEST = "manifest.json"
FORMAT = "lit-lm store"
STAMPS = ".verified.json"  # in the read cache: each checked file's (size, mtime_ns) when it was checked
SECRET_OPTIONS = ("key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
                  "aws_session_token")
EXTRAS = {"s3": "s3", "s3a": "s3"}  # protocol -> the lit-lm extra that installs its filesystem


class RemoteStoreError(CorpusError):
    """A store URL that cannot be read or written, holds no complete store, or holds another one."""


def check_storage_options(options: dict | None) -> None:
    """Refuse credentials in ``data.storage_options``: the config is saved with the run and logged to its dashboard."""
    secrets = sorted(name for name in flatten(options or {}) if name.split(".")[-1].lower() in SECRET_OPTIONS)
    if secrets:
        raise RemoteStoreError(
            f"data.storage_options.{secrets[0]} is a credential, and the config is saved with the run and logged to "
            "its dashboard; give credentials through the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE) instead.")


def filesystem(url: str, options: dict | None = None):
    """The fsspec filesystem of ``url`` and the path inside it; a RemoteStoreError naming the extra if it is absent."""
    import fsspec

    check_storage_options(options)
    options = dict(options or {})
    if fsspec.core.split_protocol(url)[0] in (None, "file", "local"):  # a folder (a shared filesystem, a test)
        options.setdefault("auto_mkdir", True)
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as error:
        protocol = url.split("://", 1)[0]
        extra = EXTRAS.get(protocol)
        fix = f'pip install -e ".[{extra}]"' if extra else "install the fsspec filesystem for it"
        raise RemoteStoreError(f"data.store {url}: {protocol}:// needs a package that is not installed ({error}); "
                               f"{fix}.") from error
    except (ValueError, TypeError) as error:
        raise RemoteStoreError(f"data.store {url}: {error} (check the URL and data.storage_options).") from error


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def store_files(folder: Path) -> dict[str, dict]:
    """Every file of a store folder (relative path -> size and sha256), the manifest and read-cache stamps aside."""
    return {path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": sha256(path)}
            for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name not in (MANIFEST, STAMPS) and not path.name.startswith(".tmp-")}


def comparable(settings: dict) -> dict:
    """A store's settings without what a training node cannot know: the corpus files and a given tokenizer's
    modification time (the store carries its corpus's tokens and its tokenizer)."""
    tokenizer = {k: v for k, v in settings.get("tokenizer", {}).items() if k != "content"}
    return {**{k: v for k, v in settings.items() if k != "corpus"}, "tokenizer": tokenizer}


def _unreachable(url: str, action: str, error: Exception) -> RemoteStoreError:
    hint = (" Check the bucket, the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and, for an S3-compatible server, "
            "its endpoint (AWS_ENDPOINT_URL or data.storage_options.endpoint_url)." if url.startswith("s3") else "")
    return RemoteStoreError(f"cannot {action} {url}: {type(error).__name__}: {error}.{hint}")


def read_manifest(fs, root: str, url: str) -> bytes | None:
    """The raw manifest at ``url``, or None when there is none."""
    try:
        return fs.cat_file(f"{root}/{MANIFEST}")
    except FileNotFoundError:
        return None
    except Exception as error:  # noqa: BLE001 - any backend's failure becomes one line naming the settings
        raise _unreachable(url, "read", error) from error


def parse_manifest(raw: bytes, url: str) -> dict:
    try:
        manifest = json.loads(raw)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "files" not in manifest:
        raise RemoteStoreError(f"{url}/{MANIFEST} is not a lit-lm store manifest.")
    return manifest


# ---- upload ------------------------------------------------------------------------------------------------------

def upload_store(folder: Path, url: str, identity: dict, options: dict | None = None,
                 progress: bool = True) -> dict:
    """Copy the built store ``folder`` to ``url``, its manifest last.

    ``identity`` is what the store was built from (Recipe.identity: the settings, the corpus by hash). A URL without
    a manifest (nothing, or an interrupted upload) gets every file; a URL holding this store already is left as it
    is; a URL holding another store is refused, since nodes may be reading it. Returns a summary: the URL, files,
    bytes, how many were sent.
    """
    fs, root = filesystem(url, options)
    root = root.rstrip("/")
    files = store_files(folder)
    card = json.loads((folder / "card.json").read_text())
    manifest = {"format": FORMAT, "identity": identity, "card": card, "files": files}
    summary = {"store": url, "files": len(files), "bytes": sum(f["size"] for f in files.values())}
    existing = read_manifest(fs, root, url)
    if existing is not None:
        old = parse_manifest(existing, url)
        if old["files"] == files and old.get("identity") == identity:
            return {**summary, "uploaded_files": 0, "already_there": True}
        raise RemoteStoreError(f"{url} already holds another store; upload to a new prefix (a store that nodes may "
                               "be reading is never overwritten), or delete that one first.")
    try:
        if progress:
            print(f"uploading {len(files)} files ({summary['bytes'] / 1e6:.1f} MB) to {url} ...", file=sys.stderr,
                  flush=True)
        fs.put([str(folder / rel) for rel in files], [f"{root}/{rel}" for rel in files])
        fs.pipe_file(f"{root}/{MANIFEST}", json.dumps(manifest, indent=1).encode())  # last: the store is complete
    except Exception as error:  # noqa: BLE001 - any backend's failure becomes one line naming the settings
        raise _unreachable(url, "write to", error) from error
    return {**summary, "uploaded_files": len(files), "already_there": False}


# ---- download into the read cache --------------------------------------------------------------------------------

def check_settings(manifest: dict, run_settings: dict, url: str) -> None:
    """One RemoteStoreError naming every data setting in which the store at ``url`` differs from this run's."""
    stored, now = flatten(comparable(manifest.get("identity", {}))), flatten(comparable(run_settings))
    names = {"version": "the store format (lit_lm.data.recipe.STORE_VERSION)"}
    lines = [f"{names.get(key, 'data.' + key)}: {stored.get(key, '(unset)')!r} in the store, "
             f"{now.get(key, '(unset)')!r} in this run"
             for key in sorted(stored.keys() | now.keys()) if stored.get(key, "(unset)") != now.get(key, "(unset)")]
    if lines:
        raise RemoteStoreError(f"the store at {url} was built with other data settings:\n  " + "\n  ".join(lines)
                               + "\nTrain with the store's settings, or build and upload a store with these.")


def _fresh(path: Path, meta: dict, stamp: list | None) -> bool:
    """Whether a cached file is the manifest's: unchanged since it was checked, or checked again now."""
    if not path.is_file() or path.stat().st_size != meta["size"]:
        return False
    stat = path.stat()
    return stamp == [stat.st_size, stat.st_mtime_ns] or sha256(path) == meta["sha256"]


def fetch_store(url: str, cache_dir: Path, run_settings: dict, options: dict | None = None,
                progress: bool = True) -> tuple[Path, dict]:
    """The store at ``url`` as a local folder of the read cache, downloaded where missing or changed, and its data
    card with ``store`` (the URL), ``read_cache``, ``downloaded_files``, ``downloaded_bytes``, ``cache_hit`` and
    ``seconds``. Refuses a URL without a manifest and a store whose settings differ from ``run_settings``."""
    from lit_lm.checkpoint import write_file_atomically  # here: lit_lm.checkpoint imports lit_lm.data

    start = time.perf_counter()
    fs, root = filesystem(url, options)
    root = root.rstrip("/")
    raw = read_manifest(fs, root, url)
    if raw is None:
        raise RemoteStoreError(
            f"data.store {url} holds no {MANIFEST}: no store was uploaded there, or its upload has not finished (the "
            "manifest is written last). Upload one with: python -m lit_lm.data upload --config <recipe> --to <URL>")
    manifest = parse_manifest(raw, url)
    check_settings(manifest, run_settings, url)
    folder = Path(cache_dir) / "remote" / f"{cache_key({'url': url})}-{hashlib.sha256(raw).hexdigest()[:16]}"
    with build_lock(folder):
        folder.mkdir(parents=True, exist_ok=True)
        stamps_file = folder / STAMPS
        stamps = json.loads(stamps_file.read_text()) if stamps_file.is_file() else {}
        files = manifest["files"]
        missing = [rel for rel, meta in files.items() if not _fresh(folder / rel, meta, stamps.get(rel))]
        size = sum(files[rel]["size"] for rel in missing)
        if missing:
            if progress:
                print(f"data: downloading {len(missing)} files ({size / 1e6:.1f} MB) of {url} into {folder} ...",
                      file=sys.stderr, flush=True)
            _download(fs, root, url, folder, {rel: files[rel] for rel in missing})
        stamps = {rel: [(st := (folder / rel).stat()).st_size, st.st_mtime_ns] for rel in files}
        write_file_atomically(stamps_file, lambda tmp: tmp.write_text(json.dumps(stamps)))
        write_file_atomically(folder / MANIFEST, lambda tmp: tmp.write_bytes(raw))
    card = {**manifest["card"], "store": url, "read_cache": str(folder), "downloaded_files": len(missing),
            "downloaded_bytes": size, "cache_hit": not missing, "seconds": round(time.perf_counter() - start, 3)}
    return folder, card


def _download(fs, root: str, url: str, folder: Path, files: dict[str, dict]) -> None:
    """Download ``files`` into ``folder``: each to a temporary name, checked, then renamed over its final name."""
    temporary = {}
    for rel in files:
        final = folder / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary[rel] = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        try:
            fs.get([f"{root}/{rel}" for rel in files], [str(temporary[rel]) for rel in files])
        except Exception as error:  # noqa: BLE001
            raise _unreachable(url, "read", error) from error
        for rel, meta in files.items():
            path = temporary[rel]
            if not path.is_file() or path.stat().st_size != meta["size"] or sha256(path) != meta["sha256"]:
                raise RemoteStoreError(f"{url}/{rel} does not match the store's {MANIFEST} (size or sha256): the "
                                       "store was changed after its upload. Upload it again to a new prefix.")
            os.replace(path, folder / rel)
    finally:
        for path in temporary.values():
            path.unlink(missing_ok=True)

