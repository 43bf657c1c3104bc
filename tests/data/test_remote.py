"""The store on object storage: uploaded once to an S3-compatible server (moto's, on localhost), trained from with
``--data.store s3://...`` through a local read cache, resumed, never read half-uploaded or changed."""

import importlib
import json
import logging
import multiprocessing
import sys
import uuid

import pytest
from lightning.pytorch.callbacks import Callback

from lit_lm.cli import LitLMCLI
from lit_lm.cli import run as cli_run
from lit_lm.data import PretrainingDataModule, Recipe, TokenizerConfig
from lit_lm.data.__main__ import main as data_main
from lit_lm.data.__main__ import prepare, upload
from lit_lm.data.remote import MANIFEST, RemoteStoreError, fetch_store, filesystem, upload_store
from tests.conftest import ROOT, InterruptAt, write_corpus

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
DATA = ["--data.split", "paragraph", "--data.tokenizer.vocab_size", "300", "--data.seq_length", "32",
        "--data.batch_size", "8", "--data.progress", "false"]
TINY = ["--model.init_args.config.hidden_size", "32", "--model.init_args.config.num_layers", "1",
        "--model.init_args.config.num_heads", "2", "--model.init_args.config.intermediate_size", "64",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "5"]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}  # never ask a cloud metadata service: localhost only


class Requests(logging.Handler):
    """The request lines the S3 server logs ("GET /bucket/key HTTP/1.1" ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def gets(self, prefix: str) -> list[str]:
        return [line for line in self.lines if f"GET /{prefix}" in line]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An S3-compatible server (moto) on a free localhost port, a bucket, and this module's AWS settings."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    s3 = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    requests = Requests()
    werkzeug = logging.getLogger("werkzeug")  # the server logs each request here
    level = werkzeug.level
    with pytest.MonkeyPatch.context() as env:
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)
        nowhere = tmp_path_factory.mktemp("aws")  # no ~/.aws settings of the machine running the tests
        env.setenv("AWS_CONFIG_FILE", str(nowhere / "config"))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere / "credentials"))
        werkzeug.addHandler(requests)
        werkzeug.setLevel(logging.INFO)
        s3.start()
        host, port = s3.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        fs, _ = filesystem("s3://lit-lm-test", {"endpoint_url": endpoint})
        fs.mkdir("lit-lm-test")
        yield endpoint, requests
        s3.stop()
        werkzeug.removeHandler(requests)
        werkzeug.setLevel(level)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny store, built once for this module: (its folder, what it was built from, its recipe's settings)."""
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    recipe = Recipe.plan([str(corpus)], split="paragraph", tokenizer=TokenizerConfig(vocab_size=300), seq_length=32)
    folder, _ = recipe.build(tmp_path_factory.mktemp("cache"), progress=False)
    return folder, recipe.identity(), recipe.settings


def new_url() -> str:
    return f"s3://lit-lm-test/{uuid.uuid4().hex[:8]}/store"


@pytest.fixture
def uploaded(server, built) -> tuple[str, dict]:
    """A new URL on the server holding the built store, and the storage options that reach the server."""
    endpoint, _ = server
    folder, identity, _ = built
    url, options = new_url(), {"endpoint_url": endpoint}
    upload_store(folder, url, identity, options, progress=False)
    return url, options


def key_of(url: str) -> str:
    return url.removeprefix("s3://")


