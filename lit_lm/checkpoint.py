"""Our own checkpoints: a lit-lm Lightning checkpoint (a ``.ckpt`` file, or a run folder holding one) -> its model
and its tokenizer; folders written from one go into place atomically.

    from lit_lm.checkpoint import Checkpoint, load_model
    model = load_model("runs/quickstart-decoder")  # the newest last*.ckpt under the run folder, in eval mode
    checkpoint = Checkpoint.read("runs/quickstart-decoder/logs/version_0/checkpoints/last.ckpt")
    model, tokenizer = checkpoint.model(), checkpoint.tokenizer()  # runs keep their tokenizer
    decoder, tokenizer = load_causal_lm("runs/quickstart-decoder")  # the same, checked to be a causal LM

A path that is not a lit-lm checkpoint (missing, truncated, another program's file) is one ``CheckpointError``
naming the path and what to pass instead; command lines print it without a traceback (``errors_for_humans``).
"""

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from tokenizers import Tokenizer

from lit_lm.data.tokenizer import load_tokenizer
from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM, TransformerConfig
from lit_lm.runs import find_last_checkpoint

WHERE_RUNS_WRITE = "runs write theirs to runs/<recipe>/logs/version_N/checkpoints/last.ckpt"


class CheckpointError(ValueError):
    """A path that is not a readable lit-lm checkpoint, or one that lacks what was asked of it."""


def config_from_dict(values: dict) -> TransformerConfig:
    """A model config from its saved fields; names this version of lit-lm does not know are dropped."""
    known = {f.name for f in fields(TransformerConfig)}
    return TransformerConfig(**{k: v for k, v in values.items() if k in known})


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself when it is a file; for a folder (a run's, or a version's), the newest ``last*.ckpt`` in it."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = find_last_checkpoint([path])
        if found is None:
            raise CheckpointError(f"{path} holds no last*.ckpt; pass a checkpoint file or a run folder "
                                  f"({WHERE_RUNS_WRITE}).")
        return found
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; {WHERE_RUNS_WRITE}.")
    return path


@dataclass
class Checkpoint:
    """A lit-lm Lightning checkpoint (``MaskedLMModule`` or ``CausalLMModule``), read on the CPU."""

    path: Path
    contents: dict

    @classmethod
    def read(cls, path: str | Path) -> "Checkpoint":
        """The checkpoint at ``path`` (a ``.ckpt`` file or a run folder, see ``checkpoint_file``)."""
        path = checkpoint_file(path)
        try:  # weights_only=False: Lightning stores the hyperparameters as Python objects; this is the user's own run
            contents = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # a truncated or foreign file fails in zipfile, pickle or torch: one message for all
            raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err}); is the file "
                                  f"complete? {WHERE_RUNS_WRITE}.") from None
        config = contents.get("hyper_parameters", {}).get("config") if isinstance(contents, dict) else None
        if config is None or not isinstance(contents.get("state_dict"), dict):
            raise CheckpointError(f"{path} is not a lit-lm checkpoint: it holds no model config in its "
                                  f"hyperparameters; pass one a lit-lm run wrote ({WHERE_RUNS_WRITE}).")
        return cls(path, contents)

    @property
    def config(self) -> TransformerConfig:
        config = self.contents["hyper_parameters"]["config"]
        return config if isinstance(config, TransformerConfig) else config_from_dict(dict(config))

    @property
    def causal(self) -> bool:
        """Whether a ``CausalLMModule`` wrote it (its model is a decoder)."""
        return any(k.startswith("model.decoder.") for k in self.contents["state_dict"])

    def model(self) -> EncoderForMaskedLM | DecoderForCausalLM:
        """The trained model, in eval mode."""
        if "num_labels" in self.contents["hyper_parameters"]:
            raise CheckpointError(f"{self.path} is a fine-tuned classifier's checkpoint, not a language model's: "
                                  f"load it with lit_lm.modules.SequenceClassificationModule.load_from_checkpoint, "
                                  f"or start from the pretrained (masked-LM or causal-LM) run's checkpoint.")
        if any(k.startswith("model.discriminator.") for k in self.contents["state_dict"]):
            from lit_lm.models.replaced_token import detector_from_checkpoint  # ELECTRA: its discriminator

            return detector_from_checkpoint(self.contents, self.config).eval()
        model = (DecoderForCausalLM if self.causal else EncoderForMaskedLM)(self.config)
        state = {k.removeprefix("model."): v for k, v in self.contents["state_dict"].items() if k.startswith("model.")}
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(f"{self.path}: its weights do not fit its own model config "
                                  f"({str(err).splitlines()[0]}); the file is damaged.") from None
        return model.eval()

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the run trained with, which checkpoints keep (masked-LM ones since fine-tuning came)."""
        if "tokenizer" not in self.contents:
            raise CheckpointError(f"{self.path} holds no tokenizer (older masked-LM runs kept none); pass the one the "
                                  f"run used (--tokenizer; when fine-tuning, --model.init_args.tokenizer): its data "
                                  f"store folder, printed as 'data: built/reusing <folder>' when training starts, or "
                                  f"the data.tokenizer.path it was given.")
        return Tokenizer.from_str(self.contents["tokenizer"])


def load_model(path: str | Path) -> EncoderForMaskedLM | DecoderForCausalLM:
    """The model (eval mode) of a lit-lm checkpoint file or of a run folder's newest ``last*.ckpt``."""
    return Checkpoint.read(path).model()


