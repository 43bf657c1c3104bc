"""How positions enter a model.

- absolute: a vector per position added to the token embeddings, chosen by ``TransformerConfig.position_embedding``
  from ``absolute.ABSOLUTE_POSITIONS`` (``learned``, ``sinusoidal``);
- relative: a ``PositionScheme`` (``base.py``), chosen by ``TransformerConfig.relative_positions`` from the
  registry; one file per scheme: ``none``, ``rotary`` (RoFormer), ``t5`` (T5's bucketed bias), ``disentangled``
  (DeBERTa), ``alibi`` (ALiBi's linear distance penalty).

Every module of this package is imported here, so a new scheme is one new file with a registered class.
"""

import importlib
import pkgutil

from lit_lm.models.layers.positions.base import (
    POSITION_SCHEMES, PositionScheme, position_scheme, register_position_scheme,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["POSITION_SCHEMES", "PositionScheme", "position_scheme", "register_position_scheme"]
