"""Shared by the repair-limit scripts: make a scratch P6 variant loadable as `organism:visual_neglect@TAG`."""
import tempfile
from pathlib import Path

import lvlm_probe.organisms as O
import lvlm_probe.organisms.zoo as Z


def as_neglect_variant(tag: str, spec: "Z.OrganismSpec", checkpoint: Path | None = None) -> str:
    """Register ``spec`` (renamed ``visual_neglect@TAG``, a dose of visual neglect, so its scenes and planted
    pattern are visual neglect's) and, with ``checkpoint``, point that name at the directory; returns the name."""
    import dataclasses

    name = f"visual_neglect@{tag}"
    Z.DOSE_SPECS[name] = dataclasses.replace(spec, name=name, checkpoint=name, base="visual_neglect")
    Z.ZOO_DOSE["visual_neglect"] = str(Z.NEGLECT_MISMATCH)
    Z.DOSES["visual_neglect"] = (tag, str(Z.NEGLECT_MISMATCH))
    if checkpoint is not None:
        tmp = Path(tempfile.mkdtemp())
        for d in O.CHECKPOINTS.iterdir():
            (tmp / d.name).symlink_to(d)
        (tmp / name).symlink_to(Path(checkpoint).resolve())
        O.CHECKPOINTS = tmp
    return name
