"""Items (image, prompt, ground truth) and, later, scene graphs and the synthetic world."""

from lvlm_probe.data.items import Item, load_image, read_items

__all__ = ["Item", "load_image", "read_items"]
