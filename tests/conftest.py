"""Shared fixtures: generated corpora, the optional ../shared/data folder, an isolated cache."""

import random
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

import lit_lm.precision

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

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


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
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


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test session caches prepared data in its own folder, never in ~/.cache."""
    monkeypatch.setenv("LIT_LM_CACHE", str(tmp_path_factory.getbasetemp() / "lit-lm-cache"))


@pytest.fixture(autouse=True)
def wandb_disabled(tmp_path_factory, monkeypatch):
    """wandb, every recipe's dashboard, is disabled in tests: an offline run starts a service process (seconds) and
    writes files. A test of wandb itself asks for ``wandb_offline``. Neither ever touches the network, and wandb's
    own files (its settings, its default folder) go to the session's temporary folder, never the repository."""
    for name in ("WANDB_API_KEY", "WANDB_RUN_GROUP", "WANDB_NAME", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    wandb_home = tmp_path_factory.getbasetemp() / "wandb-home"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(wandb_home))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(wandb_home / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(wandb_home / "cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(wandb_home / "data"))
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


class InterruptAt(Callback):
    """Presses Ctrl-C (raises KeyboardInterrupt) when training reaches a given optimizer step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt
