"""Writing a run's ``tokenizers.Tokenizer`` as files ``transformers.AutoTokenizer.from_pretrained`` loads."""

import json
from pathlib import Path

from tokenizers import Tokenizer

from lit_lm.data.tokenizer import load_tokenizer

# The special-token conventions a tokenizer follows (BERT, RoBERTa, GPT-2), and the transformers names of each token.
SPECIAL_TOKEN_STYLES = {
    "bert": {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
             "mask_token": "[MASK]"},
    "roberta": {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
                "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"},
    "gpt": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
}


def read_tokenizer(source: "str | Path | Tokenizer") -> Tokenizer:
    """A Tokenizer from itself, a ``tokenizer.json``, or a folder holding one (a data store, a model folder)."""
    if isinstance(source, Tokenizer):
        return source
    path = Path(source).expanduser()
    if not (path / "tokenizer.json" if path.is_dir() else path).is_file():
        raise FileNotFoundError(
            f"tokenizer: {str(source)!r} is neither a tokenizer.json nor a folder holding one. Pass the tokenizer the "
            f"run used: its data store folder (printed as 'data: built/reusing <folder>' when training starts) or "
            f"the data.tokenizer.path it was given."
        )
    return load_tokenizer(path)  # a malformed file: a TokenizerError saying so


def special_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """The transformers special-token settings of a BERT-style ([CLS] ...), RoBERTa-style (<s> ...) or GPT-2-style
    (<|endoftext|>) tokenizer."""
    for style in SPECIAL_TOKEN_STYLES.values():
        if all(tokenizer.token_to_id(token) is not None for token in style.values()):
            return dict(style)
    wanted = " or ".join(" ".join(sorted(set(s.values()))) for s in SPECIAL_TOKEN_STYLES.values())
    raise ValueError(f"tokenizer: it lacks the special tokens of a BERT, RoBERTa or GPT-2 tokenizer ({wanted}).")


def save_tokenizer(source: "str | Path | Tokenizer", folder: str | Path, model_max_length: int) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into ``folder``."""
    tokenizer = read_tokenizer(source)
    folder = Path(folder)
    tokens = special_tokens(tokenizer)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "clean_up_tokenization_spaces": False, **tokens}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n")
