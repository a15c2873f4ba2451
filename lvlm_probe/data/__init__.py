"""Items, scene graphs and the synthetic scene world."""

from lvlm_probe.data.items import Item, load_image, read_items
from lvlm_probe.data.scene import Relation, SceneGraph, SceneObject
from lvlm_probe.data.world import SceneWorld, WorldConfig, WorldStats, measure_statistics

__all__ = ["Item", "Relation", "SceneGraph", "SceneObject", "SceneWorld", "WorldConfig", "WorldStats", "load_image",
           "measure_statistics", "read_items"]