def load_causal_lm(path: str | Path, tokenizer: str | Path | None = None) -> tuple[DecoderForCausalLM, Tokenizer]:
    """The decoder of a ``CausalLMModule`` checkpoint (a ``.ckpt`` file or a run folder), in eval mode, and its
    tokenizer: the one stored in the checkpoint, or ``tokenizer`` (a tokenizer.json or a folder holding one, e.g.
    the run's data store)."""
    checkpoint = Checkpoint.read(path)
    if not checkpoint.causal:
        raise CheckpointError(f"{checkpoint.path} is a masked-LM checkpoint; this needs a causal-LM (CausalLMModule) "
                              f"one.")
    model = checkpoint.model()
    loaded = load_tokenizer(tokenizer) if tokenizer is not None else checkpoint.tokenizer()
    if loaded.get_vocab_size(with_added_tokens=True) > model.config.vocab_size:
        raise CheckpointError(f"the tokenizer has {loaded.get_vocab_size(with_added_tokens=True)} tokens but the "
                              f"model {model.config.vocab_size}; pass the tokenizer the run was trained with.")
    return model, loaded


def write_file_atomically(path: str | Path, write: Callable[[Path], None], durable: bool = False) -> Path:
    """``write(tmp)`` fills a temporary file beside ``path`` (same suffix, so writers that read it see the format),
    which is then renamed into place: a reader never sees half a file, and an interrupted write leaves none.
    ``durable`` also flushes the file to disk before the rename, so that a power cut cannot leave an empty one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a new file's usual permissions, not mkstemp's owner-only ones
        if durable:
            with open(tmp, "rb+") as written:
                os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with the file written beside its final path and renamed into place.

    Lightning's own writes a local checkpoint to a temporary file in the system's temporary folder and then moves it;
    when that folder is another file system (a tmpfs ``/tmp``, a container's scratch disk), the move is a copy into
    ``last.ckpt`` itself, so a run killed during it leaves a truncated ``last.ckpt`` in place of the previous one,
    and every killed save leaves a checkpoint-sized file behind in ``/tmp``. Here a killed save leaves the previous
    checkpoint whole and at most a hidden ``.last.ckpt.*.ckpt`` file beside it, which ``last*.ckpt`` never matches.
    Remote paths (``s3://`` ...) go to Lightning's writer, whose object-storage upload is atomic already.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options (a local file).")
        write_file_atomically(str(path).removeprefix("file://"), lambda tmp: torch.save(checkpoint, tmp), durable=True)


def write_text_atomically(path: str | Path, text: str) -> Path:
    """``path`` holding ``text``, written atomically (``write_file_atomically``)."""
    return write_file_atomically(path, lambda tmp: tmp.write_text(text))


def write_atomically(folder: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """``write(tmp)`` fills a temporary folder beside ``folder``, which is then renamed into place: an interrupted
    write never leaves half a folder. An existing non-empty ``folder`` is refused unless ``overwrite``."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; choose another folder or pass overwrite=True.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        write(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


@contextmanager
def errors_for_humans(*also: type[Exception]) -> Iterator[None]:
    """For the command lines that read our checkpoints: a ``CheckpointError`` (or an error of a type in ``also``)
    ends the program with its one message, without a traceback, and exit status 2."""
    try:
        yield
    except (CheckpointError, *also) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
