"""Shared fixtures: generated corpora, the optional ../shared/data folder, an isolated cache; and how the suite runs:
in pytest-xdist workers by default, each test in an environment of its session's own (cache, wandb, CPU threads),
with the budget clock frozen, end-to-end runs marked ``slow``, and a missing package of the dev extra a failure."""

import hashlib
import os
import random
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

import lit_lm.precision

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# ---- how the suite runs: in pytest-xdist workers, each test module's shared setup built once ----

WORKERS_AT_MOST = 4
"""Without ``-n``, the suite runs in one xdist worker per CPU this process may use, at most this many: each worker
imports torch and trains tiny models (about 1 GB of memory at its peak), and past four workers the longest tests,
not the number of workers, set the wall time. One usable CPU runs the tests in this process, as ``-n 0`` does."""


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which a container or ``taskset`` narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """``-n`` defaults to ``min(usable CPUs, WORKERS_AT_MOST)`` and ``--dist`` to ``loadgroup`` (tests that share a
    module-scoped fixture run in one worker: ``pytest_collection_modifyitems``); each worker's torch, and every
    process a test starts, gets an equal share of the CPUs (OMP_NUM_THREADS and the like, unless already set).
    Nothing changes without pytest-xdist (``-p no:xdist``), with ``-n 0``, ``--pdb`` or inside a worker."""
    option = config.option
    if not hasattr(option, "numprocesses") or hasattr(config, "workerinput") or option.usepdb:
        return
    if option.numprocesses is None:
        option.numprocesses = min(usable_cpus(), WORKERS_AT_MOST) if usable_cpus() > 1 else 0
    if option.numprocesses in ("auto", "logical"):
        option.numprocesses = config.hook.pytest_xdist_auto_num_workers(config=config)
    if option.maxprocesses:
        option.numprocesses = min(option.numprocesses, option.maxprocesses)
    if not option.numprocesses:
        return
    if option.dist == "no":
        option.dist = "loadgroup"
    threads = str(max(1, usable_cpus() // option.numprocesses))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # the workers inherit these
        os.environ.setdefault(name, threads)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, when it is installed
def pytest_configure_node(node) -> None:
    """pytest-xdist's hook, in the main process: a worker parses only the command line, so it learns ``--dist`` as
    set above from here (its test ids carry their group only under ``loadgroup``)."""
    node.workerinput["lit_lm_dist"] = node.config.option.dist


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests of a module that use a module-scoped fixture of its own (a trained run, a built store) form an xdist
    group: one worker builds the fixture once, instead of each worker building its own copy."""
    loadgroup = getattr(config, "workerinput", {}).get("lit_lm_dist") == "loadgroup"
    if loadgroup:
        config.option.loadgroup = True
    for item in items:
        module = item.nodeid.split("::")[0]
        fixtures = getattr(item, "_fixtureinfo", None)
        shared = any(d.scope == "module" and d.baseid == module
                     for definitions in (fixtures.name2fixturedefs.values() if fixtures else ()) for d in definitions)
        if shared:
            item.add_marker(pytest.mark.xdist_group(module))
        group = next((mark.args[0] for mark in item.iter_markers("xdist_group") if mark.args), None)
        if loadgroup and group and hasattr(item, "_id"):
            # xdist 3.8 tells the scheduler a test's group by renaming item._nodeid, which pytest >= 9.2 no longer
            # reads (pytest-dev/pytest-xdist#1386): rename its structured id the same way, as xdist's fix does
            from _pytest.nodeid import coerce_node_id

            item._id = coerce_node_id(f"{item.nodeid}@{group}")


def memoize_docstring_parsing() -> None:
    """Each ``train.py`` parser parses the docstrings of every class it offers (the Trainer's, each module's and data
    module's, their config dataclasses'), for all five subcommands, again for every run: two thirds of building a
    parser, about 0.8 s of CPU per ``main()`` call, and the suite builds hundreds. The classes do not change during a
    session, so each docstring is parsed once per process here; the parsed help is the same."""
    import jsonargparse._optionals as optionals

    parse = getattr(optionals, "parse_docstring", None)
    if parse is None or hasattr(parse, "cache"):  # another jsonargparse: its own way, uncached; or already memoized
        return
    cache: dict = {}

    def parse_docstring(component, params=False, logger=None):
        try:
            key = (component, params)
            if key not in cache:
                cache[key] = parse(component, params, logger)
            return cache[key]
        except TypeError:  # an unhashable component
            return parse(component, params, logger)

    parse_docstring.cache = cache
    optionals.parse_docstring = parse_docstring


memoize_docstring_parsing()


NOUNS = "cat dog bird fish horse model token layer network teacher student river city garden".split()
VERBS = "sees likes follows trains predicts reads builds finds carries watches".split()
ADJECTIVES = "small large quick lazy bright dark careful hidden masked early".split()


def sentence(rng: random.Random) -> str:
    return (f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} "
            f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}.")


def write_corpus(folder: Path, n_files: int = 6, paragraphs: int = 20, seed: int = 0) -> Path:
    """A generated corpus of simple English-like sentences: learnable in a few dozen steps."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        text = "\n\n".join(" ".join(sentence(rng) for _ in range(rng.randint(3, 8))) for _ in range(paragraphs))
        (folder / f"doc{i}.txt").write_text(text + "\n")
    return folder


def corpus_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The generated corpus every test that only reads it shares (one per xdist worker). A store's cache key holds
    each file's path and modification time, so the first test that prepares it with some settings builds the store
    and every later one with the same settings reads it from the cache. Read-only: a test that adds, changes or
    removes a file takes ``fresh_corpus`` (checked when the session ends)."""
    folder = write_corpus(tmp_path_factory.mktemp("shared") / "corpus")
    before = corpus_digest(folder)
    yield folder
    assert corpus_digest(folder) == before, "a test changed the shared `corpus`: give it `fresh_corpus` instead"


@pytest.fixture
def fresh_corpus(tmp_path: Path) -> Path:
    """The same generated text as ``corpus``, in the test's own folder: for a test that changes it, or that must
    build its store from nothing (a cache miss)."""
    return write_corpus(tmp_path / "corpus")


def tiny_tokenizer(kind: str, vocab_size: int):
    """A tokenizer of ``kind`` trained on generated sentences, with its family's special tokens."""
    from lit_lm.data.tokenizer import TokenizerConfig, train_tokenizer

    rng = random.Random(0)
    return train_tokenizer([" ".join(sentence(rng) for _ in range(3)) for _ in range(120)],
                           TokenizerConfig(kind=kind, vocab_size=vocab_size))


@pytest.fixture(scope="session")
def bert_tokenizer():
    return tiny_tokenizer("wordpiece", 120)  # BERT's special tokens


@pytest.fixture(scope="session")
def gpt_tokenizer():
    return tiny_tokenizer("byte_bpe", 280)  # GPT-2's end-of-text token


def isolate(patch: pytest.MonkeyPatch, base: Path) -> None:
    """The environment every test runs in: prepared data cached under ``base`` (the session's, or with xdist the
    worker's, temporary folder), never in ~/.cache; and wandb disabled, its own files under ``base`` too.

    wandb, every recipe's dashboard, is disabled in tests: an offline run starts a service process (seconds) and
    writes files. A test of wandb itself asks for ``wandb_offline``. Neither ever touches the network."""
    patch.setenv("LIT_LM_CACHE", str(base / "lit-lm-cache"))
    for name in ("WANDB_API_KEY", "WANDB_RUN_GROUP", "WANDB_NAME", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        patch.delenv(name, raising=False)
    wandb_home = base / "wandb-home"
    patch.setenv("WANDB_MODE", "disabled")
    patch.setenv("WANDB_SILENT", "true")
    patch.setenv("WANDB_DIR", str(wandb_home))
    patch.setenv("WANDB_CONFIG_DIR", str(wandb_home / "config"))
    patch.setenv("WANDB_CACHE_DIR", str(wandb_home / "cache"))
    patch.setenv("WANDB_DATA_DIR", str(wandb_home / "data"))


@pytest.fixture(scope="session", autouse=True)
def isolated_session(tmp_path_factory):
    """The isolated environment from the session's start, so that module- and session-scoped fixtures (which are
    set up before any test's own fixtures) train and cache in it too."""
    with pytest.MonkeyPatch.context() as patch:
        isolate(patch, tmp_path_factory.getbasetemp())
        yield


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test starts in the isolated environment again, whatever the test before it changed."""
    isolate(monkeypatch, tmp_path_factory.getbasetemp())


class FrozenClock:
    """The clock of Lightning's ``Timer`` (the wall-clock budget, ``trainer.max_time``) in every test: it never moves,
    so a recipe's own budget (minutes) neither ends a test's run nor shifts its schedules, however slow or loaded
    the machine. A test of the budget moves it by hand: ``tests/callbacks/helpers.py``'s ``FakeClock``."""

    @staticmethod
    def monotonic() -> float:
        return 1000.0


@pytest.fixture(autouse=True)
def frozen_budget_clock(monkeypatch):
    monkeypatch.setattr("lightning.pytorch.callbacks.timer.time", FrozenClock())


TEST_PEAK_FLOPS = 1e12


@pytest.fixture(autouse=True)
def fixed_cpu_peak_flops(monkeypatch):
    """ThroughputMFU takes a CPU's peak FLOP/s from timing square matmuls in the run's dtype at the start of every
    fit (about 0.8 s in fp16, and in bf16 on a CPU without bf16 units: half a tiny fit); a test never times the
    machine, so every fit gets this fixed peak instead. tests/callbacks/test_throughput.py tests the measuring on a
    fake clock, calling ``measure_matmul_flops`` itself."""
    monkeypatch.setattr("lit_lm.callbacks.throughput.measure_matmul_flops", lambda *args, **kwargs: TEST_PEAK_FLOPS)


RUNNING: dict[str, pytest.Item | None] = {"item": None}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    RUNNING["item"] = item  # before its fixtures are set up: a module-scoped fixture counts for the test needing it


@pytest.fixture(scope="session", autouse=True)
def end_to_end_runs_are_marked():
    """A test that trains through train.py's Trainer or starts a process is an end-to-end run: it must be marked
    ``slow`` (``python -m pytest -m "not slow"`` leaves them out). An unmarked one fails, naming what it did; so
    does a fixture that does either for an unmarked test."""
    import lit_lm.cli

    def guarded(original, what: str):
        def guard(*args, **kwargs):
            item = RUNNING["item"]
            if item is not None and item.get_closest_marker("slow") is None:
                pytest.fail(f"{item.nodeid} {what}: mark it @pytest.mark.slow (an end-to-end run)", pytrace=False)
            return original(*args, **kwargs)
        return guard

    try:  # typeshed_client (jsonargparse's stub reader) asks a new interpreter for sys.path once a process
        from jsonargparse._stubs_resolver import get_stubs_resolver

        get_stubs_resolver()  # now, before the guard: it is a library's lookup, not a test's run
    except ImportError:
        pass
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "_execute_child", guarded(subprocess.Popen._execute_child, "starts a process"))
        for method in ("fit", "validate", "test", "predict"):
            patch.setattr(lit_lm.cli.Trainer, method,
                          guarded(getattr(lit_lm.cli.Trainer, method), f"runs train.py's Trainer.{method}"))
        yield


DEV_EXTRA = "pip install -e '.[dev]'"


def missing_dev_package(report) -> str | None:
    """The reason of a skip that ``pytest.importorskip`` gave because a package is missing, else None."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None
    reason = str(report.longrepr[2])
    return reason if "could not import" in reason else None


def fail_instead_of_skipping(report) -> None:
    """The tests need every package of the dev extra (transformers for HF parity, moto and s3fs for the S3 store,
    nbclient for the notebooks, ...): a missing one fails the test that needs it, instead of hiding it as a skip.
    Only ../shared/data and a GPU may be absent (``shared_data``, the ``gpu`` marker)."""
    reason = missing_dev_package(report)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = f"{reason.removeprefix('Skipped: ')}: a package of the dev extra is missing ({DEV_EXTRA})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    fail_instead_of_skipping(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    fail_instead_of_skipping(outcome.get_result())


@pytest.fixture(autouse=True)
def wandb_disabled():
    """No wandb run outlives its test (``isolate`` disables wandb in the environment)."""
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:  # an in-process run would be reused by the next test's logger
        wandb.finish()


@pytest.fixture
def wandb_offline(monkeypatch):
    """wandb logs offline, as it does on a machine without credentials: into the run folder, never the network."""
    import wandb

    wandb.teardown()  # wandb reads its mode from the environment once per process: read it again, now and after
    monkeypatch.setenv("WANDB_MODE", "offline")
    yield
    wandb.finish()
    wandb.teardown()


def shared_data(relative: str) -> Path:
    """A path under ../shared/data, or skip the test when that folder is absent (a fresh clone has none)."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared/data is only present beside the project on developer machines and CI")
    return path


def fake_cpu(monkeypatch, fast_bf16: bool) -> None:
    """A machine without CUDA whose CPU has (or lacks) bf16 units, and whose bf16 matmul probe says so."""
    monkeypatch.setattr(lit_lm.precision, "_cuda_capability", lambda: None)
    monkeypatch.setattr(lit_lm.precision, "cpu_has_fast_bf16", lambda: fast_bf16)
    monkeypatch.setattr(lit_lm.precision, "bf16_speedup", lambda *shape: 2.4 if fast_bf16 else 0.2)


def user_runs(args: list[str], cwd: Path, capsys) -> tuple[int, str, str]:
    """``python train.py ARGS`` in ``cwd``, in this process (``train.py``'s own ``run``: a user's mistake is one
    ``error:`` line and exit status 2): (exit status, stdout, stderr). A new interpreter costs seconds of imports;
    only a test of what a user's terminal shows needs one."""
    from lit_lm.cli import run

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(sys, "argv", ["train.py"])
        try:
            run(args)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def run_module(module: str, *args: str) -> int:
    """``python -m module args`` in this process (runpy runs its ``__main__`` block as ``-m`` does, without a new
    interpreter and its imports): the exit status."""
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as exit_:
        patch.setattr(sys, "argv", [module, *args])
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    return exit_.value.code


class InterruptAt(Callback):
    """Presses Ctrl-C (raises KeyboardInterrupt) when training reaches a given optimizer step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt
