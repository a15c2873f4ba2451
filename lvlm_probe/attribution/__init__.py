"""Attribution room: captum patch attribution, attention to image, attention knockout, activation patching.

Typical use::

    from lvlm_probe.attribution import patch_attribution, image_attention, knockout, patch_activations
    att = patch_attribution(model, gen, method="integrated_gradients", step=3)   # token 3 of a generation
    att.frame()                                        # b, item_id, image, method, target, row, col, value
    image_attention(model, gen)                        # attention mass per step, layer, head, role
    knockout(model, batch, from_roles="image", to_roles="last", window=3)
    patch_activations(model, clean, corrupt, "llm.resid_pre.*", groups=["image", "last"])

Every temporary hook goes through ``LVLM.hooks`` and is removed on exit, also when the body raises.
"""

from lvlm_probe.attribution.attention import image_attention, image_attention_maps
from lvlm_probe.attribution.knockout import block_attention, edge_mask, knockout, layer_windows
from lvlm_probe.attribution.patch import METHODS, PatchAttribution, attribution_methods, patch_attribution
from lvlm_probe.attribution.patching import (CounterfactualPair, check_same_layout, counterfactual_pair,
                                             patch_activations, patched)

__all__ = [
    "METHODS", "CounterfactualPair", "PatchAttribution", "attribution_methods", "block_attention",
    "check_same_layout", "counterfactual_pair", "edge_mask", "image_attention", "image_attention_maps", "knockout",
    "layer_windows", "patch_activations", "patch_attribution", "patched",
]
