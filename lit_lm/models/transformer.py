"""One transformer body, causal (decoder) or not (encoder), and its two language models: masked-LM and causal-LM.

``Transformer`` turns token ids into hidden states; ``EncoderForMaskedLM`` (BERT, RoBERTa, DeBERTa and every switch)
and ``DecoderForCausalLM`` (GPT-2 and every switch that makes sense causally) add an output head, a loss and
initialisation. Both heads are ``MaskedLMHead`` (the decoder's without an output bias, as GPT-2).
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.block import TransformerBlock
from lit_lm.models.layers.cache import KVCache
from lit_lm.models.layers.conv import NGramInducedEmbedding
from lit_lm.models.layers.enhanced_mask_decoder import EnhancedMaskDecoder
from lit_lm.models.layers.heads import MaskedLMHead, select_predictions
from lit_lm.models.layers.inputs import AttentionInputs, attention_inputs
from lit_lm.models.layers.norms import build_norm
from lit_lm.models.layers.positions import POSITION_SCHEMES, position_scheme
from lit_lm.models.layers.positions.absolute import ABSOLUTE_POSITIONS, build_position_embedding
from lit_lm.models.layers.positions.learned import LearnedPositionEmbedding
from lit_lm.models.layers.residual import RESIDUAL_OUTPUTS, zero_residual_outputs
from lit_lm.models.layers.sharing import share_parameters
from lit_lm.models.layers.token_dropping import gather_tokens, kept_inputs, scatter_tokens, token_dropping_layers
from lit_lm.models.layers.token_mixers import TOKEN_MIXERS, token_mixer_max_length
from lit_lm.models.layers.widths import LayerResize, layer_config
from lit_lm.models.output import IGNORE_INDEX, LMOutput


def check_decoder_config(config: TransformerConfig) -> None:
    """Reject the encoder-only switches, which have no causal meaning."""
    scheme = position_scheme(config.relative_positions)
    mixer_refusal = TOKEN_MIXERS[config.token_mixer].decoder_refusal
    safe = " or ".join(name for name, s in POSITION_SCHEMES.items() if s.causal_safe and s.needs_state)
    problems = [name for name, on in (
        (f"relative_positions: {scheme.name} (use {safe})", not scheme.causal_safe),
        ("conv_kernel_size (nGiE looks both ways; Primer's causal one is qkv_conv_kernel_size)",
         config.conv_kernel_size),
        ("head_position_embedding", config.head_position_embedding),
        (f"token_mixer: {config.token_mixer} ({mixer_refusal})", mixer_refusal is not None),
        ("enhanced_mask_decoder_layers (it attends both ways)", config.enhanced_mask_decoder_layers),
        ("sparse_prediction (a decoder predicts every next token)", config.sparse_prediction),
        ("token_dropping_keep < 1 (token dropping ranks tokens by their masked-LM loss; encoders only)",
         config.token_dropping_keep < 1),
    ) if on]
    if problems:
        raise ValueError(f"model config: a decoder cannot use {'; '.join(problems)}; switch them off.")


def max_input_length(config: TransformerConfig) -> int | None:
    """The longest sequence a model of ``config`` takes, or None: any length. Only tables limit it: learned absolute
    positions (in the embeddings or before the MLM head) and a synthesizer's fixed-size mixing weights. Relative
    positions do not: t5 and disentangled bucket or clip long distances, rotary and alibi need no table, and neither
    do sinusoids; such a model trained at one length runs at longer ones."""
    limits = [token_mixer_max_length(config)]
    if (ABSOLUTE_POSITIONS.get(config.position_embedding) is LearnedPositionEmbedding or config.head_position_embedding
            or config.enhanced_mask_decoder_layers):  # the last two read the learned table before the head
        limits.append(config.max_sequence_length)
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


class TransformerOutput(NamedTuple):
    hidden_states: torch.Tensor
    attentions: tuple[torch.Tensor, ...] | None = None  # each block's weights, with output_attentions
    aux_loss: torch.Tensor | None = None  # summed over the mixture-of-experts blocks, unweighted


class Transformer(nn.Module):
    """Embeddings, a stack of blocks, an optional final norm: token ids in, hidden states out.

    ``causal=True`` makes a decoder: causal blocks, a KV cache, no token types (``type_vocab_size`` is ignored) and no
    padding embedding (GPT's pad token is its end-of-text token). Encoders may add DeBERTa's nGiE.
    """

    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__()
        if causal:
            check_decoder_config(config)
        self.config, self.causal = config, causal
        padding_idx = None if causal else config.pad_token_id
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=padding_idx)
        self.position_embedding = build_position_embedding(config)  # learned, sinusoidal, ... or None
        self.token_type_embedding = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size and not causal else None
        )
        self.embedding_norm = build_norm(config) if config.embedding_norm else nn.Identity()
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.relative_positions = position_scheme(config.relative_positions)(config, causal)
        self.ngie = NGramInducedEmbedding(layer_config(config, 0)) if config.conv_kernel_size and not causal else None
        self.blocks = nn.ModuleList(TransformerBlock(layer_config(config, i), causal, i)
                                    for i in range(config.num_layers))
        self.resize = LayerResize(config) if config.layer_widths is not None else None  # per-layer widths
        share_parameters(self.blocks, config)  # ALBERT's cross-layer sharing, when asked for
        self.final_norm = build_norm(config) if config.final_norm else nn.Identity()

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None, start: int = 0):
        """Token (plus absolute position and token type) embeddings of positions ``start ..``, normalised."""
        x = self.token_embedding(input_ids)
        if self.position_embedding is not None:
            x = x + self.position_embedding(input_ids.shape[1], start)
        if self.token_type_embedding is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embedding(token_type_ids)
        return self.embedding_dropout(self.embedding_norm(x))

    def attention_inputs(self, attention_mask: torch.Tensor | None, seq: int, dtype: torch.dtype, start: int = 0,
                         output_attentions: bool = False) -> AttentionInputs:
        """What every block's attention takes for the queries at ``start .. start + seq - 1``: masks and relative
        positions (also used by the layers that run after the body: the enhanced mask decoder)."""
        relative = self.relative_positions(seq, start)
        return attention_inputs(attention_mask, seq, dtype, self.causal, relative, output_attentions)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                output_attentions: bool = False, keep: torch.Tensor | None = None) -> TransformerOutput:
        """``attention_mask``: [batch, keys] 1/0; with a ``cache`` it covers the cached positions too. ``keep``
        (token dropping, training only): sorted positions [batch, kept] that the blocks ``token_dropping_layers``
        process alone; the other tokens skip them."""
        seq = input_ids.shape[1]  # any length unless a table limits it (max_input_length): that table refuses it
        start = cache.length if cache is not None else 0
        x = embeddings = self.embed(input_ids, token_type_ids, start)
        inputs = all_inputs = self.attention_inputs(attention_mask, seq, x.dtype, start, output_attentions)
        drop_from, drop_to = token_dropping_layers(self.config) if keep is not None else (-1, -1)
        attentions, aux_losses = [], []
        for i, block in enumerate(self.blocks):
            if i == drop_from:  # token dropping (Hou et al. 2022): the kept tokens go on alone
                dropped_at, x, inputs = x, gather_tokens(x, keep), kept_inputs(all_inputs, keep)
            elif i == drop_to:  # and the dropped ones rejoin with the state they had
                x, inputs = scatter_tokens(dropped_at, keep, x), all_inputs
            if self.resize is not None:  # into block i's width (layer_widths)
                x = self.resize(x, i)
                if i == 0:
                    embeddings = x  # the first block's input, which nGiE convolves
            x, weights, aux_loss = block(x, inputs if cache is None else inputs._replace(cache=cache.layers[i]))
            if i == 0 and self.ngie is not None:
                x = self.ngie(embeddings, x, inputs.token_mask)
            attentions.append(weights)
            if aux_loss is not None:
                aux_losses.append(aux_loss)
        if drop_to == len(self.blocks):
            x = scatter_tokens(dropped_at, keep, x)
        if self.resize is not None:
            x = self.resize(x, len(self.blocks))
        return TransformerOutput(
            self.final_norm(x),
            tuple(attentions) if output_attentions else None,
            torch.stack(aux_losses).sum() if aux_losses else None,
        )


def init_module(module: nn.Module, std: float) -> None:
    """Normal(0, std) weights, zero biases and padding embedding; layers with their own rule use it."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif hasattr(module, "init_weights"):  # layers with their own parameters: positions, experts, talking heads
        module.init_weights(std)


class LanguageModel(nn.Module):
    """What both language models share: the output head's tying, initialisation and the weighted auxiliary loss.
    A subclass builds its body (as ``encoder`` or ``decoder``, the checkpoints' names) and ``head``, then calls
    ``tie_and_init``."""

    head: MaskedLMHead

    @property
    def body(self) -> Transformer:
        raise NotImplementedError

    def tie_and_init(self) -> None:
        if self.config.tie_embeddings:  # tied input/output embeddings: Press & Wolf 2017
            self.head.decoder.weight = self.body.token_embedding.weight
        self.apply(self._init_weights)
        self.scale_residual_init()
        if self.config.zero_init_residual:
            zero_residual_outputs(self)

    def scale_residual_init(self) -> None:
        """A family's own initialisation of the residual output projections, after the common one; none here."""

    def _init_weights(self, module: nn.Module) -> None:
        init_module(module, self.config.initializer_range)

    def run_body(self, input_ids: torch.Tensor, **kwargs) -> tuple[TransformerOutput, torch.Tensor | None]:
        """The body's output and the weighted auxiliary loss (None without mixture-of-experts layers)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}.")
        out = self.body(input_ids, **kwargs)
        aux_loss = None if out.aux_loss is None else self.config.moe_aux_loss_weight * out.aux_loss
        return out, aux_loss


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions not labelled ``IGNORE_INDEX``, computed in float32."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX)


class EncoderForMaskedLM(LanguageModel):
    """Encoder plus MLM head: ``model(input_ids, attention_mask=None, labels=None) -> LMOutput``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Transformer(config, causal=False)
        self.head_position_embedding = (  # DeBERTa's enhanced mask decoder, simplified: He et al. 2021
            LearnedPositionEmbedding(config)
            if config.head_position_embedding or config.enhanced_mask_decoder_layers else None
        )
        self.enhanced_mask_decoder = (  # and in full, with the same position table
            EnhancedMaskDecoder(config.enhanced_mask_decoder_layers) if config.enhanced_mask_decoder_layers else None
        )
        self.head = MaskedLMHead(config)
        self.tie_and_init()

    @property
    def body(self) -> Transformer:
        return self.encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                output_attentions: bool = False, keep: torch.Tensor | None = None) -> LMOutput:
        """``keep``: token dropping's kept positions (``TokenImportance.keep``), in training only; None: every token
        through every block."""
        encoded, aux_loss = self.run_body(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                          output_attentions=output_attentions, keep=keep)
        hidden = head_input = encoded.hidden_states
        if self.enhanced_mask_decoder is not None:
            dtype = self.encoder.token_embedding.weight.dtype  # the body's masks' dtype (its embeddings')
            inputs = self.encoder.attention_inputs(attention_mask, input_ids.shape[1], dtype)
            head_input = self.enhanced_mask_decoder(hidden, self.head_position_embedding(input_ids.shape[1]),
                                                    self.encoder, inputs)
        elif self.head_position_embedding is not None:
            head_input = hidden + self.head_position_embedding(input_ids.shape[1])
        if labels is None:
            return LMOutput(logits=self.head(head_input), hidden_states=hidden, aux_loss=aux_loss,
                            attentions=encoded.attentions)
        targets = labels
        if self.config.sparse_prediction:  # predict only masked tokens: Geiping & Goldstein 2022 (cramming)
            head_input, targets = select_predictions(head_input, labels, self.config.sparse_prediction_rate)
        logits = self.head(head_input)
        return LMOutput(logits=logits, loss=cross_entropy(logits, targets), labels=targets, hidden_states=hidden,
                        aux_loss=aux_loss, attentions=encoded.attentions)


