"""No relative positions: attention sees positions only through an absolute embedding, if any."""

from lit_lm.models.layers.positions.base import PositionScheme, register_position_scheme


@register_position_scheme("none")
class NoRelativePositions(PositionScheme):
    """The default scheme: no rotation, no bias, no parameters."""

    needs_state = False
