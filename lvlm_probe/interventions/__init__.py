"""Parameter-frozen interventions on an :class:`~lvlm_probe.LVLM`, each with the controls that keep it honest.

>>> import lvlm_probe as lp
>>> from lvlm_probe.interventions import VCD, decode
>>> gen = decode(model, batch, VCD(alpha=1.0), max_new_tokens=32)          # doctest: +SKIP

Methods (each cites its paper in ``.paper``): :class:`VCD`, :class:`ImageFreeContrast` (M3ID-style), :class:`PAI`,
:class:`ProjectAway`, :class:`EarlyReadout` (DeCo-style), :class:`RegionRestart` (restart the enumeration per
image region), :class:`VerifyObjects` (ask about each named object, delete the denied ones), :class:`VerifyRelations` (ask
about each stated relation, write the affirmed predicate for a denied one), :class:`Greedy`,
:class:`SwapComponent` (a reference model's encoder or projector, for a front-end cause); controls of Yin et al. 2025:
:class:`Greedy`, :class:`PlausibilityOnly`, :class:`YesRatioMatched` (+ :func:`yes_ratio_shift`).
See docs/interventions.md.
"""

from lvlm_probe.interventions.base import Intervention, apc, aux_logits, decode, image_blind
from lvlm_probe.interventions.methods import (PAI, VCD, EarlyReadout, Greedy, ImageFreeContrast, PlausibilityOnly,
                                              ProjectAway, YesRatioMatched, amplify_image_attention,
                                              diffusion_noise, word_direction, yes_margins, yes_ratio_shift)
from lvlm_probe.interventions.restart import RegionRestart, region_views
from lvlm_probe.interventions.swap import SwapComponent
from lvlm_probe.interventions.verify import VerifyObjects, VerifyRelations, delete_mentions

#: Every method and control by its ``name`` (what benchmark tables and ``settings["intervention"]`` use).
METHODS = {c.name: c for c in (Greedy, PlausibilityOnly, VCD, ImageFreeContrast, PAI, ProjectAway, EarlyReadout,
                               RegionRestart, VerifyObjects, VerifyRelations, YesRatioMatched)}

__all__ = ["METHODS", "EarlyReadout", "Greedy", "ImageFreeContrast", "Intervention", "PAI", "PlausibilityOnly",
           "ProjectAway", "RegionRestart", "SwapComponent", "VCD", "VerifyObjects", "VerifyRelations",
           "YesRatioMatched",
           "amplify_image_attention", "apc", "aux_logits", "decode", "delete_mentions", "diffusion_noise",
           "image_blind", "region_views", "word_direction", "yes_margins", "yes_ratio_shift"]
