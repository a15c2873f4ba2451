"""Paper figures from result DataFrames (never runs a model), in one colour-blind-safe style.

Every function takes the DataFrames (or arrays) produced elsewhere in lvlm_probe, checks their columns
(raising :class:`~lvlm_probe.errors.InputError` that names missing ones) and returns a matplotlib Figure;
:func:`save_figure` writes it as vector PDF + PNG atomically. See ``docs/plotting.md``.
"""

from lvlm_probe.plotting.attention import plot_image_attention, plot_patch_heatmap
from lvlm_probe.plotting.diagnosis import plot_cause_bars, plot_confusion, plot_evidence_panel, plot_reliability
from lvlm_probe.plotting.interventions import plot_intervention_matrix
from lvlm_probe.plotting.probes import plot_logit_lens, plot_probe_curves
from lvlm_probe.plotting.style import (COMPONENT_COLORS, LEVEL_COLORS, OKABE_ITO, ONE_COLUMN, PALETTE, STAGE_COLORS,
                                       STYLE_PATH, TWO_COLUMN, figsize, paper_style, save_figure, use_style)

__all__ = [
    "COMPONENT_COLORS", "LEVEL_COLORS", "OKABE_ITO", "ONE_COLUMN", "PALETTE", "STAGE_COLORS", "STYLE_PATH",
    "TWO_COLUMN", "figsize", "paper_style", "plot_cause_bars", "plot_confusion", "plot_evidence_panel", "plot_reliability",
    "plot_image_attention", "plot_intervention_matrix",
    "plot_logit_lens", "plot_patch_heatmap", "plot_probe_curves", "save_figure", "use_style",
]
