"""Replaced-token detection (ELECTRA, Clark et al. 2020) in pure torch: a small masked-LM generator fills the masked
positions with tokens sampled from its predictions, and a discriminator (the encoder body and a per-token binary head)
tells, for every token, whether it is the original or a replacement.

The generator is an ``EncoderForMaskedLM`` whose blocks are narrower than the discriminator's (``layer_widths``: its
embeddings keep the discriminator's width and are projected into the narrow blocks and back before its MLM head), so
the two share their embeddings (token, position and token-type tables and their norm): the same tensors
(``shared``, ELECTRA) or, with ``gradient_disentangled`` (DeBERTa-v3's GDES, He et al. 2021), the discriminator's are
``stop_gradient(generator's) + delta`` with ``delta`` starting at zero, so the discriminator's loss never pulls on the
generator's embeddings. ``discriminator_as_masked_lm`` turns a trained detector into the ``EncoderForMaskedLM`` that
fine-tuning and the HuggingFace export take: the discriminator's body (embeddings merged) under the generator's head.
"""

from dataclasses import dataclass, replace
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.activations import activation_fn
from lit_lm.models.output import IGNORE_INDEX
from lit_lm.models.transformer import EncoderForMaskedLM, Transformer, init_module

EmbeddingSharing = Literal["shared", "gradient_disentangled"]
EMBEDDING_SHARINGS: tuple[str, ...] = get_args(EmbeddingSharing)
SHARED_EMBEDDINGS = ("token_embedding", "position_embedding", "token_type_embedding", "embedding_norm")
"""The ``Transformer`` submodules the generator and the discriminator share (those that exist and hold weights)."""


