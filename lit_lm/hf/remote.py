"""Custom-code export: a self-contained ``modeling_litlm.py`` that transformers loads with ``trust_remote_code``.

For configs no built-in HuggingFace class represents (RMSNorm, no biases, GLU, MoE, ...), the exported folder
carries the model code itself: lit-lm's own ``lit_lm/models`` sources, bundled into one file with the imports
between them removed (so it never imports lit_lm), plus a thin ``PreTrainedModel`` wrapper. The bundle is built
from the installed sources at export time, so it always matches the model that was trained.
"""

import ast
import importlib
import importlib.util
import inspect
import sys
import uuid
from pathlib import Path

MODEL_TYPE = "lit-lm"
CODE_FILE = "modeling_litlm.py"
# lit_lm.models modules in dependency order (each only uses names defined above it)
BUNDLED_MODULES = [
    "config", "output", "layers.norms", "layers.activations", "layers.positions", "layers.conv",
    "layers.disentangled", "layers.attention", "layers.ffn", "layers.moe", "layers.block", "layers.heads", "encoder",
    "layers.cache", "decoder",
]

WRAPPER = '''
# ---- the HuggingFace wrapper ----
from dataclasses import fields as _fields

from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput, MaskedLMOutput


class LitLMConfig(PretrainedConfig):
    """A lit-lm model's TransformerConfig, stored whole under ``lit_lm``."""

    model_type = "lit-lm"

    def __init__(self, lit_lm=None, **kwargs):
        self.lit_lm = dict(lit_lm or {})
        kwargs.setdefault("tie_word_embeddings", self.lit_lm.get("tie_embeddings", True))
        super().__init__(**kwargs)

    def transformer_config(self):
        known = {f.name for f in _fields(TransformerConfig)}
        return TransformerConfig(**{k: v for k, v in self.lit_lm.items() if k in known})


class LitLMForMaskedLM(PreTrainedModel):
    """lit-lm's EncoderForMaskedLM behind the transformers API: logits cover every position."""

    config_class = LitLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config):
        super().__init__(config)
        self.model = EncoderForMaskedLM(config.transformer_config())
        if self.model.config.tie_embeddings:
            self._tied_weights_keys = {"model.head.decoder.weight": "model.encoder.token_embedding.weight"}
        self.post_init()

    def _init_weights(self, module):
        pass  # EncoderForMaskedLM initialises itself; from_pretrained then loads every weight

    def get_input_embeddings(self):
        return self.model.encoder.token_embedding

    def get_output_embeddings(self):
        return self.model.head.decoder

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_attentions=None, return_dict=None, **kwargs):
        out = self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         output_attentions=bool(output_attentions))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten())
            if out.aux_loss is not None:
                loss = loss + out.aux_loss
        return MaskedLMOutput(loss=loss, logits=out.logits, attentions=out.attentions)


class LitLMForCausalLM(PreTrainedModel, GenerationMixin):
    """lit-lm's DecoderForCausalLM behind the transformers API. ``generate`` works without a cache here (each step
    runs the whole sequence): lit-lm's own KV cache is ``lit_lm.generate``'s."""

    config_class = LitLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config):
        config.use_cache = False
        super().__init__(config)
        self.model = DecoderForCausalLM(config.transformer_config())
        if self.model.config.tie_embeddings:
            self._tied_weights_keys = {"model.head.decoder.weight": "model.decoder.token_embedding.weight"}
        self.post_init()

    def _init_weights(self, module):
        pass  # DecoderForCausalLM initialises itself; from_pretrained then loads every weight

    def get_input_embeddings(self):
        return self.model.decoder.token_embedding

    def get_output_embeddings(self):
        return self.model.head.decoder

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(self, input_ids=None, attention_mask=None, labels=None, output_attentions=None, return_dict=None,
                **kwargs):
        out = self.model(input_ids, attention_mask=attention_mask, labels=labels,
                         output_attentions=bool(output_attentions))
        loss = out.loss
        if loss is not None and out.aux_loss is not None:
            loss = loss + out.aux_loss
        return CausalLMOutput(loss=loss, logits=out.logits, attentions=out.attentions)
'''


def _lit_lm_import_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        if any(name == "lit_lm" or name.startswith("lit_lm.") for name in names):
            if node not in tree.body:
                raise RuntimeError(f"line {node.lineno}: lit_lm is imported inside a function; the bundle needs "
                                   f"module-level imports only")
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def model_source() -> str:
    """The bundled, self-contained model code: lit_lm/models in one file, then the HuggingFace wrapper."""
    parts = ["# Generated by lit-lm from its lit_lm/models sources: the model this folder's weights were\n"
             "# trained with, self-contained (no lit_lm import). Load it with\n"
             "# AutoModelForMaskedLM (or AutoModelForCausalLM).from_pretrained(folder, trust_remote_code=True).\n"]
    seen: dict[str, str] = {}
    for name in BUNDLED_MODULES:
        source = inspect.getsource(importlib.import_module(f"lit_lm.models.{name}"))
        tree = ast.parse(source)
        for defined in _top_level_names(tree):
            if defined in seen:
                raise RuntimeError(f"{defined} is defined in both lit_lm.models.{seen[defined]} and {name}; "
                                   f"rename one so the models can be bundled into one file")
            seen[defined] = name
        drop = _lit_lm_import_lines(tree)
        kept = [line for i, line in enumerate(source.splitlines(), start=1) if i not in drop]
        parts.append(f"\n# ---- lit_lm/models/{name.replace('.', '/')}.py ----\n" + "\n".join(kept) + "\n")
    parts.append(WRAPPER)
    return "".join(parts)


def write_model_code(folder: Path) -> Path:
    path = Path(folder) / CODE_FILE
    path.write_text(model_source())
    return path


def auto_map(causal: bool = False) -> dict[str, str]:
    stem = CODE_FILE.removesuffix(".py")
    if causal:
        return {"AutoConfig": f"{stem}.LitLMConfig", "AutoModelForCausalLM": f"{stem}.LitLMForCausalLM"}
    return {"AutoConfig": f"{stem}.LitLMConfig", "AutoModelForMaskedLM": f"{stem}.LitLMForMaskedLM"}


def load_model_code(folder: Path):
    """Import a folder's ``modeling_litlm.py`` as a fresh module (our own export's code, or one just written)."""
    name = f"litlm_remote_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, Path(folder) / CODE_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is being built
    spec.loader.exec_module(module)
    return module
