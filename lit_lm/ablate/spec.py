"""An ablation file: a base recipe and its variants, each a list of ``train.py`` words.

    # What it checks (the first lines say it).
    base: ../recipes/crammed-bert.yaml      # relative to this file
    seeds: 2                                # optional: each variant trains once per seed (default 1)
    variants:
      crammed: []                           # the base itself: the reference the table compares with
      -no-ramp: [--trainer.callbacks.BatchSizeRamp.ramp_fraction=0]
      original:                             # a variant may name its own recipe, and say what it changes
        base: ../recipes/original-bert.yaml
        change: the 2018 BERT recipe
      hf-trainer: {peer: hf-trainer}        # transformers' BertForMaskedLM + Trainer at the base's shape

Every variant must keep the base's data settings (corpus, tokenizer, sequence length, split): they share the data
order and the held-out set. The runner checks that before anything trains.
"""

from dataclasses import dataclass, field
from pathlib import Path

import yaml

PEERS = ("hf-trainer",)
"""Variants that are not lit-lm runs: ``hf-trainer`` is transformers' standard masked-LM recipe
(lit_lm.ablate.hf_peer)."""


class AblationFileError(ValueError):
    """An ablation file that cannot be run as written."""


@dataclass(frozen=True)
class Variant:
    """One row of the table: a recipe, the ``train.py`` words added after it, or a peer."""

    name: str
    recipe: Path
    words: tuple[str, ...] = ()
    peer: str | None = None
    change: str = ""

    @property
    def description(self) -> str:
        """What it changes from the base, in short: its own ``change:`` text, else its words without the
        common prefixes."""
        if self.change:
            return self.change
        if self.peer:
            return {"hf-trainer": "transformers' BertForMaskedLM and Trainer, the default way"}[self.peer]
        return ", ".join(short_word(word) for word in self.words)


@dataclass(frozen=True)
class Ablation:
    path: Path
    base: Path
    variants: tuple[Variant, ...]
    seeds: int = 1
    text: str = field(default="", repr=False)
    only: bool = False
    """Whether some of the file's variants were left out (``--only``)."""

    @property
    def description(self) -> str:
        """What the file checks: its leading comment block, up to an empty comment line or an indented one (a
        command), joined into one paragraph."""
        lines = []
        for line in self.text.splitlines():
            if not line.startswith("#") or line.strip() == "#" or line.startswith("#  "):
                break
            lines.append(line.removeprefix("#").strip())
        return " ".join(lines)

    @property
    def reference(self) -> Variant:
        """What every difference is taken from: the first variant that is the base recipe unchanged, else the first."""
        return next((v for v in self.variants if v.recipe == self.base and not v.words and not v.peer),
                    self.variants[0])


PREFIXES = ("model.init_args.config.", "model.init_args.", "trainer.callbacks.", "trainer.", "data.init_args.")


def short_word(word: str) -> str:
    word = word.removeprefix("--")
    for prefix in PREFIXES:
        if word.startswith(prefix):
            return word.removeprefix(prefix)
    return word


def read_ablation(path: str | Path) -> Ablation:
    """The ablation in ``path``, checked: a base recipe that exists, at least one variant, lists of words."""
    path = Path(path)
    try:
        text = path.read_text()
        content = yaml.safe_load(text)
    except OSError as err:
        raise AblationFileError(f"ablation file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise AblationFileError(f"ablation file {path} is not valid YAML: {err}") from None
    if not isinstance(content, dict) or not isinstance(content.get("base"), str):
        raise AblationFileError(f"{path}: needs `base: <recipe.yaml>` (relative to the file) and `variants:`.")
    base = resolve_recipe(path, content["base"], "base")
    seeds = content.get("seeds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise AblationFileError(f"{path}: `seeds:` must be a whole number >= 1, got {seeds!r}.")
    variants = content.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise AblationFileError(f"{path}: `variants:` must map each variant's name to its list of train.py words.")
    return Ablation(path, base, tuple(read_variant(path, base, str(name), value) for name, value in variants.items()),
                    seeds, text)


def read_variant(path: Path, base: Path, name: str, value: object) -> Variant:
    if value is None or isinstance(value, list):
        value = {"words": value or []}
    if not isinstance(value, dict) or set(value) - {"words", "base", "peer", "change"}:
        raise AblationFileError(f"{path}: variant {name!r} must be a list of train.py words, or a mapping with "
                                f"`words:`, `base:`, `peer:` and `change:`; got {value!r}.")
    words = value.get("words") or []
    if not isinstance(words, list) or not all(isinstance(w, str) and w.startswith("--") for w in words):
        raise AblationFileError(f"{path}: variant {name!r}: words must be train.py options such as "
                                f"--model.init_args.config.dropout=0.1, got {words!r}.")
    peer = value.get("peer")
    if peer is not None and peer not in PEERS:
        raise AblationFileError(f"{path}: variant {name!r}: unknown peer {peer!r}; known: {', '.join(PEERS)}.")
    if peer is not None and (words or value.get("base")):
        raise AblationFileError(f"{path}: variant {name!r}: a peer takes no words or base; it trains at the base's "
                                f"shape on the base's data.")
    recipe = resolve_recipe(path, value["base"], f"variant {name!r}'s base") if value.get("base") else base
    return Variant(name, recipe, tuple(words), peer, str(value.get("change") or ""))


def resolve_recipe(path: Path, name: str, what: str) -> Path:
    recipe = (path.parent / name).resolve()
    if not recipe.is_file():
        raise AblationFileError(f"{path}: {what} {name} is not a file ({recipe}).")
    return recipe
