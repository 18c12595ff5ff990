"""Masked layers and whole-model conversion."""

from lth_sparse.nn.convert import masked, to_torch_prune, unmasked
from lth_sparse.nn.modules import MaskedConv2d, MaskedLinear, MaskedMixin, enforce_masks

__all__ = ["MaskedLinear", "MaskedConv2d", "MaskedMixin", "masked", "unmasked", "to_torch_prune", "enforce_masks"]
