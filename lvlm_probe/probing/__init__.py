"""Probing room: linear probes with control tasks and layer sweeps, and the logit lens.

>>> import lvlm_probe as lp
>>> from lvlm_probe.probing import scene_labels, probe_sweep, logit_lens
>>> labels = scene_labels(items)                                   # doctest: +SKIP
>>> res = probe_sweep(store, labels, ["vision.resid_post.*", "projector.out"])   # doctest: +SKIP
>>> lens = logit_lens(model, batch, positions="image", k=5)       # doctest: +SKIP
"""

from lvlm_probe.probing.labels import (BOX_COLUMNS, LABEL_COLUMNS, OTHER_BOX_COLUMNS, box_patches, check_labels,
                                       patch_table, scene_labels)
from lvlm_probe.probing.lens import (LENS_COLUMNS, WORD_COLUMNS, internal_confidence, lens_logits, lens_modules,
                                     logit_lens, word_probability, word_token_ids)
from lvlm_probe.probing.probe import LinearProbe, infer_task
from lvlm_probe.probing.sweep import (PREDICTION_COLUMNS, SWEEP_COLUMNS, permutation_matches, probe_sweep,
                                      site_depth)

__all__ = [
    "BOX_COLUMNS", "LABEL_COLUMNS", "LENS_COLUMNS", "LinearProbe", "OTHER_BOX_COLUMNS", "PREDICTION_COLUMNS",
    "SWEEP_COLUMNS", "WORD_COLUMNS", "box_patches", "check_labels", "infer_task", "internal_confidence",
    "lens_logits", "lens_modules", "logit_lens", "patch_table", "permutation_matches", "probe_sweep", "scene_labels",
    "site_depth", "word_probability", "word_token_ids",
]
