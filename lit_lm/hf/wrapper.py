"""The transformers classes of a custom-code export: lit-lm's models behind ``PreTrainedModel``.

lit-lm never imports this file: ``remote.py`` appends its source, less its ``lit_lm`` imports, to the bundled model
code (``bundle.py``), where the names it imports from ``lit_lm.models`` are defined above it.
"""

from dataclasses import fields as _fields

import torch
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput, MaskedLMOutput

from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM, TransformerConfig


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


class LitLMPreTrainedModel(PreTrainedModel):
    """A lit-lm model (``lit_lm_class``, whose transformer body is its attribute ``body``) as ``self.model``."""

    config_class = LitLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    lit_lm_class: type = None
    body: str = None

    def __init__(self, config):
        super().__init__(config)
        self.model = self.lit_lm_class(config.transformer_config())
        if self.model.config.tie_embeddings:
            self._tied_weights_keys = {"model.head.decoder.weight": f"model.{self.body}.token_embedding.weight"}
        self.post_init()

    def _init_weights(self, module):
        pass  # the lit-lm model initialises itself; from_pretrained then loads every weight

    def get_input_embeddings(self):
        return getattr(self.model, self.body).token_embedding

    def get_output_embeddings(self):
        return self.model.head.decoder

    @staticmethod
    def with_aux_loss(loss, out):
        """The loss plus the mixture-of-experts balancing loss, as lit-lm trains it."""
        return loss + out.aux_loss if loss is not None and out.aux_loss is not None else loss


class LitLMForMaskedLM(LitLMPreTrainedModel):
    """lit-lm's EncoderForMaskedLM behind the transformers API: logits cover every position."""

    lit_lm_class, body = EncoderForMaskedLM, "encoder"

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_attentions=None, return_dict=None, **kwargs):
        out = self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         output_attentions=bool(output_attentions))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten())
        return MaskedLMOutput(loss=self.with_aux_loss(loss, out), logits=out.logits, attentions=out.attentions)


class LitLMForCausalLM(LitLMPreTrainedModel, GenerationMixin):
    """lit-lm's DecoderForCausalLM behind the transformers API. ``generate`` works without a cache here (each step
    runs the whole sequence): lit-lm's own KV cache is ``lit_lm.generate``'s."""

    lit_lm_class, body = DecoderForCausalLM, "decoder"

    def __init__(self, config):
        config.use_cache = False
        super().__init__(config)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(self, input_ids=None, attention_mask=None, labels=None, output_attentions=None, return_dict=None,
                **kwargs):
        out = self.model(input_ids, attention_mask=attention_mask, labels=labels,
                         output_attentions=bool(output_attentions))
        return CausalLMOutput(loss=self.with_aux_loss(out.loss, out), logits=out.logits, attentions=out.attentions)