@dataclass(frozen=True)
class GeneratorShape:
    """The generator's size relative to the discriminator's (ELECTRA: a quarter to a half of its width works best).

    Args:
        width_fraction: Generator block width as a fraction of the discriminator's hidden_size, in (0, 1]; the
            feed-forward width scales with it.
        num_layers: Generator depth; None: the discriminator's.
        num_heads: Generator attention heads; None: as many as keep the discriminator's head size (at least 1).
    """

    width_fraction: float = 0.25
    num_layers: int | None = None
    num_heads: int | None = None

    def config(self, config: TransformerConfig) -> TransformerConfig:
        """The generator's config: ``config`` with narrow blocks (``layer_widths``), its depth and heads. A setting
        that cannot give one is a ``ValueError`` naming the setting."""
        if not 0.0 < self.width_fraction <= 1.0:
            raise ValueError(f"model.generator_width_fraction must be in (0, 1], got {self.width_fraction}.")
        width = round(config.hidden_size * self.width_fraction)
        layers = config.num_layers if self.num_layers is None else self.num_layers
        if layers < 1:
            raise ValueError(f"model.generator_num_layers must be a positive integer, got {layers}.")
        heads = self.num_heads if self.num_heads is not None else max(1, width // config.head_dim)
        if width < 1 or heads < 1 or width % heads:
            raise ValueError(f"model.generator_num_heads ({heads}) must divide the generator's width ({width} = "
                             f"hidden_size {config.hidden_size} x generator_width_fraction {self.width_fraction}); "
                             f"pick a fraction or a head count that fit.")
        if config.hidden_size % heads:
            raise ValueError(f"model.generator_num_heads ({heads}) must also divide hidden_size "
                             f"({config.hidden_size}); pick another head count.")
        try:
            return replace(config, num_layers=layers, num_heads=heads,
                           layer_widths=None if width == config.hidden_size else [width] * layers)
        except ValueError as error:
            raise ValueError(f"model.generator_width_fraction {self.width_fraction}: the generator ({width} wide) "
                             f"cannot be built: {error}") from None


class GradientDisentangled(nn.Module):
    """A generator's embedding module seen by the discriminator as ``stop_gradient(its weights) + delta`` (DeBERTa-v3's
    gradient-disentangled embedding sharing, He et al. 2021); each ``delta`` starts at zero. The generator's module
    is referenced, not owned: the state dict holds only the deltas."""

    no_weight_decay = True  # embedding tables and norm weights: no AdamW decay, as for the tables themselves

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self._source = (source,)  # a tuple hides it from the module tree (the generator owns it)
        self.names = [name for name, _ in source.named_parameters()]
        for name, param in source.named_parameters():
            self.register_parameter(self._delta_name(name), nn.Parameter(torch.zeros_like(param)))

    @staticmethod
    def _delta_name(name: str) -> str:
        return "delta_" + name.replace(".", "_")

    def merged(self) -> dict[str, torch.Tensor]:
        """The weights the discriminator uses: the generator's, detached, plus the deltas."""
        source = dict(self._source[0].named_parameters())
        return {name: source[name].detach() + getattr(self, self._delta_name(name)) for name in self.names}

    def forward(self, *args, **kwargs):
        return functional_call(self._source[0], self.merged(), args, kwargs)


class ReplacedTokenHead(nn.Module):
    """ELECTRA's discriminator head: dense, activation, then one logit per token (replaced vs original)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        self.act = activation_fn(config.head_activation)
        self.out = nn.Linear(config.hidden_size, 1, bias=config.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.dense(hidden))).squeeze(-1)


class Discriminator(nn.Module):
    """The encoder body (built and initialised as the masked LM's) and a per-token binary head."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.encoder: Transformer = EncoderForMaskedLM(config).encoder
        self.head = ReplacedTokenHead(config)
        self.head.apply(lambda module: init_module(module, config.initializer_range))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        out = self.encoder(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return self.head(out.hidden_states), out.aux_loss


@dataclass
class ReplacedTokenOutput:
    """What ``ReplacedTokenDetector`` returns; ``loss`` = generator loss + weight x discriminator loss (+ the
    weighted mixture-of-experts term in ``aux_loss``, to be added when not None)."""

    loss: torch.Tensor
    generator_loss: torch.Tensor
    discriminator_loss: torch.Tensor
    generator_logits: torch.Tensor
    generator_labels: torch.Tensor
    """The generator's targets (sparse prediction: its selected positions), -100 where none."""
    discriminator_logits: torch.Tensor
    """[batch, seq]: > 0 says replaced."""
    replaced: torch.Tensor
    """[batch, seq] bool: where the discriminator's input differs from the original."""
    token_mask: torch.Tensor
    """[batch, seq] bool: the real (not padding) tokens the discriminator's loss covers."""
    aux_loss: torch.Tensor | None = None


def sample_replacements(logits: torch.Tensor, banned_ids: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of ``logits`` [n, vocab] drawn from its softmax (Gumbel-max), never one of ``banned_ids``
    (the special tokens); no gradient flows through the draw."""
    logits = logits.detach().float()
    if banned_ids is not None:
        logits = logits.index_fill(-1, banned_ids, float("-inf"))
    uniform = torch.rand_like(logits).clamp_(min=1e-9, max=1.0 - 1e-7)
    return (logits - torch.log(-torch.log(uniform))).argmax(-1)


def replace_tokens(input_ids: torch.Tensor, labels: torch.Tensor, generator_labels: torch.Tensor,
                   samples: torch.Tensor, sparse_rate: float | None, sparse: bool) -> torch.Tensor:
    """``input_ids`` with the generator's ``samples`` written at the positions its predictions cover.

    Dense prediction: ``samples`` is [batch * seq], one per position, used where ``labels`` are set. Sparse
    prediction: ``samples`` is [n], for the labelled positions in row-major order (``select_predictions``), the
    slots whose ``generator_labels`` are -100 unused."""
    flat_ids, flat_labels = input_ids.reshape(-1), labels.reshape(-1)
    labelled = flat_labels != IGNORE_INDEX
    if not sparse:
        return torch.where(labelled, samples, flat_ids).view_as(input_ids)
    if sparse_rate is None:
        index = labelled.nonzero().squeeze(-1)
    else:
        index = torch.nonzero_static(labelled, size=len(samples), fill_value=0).squeeze(-1)
    target = torch.where(generator_labels != IGNORE_INDEX, index, flat_ids.numel())  # unused slots: a spare cell
    written = torch.cat([flat_ids, flat_ids.new_zeros(1)]).scatter(0, target, samples)
    return written[:-1].view_as(input_ids)


class ReplacedTokenDetector(nn.Module):
    """Generator and discriminator with shared embeddings:
    ``model(input_ids, masked_ids, labels, attention_mask=None, token_type_ids=None) -> ReplacedTokenOutput``.

    ``masked_ids`` are ``input_ids`` masked for the generator, ``labels`` the original ids at the masked positions
    (-100 elsewhere), as ``lit_lm.modules.masking.mask_tokens`` returns them.

    Args:
        config: The discriminator's shape and switches (the generator's follow, narrowed by ``shape``).
        shape: The generator's size.
        embedding_sharing: 'shared' (ELECTRA: one set of embedding tensors) or 'gradient_disentangled' (GDES).
        discriminator_loss_weight: ELECTRA's lambda (50).
        banned_ids: Token ids the generator never samples (the special tokens).
    """

    def __init__(self, config: TransformerConfig, shape: GeneratorShape = GeneratorShape(),
                 embedding_sharing: EmbeddingSharing = "shared", discriminator_loss_weight: float = 50.0,
                 banned_ids: list[int] | None = None) -> None:
        super().__init__()
        if embedding_sharing not in EMBEDDING_SHARINGS:
            raise ValueError(f"model.embedding_sharing must be one of {list(EMBEDDING_SHARINGS)}, "
                             f"got {embedding_sharing!r}.")
        if not discriminator_loss_weight > 0:
            raise ValueError(f"model.discriminator_loss_weight must be positive, got {discriminator_loss_weight}.")
        self.config, self.embedding_sharing = config, embedding_sharing
        self.discriminator_loss_weight = discriminator_loss_weight
        self.generator = EncoderForMaskedLM(shape.config(config))
        self.discriminator = Discriminator(config)
        for name in shared_embedding_names(self.generator.encoder):
            source = getattr(self.generator.encoder, name)
            setattr(self.discriminator.encoder, name,
                    source if embedding_sharing == "shared" else GradientDisentangled(source))
        self.register_buffer("banned_ids", torch.tensor(sorted(set(banned_ids or [])), dtype=torch.long),
                             persistent=False)

    def forward(self, input_ids: torch.Tensor, masked_ids: torch.Tensor, labels: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> ReplacedTokenOutput:
        generated = self.generator(masked_ids, attention_mask=attention_mask, labels=labels,
                                   token_type_ids=token_type_ids)
        logits = generated.logits
        samples = sample_replacements(logits.reshape(-1, logits.shape[-1]),
                                      self.banned_ids if len(self.banned_ids) else None)
        config = self.generator.config
        corrupted = replace_tokens(input_ids, labels, generated.labels, samples, config.sparse_prediction_rate,
                                   config.sparse_prediction)
        replaced = corrupted != input_ids  # a sampled token equal to the original counts as original
        token_mask = (attention_mask != 0) if attention_mask is not None else torch.ones_like(replaced)
        disc_logits, disc_aux = self.discriminator(corrupted, attention_mask, token_type_ids)
        per_token = F.binary_cross_entropy_with_logits(disc_logits.float(), replaced.float(), reduction="none")
        disc_loss = (per_token * token_mask).sum() / token_mask.sum().clamp(min=1)
        aux = [a for a in (generated.aux_loss, None if disc_aux is None else config.moe_aux_loss_weight * disc_aux)
               if a is not None]
        return ReplacedTokenOutput(
            loss=generated.loss + self.discriminator_loss_weight * disc_loss, generator_loss=generated.loss,
            discriminator_loss=disc_loss, generator_logits=logits, generator_labels=generated.labels,
            discriminator_logits=disc_logits, replaced=replaced, token_mask=token_mask,
            aux_loss=torch.stack(aux).sum() if aux else None)

    def merged_embedding_state(self) -> dict[str, torch.Tensor]:
        """The discriminator body's embedding weights as a plain ``Transformer`` holds them (GDES: the generator's
        plus the deltas), under the body's own names."""
        state = {}
        for name in shared_embedding_names(self.generator.encoder):
            module = getattr(self.discriminator.encoder, name)
            weights = module.merged() if isinstance(module, GradientDisentangled) else dict(module.named_parameters())
            state.update({f"{name}.{key}": value.detach() for key, value in weights.items()})
        return state


def shared_embedding_names(body: Transformer) -> list[str]:
    """The embedding submodules of ``body`` that exist and hold weights (sinusoids, Identity norms hold none)."""
    return [name for name in SHARED_EMBEDDINGS
            if getattr(body, name, None) is not None and any(True for _ in getattr(body, name).parameters())]


def discriminator_as_masked_lm(detector: ReplacedTokenDetector) -> EncoderForMaskedLM:
    """The discriminator as the ``EncoderForMaskedLM`` that fine-tuning and the HuggingFace export take: its body
    (GDES: each embedding ``E_gen + E_delta``) under the generator's MLM head (the only one the run trained, read
    over the discriminator's states: the body is what is meant to be used), in the detector's train/eval mode."""
    body = {key: value for key, value in detector.discriminator.encoder.state_dict().items()
            if key.split(".")[0] not in SHARED_EMBEDDINGS}
    body.update(detector.merged_embedding_state())
    state = {f"encoder.{key}": value for key, value in body.items()}
    state.update({key: value for key, value in detector.generator.state_dict().items()
                  if not key.startswith("encoder.")})
    model = EncoderForMaskedLM(detector.config)
    if detector.config.tie_embeddings:  # the head reads the (merged) input embedding
        state["head.decoder.weight"] = state["encoder.token_embedding.weight"]
    model.load_state_dict(state)
    return model.train(detector.training)


def detector_from_checkpoint(contents: dict, config: TransformerConfig) -> EncoderForMaskedLM:
    """The discriminator (``discriminator_as_masked_lm``) of a ``ReplacedTokenDetectionModule`` checkpoint's
    contents, its model config already read (``lit_lm.checkpoint.Checkpoint`` calls this)."""
    hparams = contents.get("hyper_parameters", {})
    shape = GeneratorShape(hparams.get("generator_width_fraction", 0.25), hparams.get("generator_num_layers"),
                           hparams.get("generator_num_heads"))
    detector = ReplacedTokenDetector(config, shape, hparams.get("embedding_sharing", "shared"))
    detector.load_state_dict({k.removeprefix("model."): v for k, v in contents["state_dict"].items()
                              if k.startswith("model.")})
    return discriminator_as_masked_lm(detector)
