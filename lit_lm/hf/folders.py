"""HuggingFace model folders: write a lit-lm model as one (``save_pretrained``), a trained run's checkpoint as one
(``export_checkpoint``), and start pretraining from one (``load_pretrained``, behind ``init_from``).

A written folder loads with ``AutoModelForMaskedLM`` (encoders) or ``AutoModelForCausalLM`` (decoders) and
``AutoTokenizer``; custom code needs ``trust_remote_code=True``.
"""

import json
from dataclasses import replace
from pathlib import Path

from lit_lm.checkpoint import Checkpoint, config_from_dict, write_atomically
from lit_lm.hf.convert import from_hf, to_hf, transformers_module
from lit_lm.hf.remote import CAUSAL_CLASS, MODEL_TYPE, write_model_code
from lit_lm.hf.tokenizer import read_tokenizer, save_tokenizer
from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM, TransformerConfig

# switches that change how a model trains, not its weights: a pretrained start keeps the recipe's
TRAINING_FIELDS = ("dropout", "attention_dropout", "sparse_prediction", "sparse_prediction_rate",
                   "moe_aux_loss_weight", "initializer_range", "token_dropping_keep", "token_dropping_start",
                   "token_dropping_end")


def save_pretrained(model: EncoderForMaskedLM | DecoderForCausalLM, folder: str | Path, tokenizer=None,
                    architecture: str = "auto", overwrite: bool = False) -> Path:
    """Write ``model`` (and its tokenizer: a ``tokenizers.Tokenizer``, a tokenizer.json, or a folder holding one)
    as a folder ``AutoModelForMaskedLM`` / ``AutoModelForCausalLM.from_pretrained`` loads (custom code needs
    ``trust_remote_code=True``) and ``AutoTokenizer.from_pretrained`` loads. A decoder's end-of-text token becomes
    its config's ``eos_token_id`` / ``bos_token_id``, where ``generate`` stops. Written in a temporary folder and
    renamed into place."""
    hf_model = to_hf(model, architecture)
    if tokenizer is not None and isinstance(model, DecoderForCausalLM):
        tokenizer = read_tokenizer(tokenizer)
        end_of_text = next((i for t in ("<|endoftext|>", "</s>") if (i := tokenizer.token_to_id(t)) is not None), None)
        for config in (hf_model.config, hf_model.generation_config):
            config.eos_token_id = config.bos_token_id = end_of_text

    def write(tmp: Path) -> None:
        hf_model.save_pretrained(tmp)
        if hf_model.config.model_type == MODEL_TYPE:
            write_model_code(tmp)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp, model_max_length=model.config.max_sequence_length)

    return write_atomically(folder, write, overwrite)


def load_pretrained(folder: str | Path, training_config: TransformerConfig | None = None) -> EncoderForMaskedLM:
    """A lit-lm model from a local folder: a lit-lm export (read directly, no code executed) or a HuggingFace
    BERT / RoBERTa / DeBERTa-v2 masked-LM folder (through transformers).

    With ``training_config`` (a recipe's model config), the pretrained architecture and weights are kept and the
    recipe's training switches (dropout, sparse prediction, ...) are applied; its vocabulary must match.
    """
    folder = Path(folder).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"init_from: {folder} has no config.json; point it at a HuggingFace model folder "
                                f"(for example one written by `python -m lit_lm.hf export`).")
    hf_config = json.loads(config_file.read_text())
    if hf_config.get("model_type") == MODEL_TYPE:
        model = EncoderForMaskedLM(config_from_dict(hf_config["lit_lm"]))
        model.load_state_dict(_read_lit_lm_weights(folder, model))
    else:
        model = from_hf(transformers_module().AutoModelForMaskedLM.from_pretrained(folder))
    if training_config is None:
        return model
    if training_config.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"init_from: the model in {folder} has a vocabulary of {model.config.vocab_size} tokens but the tokenizer "
            f"has {training_config.vocab_size}; set data.tokenizer.path to the same folder to use its tokenizer."
        )
    switches = {name: getattr(training_config, name) for name in TRAINING_FIELDS}
    adapted = EncoderForMaskedLM(replace(model.config, **switches))
    adapted.load_state_dict(model.state_dict())
    return adapted


def _read_lit_lm_weights(folder: Path, model: EncoderForMaskedLM | DecoderForCausalLM) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))  # one file, or shards of a large model
    if not files:
        raise FileNotFoundError(f"init_from: {folder} has no *.safetensors weights.")
    state = {k.removeprefix("model."): v for file in files for k, v in load_file(str(file)).items()}
    if model.config.tie_embeddings:  # saved once, under one of the two names
        embedding = f"{'decoder' if isinstance(model, DecoderForCausalLM) else 'encoder'}.token_embedding.weight"
        state.setdefault("head.decoder.weight", state.get(embedding))
        state.setdefault(embedding, state.get("head.decoder.weight"))
    return state


def read_lit_lm_folder(folder: str | Path) -> EncoderForMaskedLM | DecoderForCausalLM:
    """The model of a folder lit-lm exported with its custom code (``model_type`` lit-lm), encoder or decoder, read
    directly: its config.json and safetensors weights, no code executed."""
    folder = Path(folder).expanduser()
    hf_config = json.loads((folder / "config.json").read_text())
    causal = CAUSAL_CLASS in (hf_config.get("architectures") or [])
    model = (DecoderForCausalLM if causal else EncoderForMaskedLM)(config_from_dict(hf_config["lit_lm"]))
    model.load_state_dict(_read_lit_lm_weights(folder, model))
    return model


def export_checkpoint(checkpoint: str | Path, folder: str | Path, tokenizer=None, architecture: str = "auto",
                      overwrite: bool = False) -> Path:
    """A trained lit-lm checkpoint (a ``.ckpt`` file or a run folder) -> a HuggingFace folder with its tokenizer (see
    ``save_pretrained``). Without ``tokenizer``, the one the checkpoint holds (runs keep theirs; masked-LM runs
    before fine-tuning came kept none)."""
    read = Checkpoint.read(checkpoint)
    tokenizer = read.tokenizer() if tokenizer is None else tokenizer
    return save_pretrained(read.model(), folder, tokenizer, architecture, overwrite)
