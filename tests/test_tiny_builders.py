"""The tiny builders' shape pattern (DESIGN.md: ~8 parameters get a config object).

Every builder in ``TINY_BUILDERS`` takes ``out_dir``, ``words``, ``init_std``, ``seed``, ``dtype`` (``build_tiny_llava``
also ``init_device``) and the fields of its family's shape dataclass (``TINY_SHAPES``, all subclasses of
``TinyShape``) as ``**shape``. The recorded values below are the builders' keyword defaults and the configs they
wrote before the sizes moved into those dataclasses (transformers 5.23): the dataclass defaults must reproduce them.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, fields

import pytest

from lvlm_probe.models.tiny import BENCH_SHAPES, TINY_BUILDERS, TINY_SHAPES, TinyShape

#: The builders' shape keyword defaults before the refactor (build_tiny_llava: LlavaShape's).
RECORDED_DEFAULTS = {
    "gemma3": {"image_size": 48, "patch_size": 8, "sliding_window": 24, "text_heads": 4, "text_hidden": 64,
        "text_kv_heads": 2, "text_layers": 2, "tokens_per_image": 9, "vision_heads": 2, "vision_hidden": 32,
        "vision_layers": 2},
    "idefics3": {"image_size": 32, "max_tiles_per_side": 3, "patch_size": 4, "scale_factor": 2, "text_heads": 4,
        "text_hidden": 64, "text_kv_heads": 2, "text_layers": 2, "vision_heads": 2, "vision_hidden": 32,
        "vision_layers": 2},
    "llava": {"image_size": 32, "intermediate_mult": 2, "max_positions": 512, "patch_size": 8, "text_heads": 4,
        "text_hidden": 64, "text_intermediate": None, "text_kv_heads": 2, "text_layers": 2, "vision_heads": 2,
        "vision_hidden": 32, "vision_intermediate": None, "vision_layers": 2, "vocab_size": None},
    "llava_next": {"grid_pinpoints": ((32, 64), (64, 32), (64, 64), (96, 32), (32, 96)), "image_size": 32,
        "patch_size": 8, "text_heads": 4, "text_hidden": 64, "text_kv_heads": 2, "text_layers": 2, "vision_heads": 2,
        "vision_hidden": 32, "vision_layers": 2},
    "llava_onevision": {"anyres_max": 2, "grid_pinpoints": ((32, 64), (64, 32), (64, 64), (96, 32), (32, 96)),
        "image_size": 32, "patch_size": 8, "text_heads": 4, "text_hidden": 64, "text_kv_heads": 2, "text_layers": 2,
        "vision_heads": 2, "vision_hidden": 32, "vision_layers": 2},
    "mistral3": {"longest_edge": 64, "merge": 2, "patch_size": 4, "text_heads": 4, "text_hidden": 64,
        "text_kv_heads": 2, "text_layers": 2, "vision_feature_layer": -1, "vision_heads": 2, "vision_hidden": 32,
        "vision_layers": 2},
    "qwen2_5_vl": {"max_pixels": 12544, "merge": 2, "min_pixels": 3136, "patch_size": 14, "text_heads": 4,
        "text_hidden": 64, "text_kv_heads": 2, "text_layers": 2, "vision_heads": 2, "vision_hidden": 32,
        "vision_layers": 2, "window_size": 56},
    "qwen2_vl": {"max_pixels": 12544, "merge": 2, "min_pixels": 3136, "patch_size": 14, "text_heads": 4,
        "text_hidden": 64, "text_kv_heads": 2, "text_layers": 2, "vision_heads": 2, "vision_hidden": 32,
        "vision_layers": 2},
    "qwen3_vl": {"deepstack_visual_indexes": (0, 1), "max_pixels": 16384, "merge": 2, "min_pixels": 4096,
        "patch_size": 16, "text_heads": 4, "text_hidden": 64, "text_kv_heads": 2, "text_layers": 3,
        "vision_heads": 2, "vision_hidden": 32, "vision_layers": 3},
}

#: Config keys of a default build (config.json, preprocessor_config.json, processor_config.json; ``file:path``).
CONFIG_KEYS = {"hidden_size", "embed_dim", "num_hidden_layers", "depth", "num_attention_heads", "num_heads",
               "num_key_value_heads", "image_size", "patch_size", "spatial_merge_size", "window_size",
               "deepstack_visual_indexes", "image_grid_pinpoints", "vision_aspect_ratio", "scale_factor",
               "mm_tokens_per_image", "sliding_window", "min_pixels", "max_pixels", "merge_size", "size",
               "max_image_size", "image_seq_len", "image_seq_length", "num_image_tokens"}
#: ... as the builders wrote them at their defaults before the refactor.
RECORDED_CONFIG = {
    "gemma3": {"config:mm_tokens_per_image": 9, "config:text_config.hidden_size": 64,
        "config:text_config.num_attention_heads": 4, "config:text_config.num_hidden_layers": 2,
        "config:text_config.num_key_value_heads": 2, "config:text_config.sliding_window": 24,
        "config:vision_config.hidden_size": 32, "config:vision_config.image_size": 48,
        "config:vision_config.num_attention_heads": 2, "config:vision_config.num_hidden_layers": 2,
        "config:vision_config.patch_size": 8, "preprocessor:size": {"height": 48, "width": 48},
        "processor:image_seq_length": 9},
    "idefics3": {"config:scale_factor": 2, "config:text_config.hidden_size": 64,
        "config:text_config.num_attention_heads": 4, "config:text_config.num_hidden_layers": 2,
        "config:text_config.num_key_value_heads": 2, "config:vision_config.hidden_size": 32,
        "config:vision_config.image_size": 32, "config:vision_config.num_attention_heads": 2,
        "config:vision_config.num_hidden_layers": 2, "config:vision_config.patch_size": 4,
        "preprocessor:max_image_size": {"longest_edge": 32}, "preprocessor:size": {"longest_edge": 96},
        "processor:image_seq_len": 16},
    "llava": {"config:image_seq_length": 16, "config:text_config.hidden_size": 64,
        "config:text_config.num_attention_heads": 4, "config:text_config.num_hidden_layers": 2,
        "config:text_config.num_key_value_heads": 2, "config:vision_config.hidden_size": 32,
        "config:vision_config.image_size": 32, "config:vision_config.num_attention_heads": 2,
        "config:vision_config.num_hidden_layers": 2, "config:vision_config.patch_size": 8,
        "preprocessor:size": {"shortest_edge": 32}, "processor:patch_size": 8},
    "llava_next": {"config:image_grid_pinpoints": [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]],
        "config:image_seq_length": 16, "config:text_config.hidden_size": 64,
        "config:text_config.num_attention_heads": 4, "config:text_config.num_hidden_layers": 2,
        "config:text_config.num_key_value_heads": 2, "config:vision_config.hidden_size": 32,
        "config:vision_config.image_size": 32, "config:vision_config.num_attention_heads": 2,
        "config:vision_config.num_hidden_layers": 2, "config:vision_config.patch_size": 8,
        "preprocessor:image_grid_pinpoints": [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]],
        "preprocessor:size": {"shortest_edge": 32}, "processor:patch_size": 8},
    "llava_onevision": {"config:image_grid_pinpoints": [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]],
        "config:text_config.hidden_size": 64, "config:text_config.num_attention_heads": 4,
        "config:text_config.num_hidden_layers": 2, "config:text_config.num_key_value_heads": 2,
        "config:text_config.sliding_window": None, "config:vision_aspect_ratio": "anyres_max_2",
        "config:vision_config.hidden_size": 32, "config:vision_config.image_size": 32,
        "config:vision_config.num_attention_heads": 2, "config:vision_config.num_hidden_layers": 2,
        "config:vision_config.patch_size": 8,
        "preprocessor:image_grid_pinpoints": [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]],
        "preprocessor:size": {"height": 32, "width": 32}, "processor:num_image_tokens": 16,
        "processor:vision_aspect_ratio": "anyres_max_2"},
    "mistral3": {"config:spatial_merge_size": 2, "config:text_config.hidden_size": 64,
        "config:text_config.num_attention_heads": 4, "config:text_config.num_hidden_layers": 2,
        "config:text_config.num_key_value_heads": 2, "config:text_config.sliding_window": None,
        "config:vision_config.hidden_size": 32, "config:vision_config.image_size": 64,
        "config:vision_config.num_attention_heads": 2, "config:vision_config.num_hidden_layers": 2,
        "config:vision_config.patch_size": 4, "preprocessor:patch_size": {"height": 4, "width": 4},
        "preprocessor:size": {"longest_edge": 64}, "processor:patch_size": 4, "processor:spatial_merge_size": 2},
    "qwen2_5_vl": {"config:text_config.hidden_size": 64, "config:text_config.num_attention_heads": 4,
        "config:text_config.num_hidden_layers": 2, "config:text_config.num_key_value_heads": 2,
        "config:text_config.sliding_window": None, "config:vision_config.depth": 2,
        "config:vision_config.hidden_size": 32, "config:vision_config.num_heads": 2,
        "config:vision_config.patch_size": 14, "config:vision_config.spatial_merge_size": 2,
        "config:vision_config.window_size": 56, "preprocessor:merge_size": 2, "preprocessor:patch_size": 14,
        "preprocessor:size": {"longest_edge": 12544, "shortest_edge": 3136}},
    "qwen2_vl": {"config:text_config.hidden_size": 64, "config:text_config.num_attention_heads": 4,
        "config:text_config.num_hidden_layers": 2, "config:text_config.num_key_value_heads": 2,
        "config:text_config.sliding_window": None, "config:vision_config.depth": 2,
        "config:vision_config.embed_dim": 32, "config:vision_config.hidden_size": 64,
        "config:vision_config.num_heads": 2, "config:vision_config.patch_size": 14,
        "config:vision_config.spatial_merge_size": 2, "preprocessor:merge_size": 2, "preprocessor:patch_size": 14,
        "preprocessor:size": {"longest_edge": 12544, "shortest_edge": 3136}},
    "qwen3_vl": {"config:text_config.hidden_size": 64, "config:text_config.num_attention_heads": 4,
        "config:text_config.num_hidden_layers": 3, "config:text_config.num_key_value_heads": 2,
        "config:vision_config.deepstack_visual_indexes": [0, 1], "config:vision_config.depth": 3,
        "config:vision_config.hidden_size": 32, "config:vision_config.num_heads": 2,
        "config:vision_config.patch_size": 16, "config:vision_config.spatial_merge_size": 2,
        "preprocessor:merge_size": 2, "preprocessor:patch_size": 16,
        "preprocessor:size": {"longest_edge": 16384, "shortest_edge": 4096}},
}


def config_subset(d) -> dict:
    out = {}

    def walk(x: dict, prefix: str) -> None:
        for k, v in x.items():
            if isinstance(v, dict) and k.endswith("_config"):
                walk(v, f"{prefix}{k}.")
            elif k in CONFIG_KEYS:
                out[prefix + k] = v

    for name in ("config.json", "preprocessor_config.json", "processor_config.json"):
        if (d / name).exists():
            walk(json.loads((d / name).read_text()), name.split(".")[0].replace("_config", "") + ":")
    return out


def test_every_family_has_a_shape_and_benchmark_settings():
    assert set(TINY_SHAPES) == set(TINY_BUILDERS) == set(BENCH_SHAPES) == set(RECORDED_DEFAULTS)
    for family, cls in TINY_SHAPES.items():
        assert issubclass(cls, TinyShape), family
        names = {f.name for f in fields(cls)}
        assert {f.name for f in fields(TinyShape)} <= names
        assert set(BENCH_SHAPES[family]) <= names, family  # the benchmark passes no setting the shape lacks


@pytest.mark.parametrize("family", sorted(TINY_BUILDERS))
def test_builder_signature_is_small_and_takes_the_shape(family):
    params = inspect.signature(TINY_BUILDERS[family]).parameters.values()
    named = [p.name for p in params if p.kind is not p.VAR_KEYWORD]
    assert len(named) <= 6, named
    assert {"out_dir", "words", "init_std", "seed", "dtype"} <= set(named)
    assert any(p.kind is p.VAR_KEYWORD for p in params)


@pytest.mark.parametrize("family", sorted(TINY_BUILDERS))
def test_shape_defaults_are_the_recorded_builder_defaults(family):
    assert asdict(TINY_SHAPES[family]()) == RECORDED_DEFAULTS[family]


@pytest.mark.parametrize("family", sorted(TINY_BUILDERS))
def test_an_unknown_setting_is_a_type_error_naming_the_shape(family, tmp_path):
    cls = TINY_SHAPES[family]
    with pytest.raises(TypeError, match=rf"build_tiny_{family} got unknown shape settings \['imagesize'\]; "
                                        rf"see {cls.__name__}$"):
        TINY_BUILDERS[family](tmp_path / "m", imagesize=32)
    assert not (tmp_path / "m").exists()


def test_defaults_write_the_recorded_configs(tmp_path):
    for family, build in TINY_BUILDERS.items():
        assert config_subset(build(tmp_path / family)) == RECORDED_CONFIG[family], family
