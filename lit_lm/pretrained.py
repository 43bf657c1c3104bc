"""Where a fine-tune starts: a user's ``init_from`` -> the pretrained language model, its architecture and tokenizer.

    from lit_lm.pretrained import load_pretrained_source
    source = load_pretrained_source("runs/quickstart")  # or a .ckpt, a lit_lm.hf export, a local HF folder
    source.config, source.causal, source.model, source.tokenizer

Accepted: a lit-lm Lightning checkpoint (a ``.ckpt`` file or a run folder; masked-LM or causal-LM), a folder written
by ``lit_lm.hf`` (built-in classes or lit-lm's custom code, encoder or decoder; custom code is read directly, never
executed), or a local HuggingFace BERT / RoBERTa / DeBERTa-v2 masked-LM or GPT-2 causal-LM folder (through
transformers, imported only then). Anything else is one ``PretrainedSourceError`` naming the setting.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from lit_lm.checkpoint import Checkpoint, CheckpointError
from lit_lm.data.tokenizer import load_tokenizer
from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM, TransformerConfig

SETTING = "model.init_args.init_from"
ACCEPTED = ("a lit-lm checkpoint (.ckpt or run folder), a folder written by `python -m lit_lm.hf export`, or a local "
            "HuggingFace BERT, RoBERTa, DeBERTa-v2 or GPT-2 folder")
# HuggingFace model types read through transformers, and the auto class of each
HF_MODEL_TYPES = {"bert": "AutoModelForMaskedLM", "roberta": "AutoModelForMaskedLM",
                  "deberta-v2": "AutoModelForMaskedLM", "gpt2": "AutoModelForCausalLM"}


class PretrainedSourceError(ValueError):
    """An ``init_from`` that is not a pretrained model lit-lm can start from."""


@dataclass
class Pretrained:
    """A pretrained language model to fine-tune, and what came with it."""

    config: TransformerConfig
    causal: bool
    """A decoder (GPT) rather than an encoder (BERT)."""
    model: EncoderForMaskedLM | DecoderForCausalLM
    tokenizer: Tokenizer | None
    """The checkpoint's stored tokenizer or the folder's; None when it has none."""
    source: str
    """What was read, for messages and logs: e.g. 'lit-lm checkpoint runs/x/.../last.ckpt'."""


def load_pretrained_source(path: str | Path) -> Pretrained:
    """The pretrained model at ``path`` (see the module docstring for what is accepted)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PretrainedSourceError(f"{SETTING}: {str(path)!r} does not exist; pass {ACCEPTED}.")
    if path.is_dir() and (path / "config.json").is_file():
        return _from_folder(path)
    try:
        checkpoint = Checkpoint.read(path)
    except CheckpointError as err:
        if path.is_dir():
            raise PretrainedSourceError(f"{SETTING}: {path} holds neither a config.json (a model folder) nor a "
                                        f"last*.ckpt (a run folder); pass {ACCEPTED}.") from None
        raise PretrainedSourceError(f"{SETTING}: {err}") from None
    return _from_checkpoint(checkpoint)


def _from_checkpoint(checkpoint: Checkpoint) -> Pretrained:
    try:
        model = checkpoint.model()
    except CheckpointError as err:
        raise PretrainedSourceError(f"{SETTING}: {err}") from None
    stored = checkpoint.contents.get("tokenizer")
    return Pretrained(model.config, checkpoint.causal, model, Tokenizer.from_str(stored) if stored else None,
                      f"lit-lm checkpoint {checkpoint.path}")


def _from_folder(folder: Path) -> Pretrained:
    from lit_lm.hf.folders import read_lit_lm_folder
    from lit_lm.hf.remote import MODEL_TYPE

    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise PretrainedSourceError(f"{SETTING}: {folder / 'config.json'} is not a model config ({err}).") from None
    if model_type == MODEL_TYPE:
        try:
            model, what = read_lit_lm_folder(folder), "lit-lm export"
        except (OSError, KeyError, RuntimeError) as err:  # no weights, no lit_lm config, weights of another shape
            reason = (str(err).strip() or repr(err)).splitlines()[0]
            raise PretrainedSourceError(f"{SETTING}: cannot read the lit-lm export in {folder} ({reason}); "
                                        f"export it again with `python -m lit_lm.hf export`.") from None
    elif model_type in HF_MODEL_TYPES:
        from lit_lm.hf.convert import from_hf, transformers_module

        auto_class = getattr(transformers_module(), HF_MODEL_TYPES[model_type])
        try:
            model = from_hf(auto_class.from_pretrained(folder))
        except (OSError, ValueError) as err:  # missing or unreadable weights; a variant lit-lm cannot express
            reason = (str(err).strip() or repr(err)).splitlines()[0]
            raise PretrainedSourceError(f"{SETTING}: cannot read the {model_type} model in {folder} "
                                        f"({reason}).") from None
        what = f"HuggingFace {model_type} folder"
    else:
        raise PretrainedSourceError(f"{SETTING}: {folder} holds a {model_type!r} model; pass {ACCEPTED}.")
    model.eval()
    causal = isinstance(model, DecoderForCausalLM)
    return Pretrained(model.config, causal, model, _folder_tokenizer(folder), f"{what} {folder}")


def _folder_tokenizer(folder: Path) -> Tokenizer | None:
    """The folder's tokenizer.json; else, for folders with only vocab files (vocab.txt, vocab.json + merges.txt),
    the fast tokenizer transformers builds from them; None when neither works."""
    if (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder)
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, use_fast=True).backend_tokenizer
    except Exception:  # no tokenizer files, or ones transformers cannot read: the user passes model.tokenizer
        return None