class DecoderForCausalLM(LanguageModel):
    """Decoder plus output head: ``model(input_ids, attention_mask=None, labels=None, cache=None) -> LMOutput``.

    ``labels`` are the input ids themselves (-100 where nothing should be predicted); the loss is the mean
    cross-entropy of predicting ``labels[:, t + 1]`` from the positions up to ``t``. ``labels`` may be one longer than
    the input (its ids and the next one), so that the last position has a target too: a window cut from a longer row
    (sequence-length warmup) then predicts what the row would. ``logits`` cover every position.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = Transformer(config, causal=True)
        self.head = MaskedLMHead(config, output_bias=False)
        self.tie_and_init()

    def scale_residual_init(self) -> None:
        # GPT-2 (Radford et al. 2019): residual output projections start smaller, by 1/sqrt(2 * layers)
        for name, param in self.named_parameters():
            if name.endswith(RESIDUAL_OUTPUTS):
                nn.init.normal_(param, std=self.config.initializer_range / math.sqrt(2 * self.config.num_layers))

    @property
    def body(self) -> Transformer:
        return self.decoder

    def new_cache(self) -> KVCache:
        """An empty cache for incremental decoding (see ``lit_lm.generate``)."""
        return KVCache.empty(self.config.num_layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, cache: KVCache | None = None,
                output_attentions: bool = False) -> LMOutput:
        decoded, aux_loss = self.run_body(input_ids, attention_mask=attention_mask, cache=cache,
                                          output_attentions=output_attentions)
        logits = self.head(decoded.hidden_states)
        loss = None
        if labels is not None:  # shift the labels, not the logits: no copy of the largest tensor
            if labels.shape[1] not in (input_ids.shape[1], input_ids.shape[1] + 1):
                raise ValueError(f"labels must be as long as input_ids or one longer, got {tuple(labels.shape)} for "
                                 f"{tuple(input_ids.shape)}.")
            targets = labels[:, 1:]
            if targets.shape[1] < input_ids.shape[1]:  # the last position's next token is unknown
                targets = F.pad(targets, (0, 1), value=IGNORE_INDEX)
            loss = cross_entropy(logits, targets)
        return LMOutput(logits=logits, loss=loss, labels=labels, hidden_states=decoded.hidden_states,
                        aux_loss=aux_loss, attentions=decoded.attentions)