class Record(Callback):
    """Every row a training step consumed, and each step's loss."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, ...]] = []
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows += [tuple(r) for r in batch["input_ids"].tolist()]
        self.losses.append(float(outputs["loss"]))


def fit(args, *callbacks, ckpt_path=None) -> tuple[Record, PretrainingDataModule]:
    cli = LitLMCLI(args=["--config", QUICKSTART, *TINY, *DATA, *args], run=False)
    record = Record()
    cli.trainer.callbacks += [*callbacks, record]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return record, cli.datamodule


@pytest.mark.slow
def test_a_run_streams_its_store_from_s3_and_resumes_with_the_rows_not_yet_trained(server, corpus, tmp_path,
                                                                                    monkeypatch):
    endpoint, requests = server
    url, options = new_url(), f"{{endpoint_url: {endpoint}}}"
    monkeypatch.setattr(sys, "argv", ["train.py"])
    for folder in ("local", "build", "node"):
        (tmp_path / folder).mkdir()
    local = ["--data.paths", f"[{corpus}]"]
    monkeypatch.chdir(tmp_path / "local")  # the reference: the same run from the local store, uninterrupted
    reference, local_data = fit([*local, "--trainer.max_steps", "12"])

    monkeypatch.chdir(tmp_path / "build")
    summary = upload(["--config", QUICKSTART, *TINY, *DATA, *local, "--data.storage_options", options, "--to", url])
    assert summary["uploaded_files"] == summary["files"] == 8  # 2 x (index, 1 shard x 2 files), tokenizer, card

    monkeypatch.chdir(tmp_path / "node")  # a training node: no corpus named, the store from S3
    remote = ["--data.store", url, "--data.storage_options", options, "--data.paths", f"[{tmp_path / 'absent'}]"]
    warmed = prepare(["--config", QUICKSTART, *TINY, *DATA, *remote])  # prepare fills the node's read cache
    assert warmed["downloaded_files"] == 8 and warmed["store"] == url
    interrupted = Record()
    with pytest.raises(SystemExit):  # Ctrl-C at step 7: the recipe saves last.ckpt and exits
        fit([*remote, "--trainer.max_steps", "12"], InterruptAt(7), interrupted)
    assert interrupted.rows == reference.rows[: 7 * 8]  # the same rows, in the same order, as from the local store
    assert interrupted.losses == pytest.approx(reference.losses[:7], rel=1e-3)  # float sums vary with threads
    shards = [line for line in requests.gets(key_of(url)) if "/shard-" in line]
    assert len(shards) == 4  # each shard file was downloaded once, by prepare
    resumed, data = fit([*remote, "--trainer.max_steps", "12"], ckpt_path="last")

    assert resumed.rows == reference.rows[7 * 8 :]  # exactly the rows the interrupted run had not trained on
    assert data.card["store"] == url and data.card["docs_in"] == 120  # the store's own data card
    assert data.resume_settings() == local_data.resume_settings()  # so a local run's checkpoint resumes from S3 too
    assert data.card["downloaded_files"] == 0  # the read cache, reused: no shard was fetched again
    assert [line for line in requests.gets(key_of(url)) if "/shard-" in line] == shards


def test_a_half_uploaded_store_is_never_read_and_uploading_again_finishes_it(uploaded, built, tmp_path):
    (url, options), (folder, identity, settings) = uploaded, built
    fs, root = filesystem(url, options)
    fs.rm(f"{root}/{MANIFEST}")  # an upload stopped before its last step
    with pytest.raises(RemoteStoreError, match="holds no manifest.json: no store was uploaded there, or its upload"):
        fetch_store(url, tmp_path / "cache", settings, options, progress=False)
    assert not (tmp_path / "cache" / "remote").exists()  # nothing was downloaded
    again = upload_store(folder, url, identity, options, progress=False)
    assert again["uploaded_files"] == 8 and fs.exists(f"{root}/{MANIFEST}")
    store, card = fetch_store(url, tmp_path / "cache", settings, options, progress=False)
    assert (store / "train" / "index.json").is_file() and card["downloaded_files"] == 8


def test_the_read_cache_is_reused_and_a_corrupted_cached_shard_is_downloaded_again(server, built, tmp_path,
                                                                                   monkeypatch):
    endpoint, requests = server
    folder, identity, settings = built
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the endpoint from the environment, as botocore reads it
    url = new_url()
    upload_store(folder, url, identity, progress=False)
    first, card = fetch_store(url, tmp_path / "cache", settings, progress=False)
    assert card["downloaded_files"] == 8 and card["cache_hit"] is False
    shard = first / "train" / "shard-00000.tokens"
    gets = len(requests.gets(key_of(url)))

    second, card = fetch_store(url, tmp_path / "cache", settings, progress=False)
    assert second == first and card["downloaded_files"] == 0 and card["cache_hit"] is True
    assert [line for line in requests.gets(key_of(url))[gets:] if MANIFEST not in line] == []  # only the manifest

    good = shard.read_bytes()
    shard.write_bytes(bytes([good[0] ^ 1]) + good[1:])  # one flipped bit, the same size
    _, card = fetch_store(url, tmp_path / "cache", settings, progress=False)
    assert card["downloaded_files"] == 1 and shard.read_bytes() == good
    assert [p.name for p in first.rglob(".tmp-*")] == []


def _fetch(url, cache_dir, settings, options) -> int:
    return fetch_store(url, cache_dir, settings, options, progress=False)[1]["downloaded_files"]


def test_ranks_sharing_a_read_cache_download_the_store_once(uploaded, built, tmp_path):
    (url, options), (_, _, settings) = uploaded, built
    # fresh processes, as a node's ranks are (a fork beside pytest-xdist's threads could inherit a held lock)
    with multiprocessing.get_context("spawn").Pool(2) as ranks:  # two ranks of a node start at once
        downloaded = ranks.starmap(_fetch, [(url, tmp_path / "cache", settings, options)] * 2)
    assert sorted(downloaded) == [0, 8]  # one downloaded under the lock, the other found every file checked


def test_a_store_changed_after_its_upload_is_refused(uploaded, built, tmp_path):
    (url, options), (_, _, settings) = uploaded, built
    fs, root = filesystem(url, options)
    original = fs.cat_file(f"{root}/train/shard-00000.lengths")
    fs.pipe_file(f"{root}/train/shard-00000.lengths", bytes(len(original)))  # same size, other bytes
    with pytest.raises(RemoteStoreError, match="shard-00000.lengths does not match the store's manifest.json"):
        fetch_store(url, tmp_path / "cache", settings, options, progress=False)
    cache = next((tmp_path / "cache" / "remote").iterdir())
    assert not (cache / "train" / "shard-00000.lengths").exists() and list(cache.rglob(".tmp-*")) == []


def test_another_store_at_the_url_is_never_overwritten(uploaded, built, tmp_path, corpus):
    (url, options), (folder, identity, _) = uploaded, built
    assert upload_store(folder, url, identity, options, progress=False)["already_there"] is True
    other = Recipe.plan([str(corpus)], split="paragraph", tokenizer=TokenizerConfig(vocab_size=300), seq_length=16)
    other_folder, _ = other.build(tmp_path / "cache", progress=False)
    with pytest.raises(RemoteStoreError, match="already holds another store; upload to a new prefix"):
        upload_store(other_folder, url, other.identity(), options, progress=False)
    fs, root = filesystem(url, options)
    assert json.loads(fs.cat_file(f"{root}/{MANIFEST}"))["identity"] == identity


def test_data_settings_that_differ_from_the_store_are_one_clear_line(server, built, tmp_path, monkeypatch, capsys):
    endpoint, _ = server
    folder, identity, _ = built
    url = new_url()
    upload_store(folder, url, identity, {"endpoint_url": endpoint}, progress=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit) as exit_:
        cli_run(["fit", "--config", QUICKSTART, *TINY, *DATA, "--data.seq_length", "64", "--data.seed", "3",
                 "--data.store", url, "--data.storage_options", f"{{endpoint_url: {endpoint}}}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "data.seq_length: 32 in the store, 64 in this run" in err
    assert "data.seed: 0 in the store, 3 in this run" in err
    assert not (tmp_path / "runs").exists()


def test_credentials_in_storage_options_are_refused():
    with pytest.raises(RemoteStoreError, match="storage_options.secret is a credential"):
        PretrainingDataModule(store="s3://bucket/store", storage_options={"endpoint_url": "http://x", "secret": "s"})
    with pytest.raises(RemoteStoreError, match="storage_options.client_kwargs.aws_secret_access_key is a credential"):
        PretrainingDataModule(storage_options={"client_kwargs": {"aws_secret_access_key": "s"}})


def test_without_s3fs_the_error_names_the_extra(monkeypatch):
    registry = importlib.import_module("fsspec.registry")._registry  # filesystems already imported, by protocol
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if the s3 extra were not installed
    monkeypatch.delitem(registry, "s3", raising=False)
    with pytest.raises(RemoteStoreError, match=r'pip install -e "\.\[s3\]"'):
        filesystem("s3://bucket/store")


def test_upload_without_a_url_says_how(capsys):
    with pytest.raises(SystemExit) as exit_:
        data_main(["upload", "--config", QUICKSTART])
    assert exit_.value.code == 2 and "--to" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="python -m lit_lm.data upload --config <recipe.yaml>"):
        data_main(["download"])
