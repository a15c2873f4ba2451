"""The cause x intervention matrix's cells and target, on hand-made errors (the full matrix runs in
benchmarks/cause_interventions.py; its JSON contract is tested in test_benchmark_contracts.py)."""

import numpy as np
import pandas as pd

import lvlm_probe as lp
from lvlm_probe.organisms.mitigation import INTENDED, intended_target, matrix_cells
from lvlm_probe.tracing.confirm import CONFIRMING


def _errs(rows):
    return pd.DataFrame(rows, columns=["item_id", "kind", "polarity", "subject", "attribute", "claimed"])


def test_a_cell_counts_what_the_method_breaks_as_well_as_what_it_fixes():
    planted = _errs([("a", "attribute", "hallucinated", "cup", "color", "red"),
                     ("b", "attribute", "hallucinated", "cup", "color", "red"),
                     ("c", "attribute", "hallucinated", "cup", "color", "red"),
                     ("d", "object", "hallucinated", "square", None, "square")])
    # after: a fixed, b now a different wrong colour (not fixed, not the planted pattern), c and d unchanged, and a
    # new planted-pattern error on item e (introduced)
    after_all = _errs([("b", "attribute", "hallucinated", "cup", "color", "blue"),
                       ("c", "attribute", "hallucinated", "cup", "color", "red"),
                       ("d", "object", "hallucinated", "square", None, "square"),
                       ("e", "attribute", "hallucinated", "cup", "color", "red")])
    after_planted = after_all[after_all.claimed.isin(["red", "square"])]
    cell = matrix_cells("attribute_prior", "pai", planted, after_planted, after_all, {"a": "one two", "b": "x"},
                        {"a": "one two three", "b": "x"})
    assert cell["n_errors"] == 4 and cell["n_fixed"] == 1 and cell["fixed_fraction"] == 0.25
    assert cell["introduced"] == 1 and cell["reduction"] == (1 - 1) / 4
    assert cell["length_ratio"] == 4 / 3
    none = matrix_cells("x", "m", planted.iloc[:0], planted.iloc[:0], planted.iloc[:0], {}, {})
    assert np.isnan(none["fixed_fraction"]) and np.isnan(none["reduction"])


def test_a_fix_keeps_the_claim_where_it_has_to_be_made():
    """A colour question answered "no" (or a yes/no question answered with neither) has no error left but is not
    fixed; nor is a caption's colour error "fixed" by dropping the object or its colour. A hallucinated object
    dropped from a caption is fixed."""
    from lvlm_probe.data.items import Item
    from lvlm_probe.data.scene import SceneGraph
    from lvlm_probe.misalignment import answers_question, claims_kept, judge_batch, states_truth

    scene = SceneGraph.from_dict({"objects": [{"name": "diamond", "attributes": {"color": "green", "size": "small"}},
                                              {"name": "ring", "attributes": {"color": "red", "size": "large"}}]})
    color = Item(id="q", image=None, task="attribute", prompt="what color is the diamond ?", scene=scene,
                 meta={"target": "diamond", "attribute": "color"})
    exists = Item(id="e", image=None, task="exists", prompt="is there a cross ?", scene=scene,
                  meta={"target": "cross"})
    cap = Item(id="c", image=None, task="caption", prompt="describe the image .", scene=scene)
    assert [answers_question(t, color) for t in ("yellow", "green", "no", "")] == [True, True, False, False]
    assert [answers_question(t, exists) for t in ("yes", "no .", "a ring")] == [True, True, False]
    assert answers_question("", cap)
    assert states_truth("a small green diamond .", "diamond", "color", "green|blue")
    assert not states_truth("a small diamond .", "diamond", "color", "green")
    assert not states_truth("the diamond is not green .", "diamond", "color", "green")

    def fixed_after(item, before, after):
        planted = judge_batch([before], items=[item])
        new = judge_batch([after], items=[item])
        cell = matrix_cells("m", "x", planted, new.iloc[:0], new, {item.id: before}, {item.id: after},
                            claims_kept(planted, [item], {item.id: after}))
        return cell["fixed_fraction"]

    assert [fixed_after(color, "yellow", t) for t in ("green", "no", "purple")] == [1.0, 0.0, 0.0]
    assert [fixed_after(exists, "yes", t) for t in ("no", "maybe")] == [1.0, 0.0]
    cap_before = "a small yellow diamond and a large red ring ."
    assert fixed_after(cap, cap_before, "a small green diamond and a large red ring .") == 1.0
    assert fixed_after(cap, cap_before, "a small diamond and a large red ring .") == 0.0  # colour dropped
    assert fixed_after(cap, cap_before, "a large red ring .") == 0.0  # object dropped
    assert fixed_after(cap, "a small green diamond , a large red ring and a cross .",
                       "a small green diamond and a large red ring .") == 1.0  # hallucinated object dropped

    # a false relation in a caption is repaired by a true relation between the same two objects (either order),
    # not by a caption that no longer relates them
    from lvlm_probe.data.scene import SceneObject
    from lvlm_probe.misalignment import states_relation

    below = SceneGraph([SceneObject("triangle", {"color": "red", "size": "small"}, (0.0, 40.0, 8.0, 48.0)),
                        SceneObject("cross", {"color": "blue", "size": "small"}, (0.0, 0.0, 8.0, 8.0))]
                       ).derive_relations()
    rcap = Item(id="r", image=None, task="caption", prompt="describe the image .", scene=below)
    assert states_relation("a cross above a triangle .", "triangle", "cross", "below")
    assert not states_relation("a triangle and a cross .", "triangle", "cross", "below")
    assert not states_relation("the triangle is not below the cross .", "triangle", "cross", "below")
    assert states_relation("a triangle and a cross .", "triangle", "cross", None)
    wrong = "a small red triangle above a small blue cross ."
    assert fixed_after(rcap, wrong, "a small red triangle below a small blue cross .") == 1.0
    assert fixed_after(rcap, wrong, "a small blue cross above a small red triangle .") == 1.0
    assert fixed_after(rcap, wrong, "a small red triangle and a small blue cross .") == 0.0  # relation dropped
    assert fixed_after(rcap, wrong, "a small red triangle left of a small blue cross .") == 0.0  # another false one


def test_target_compares_with_causes_the_intervention_is_not_intended_for():
    effect = {"cooccurrence": {"vcd": 0.15, "pai": 0.0}, "attribute_prior": {"vcd": 0.19, "pai": 1.0},
              "visual_neglect": {"vcd": 0.01, "pai": 0.19}, "encoder_blind": {"vcd": 0.02, "pai": np.nan}}
    intended = {"cooccurrence": "vcd", "attribute_prior": "vcd", "visual_neglect": "pai"}
    assert intended_target(effect, intended) == {"cooccurrence": True, "attribute_prior": True,
                                                 "visual_neglect": False}
    assert intended_target(effect, intended, strict=True) == {"cooccurrence": False, "attribute_prior": True,
                                                              "visual_neglect": False}


def test_intended_is_the_confirming_intervention_of_each_planted_stage():
    assert INTENDED == {"cooccurrence": "verify_objects", "attribute_prior": "pai", "relation_prior": "verify_relations",
                        "visual_neglect": "early_readout",
                        "drift": "region_restart", "sampling": "greedy", "encoder_blind": "swap_encoder",
                        "projector_bottleneck": "swap_projector", "small_object": "swap_encoder"}
    assert CONFIRMING["long generation"] == "region_restart" and CONFIRMING["encoder"] == "swap_encoder"


def test_swaps_run_only_on_organisms_that_share_cleans_llm():
    """The front-end organisms name clean as their reference; every other organism's LLM is its own."""
    import types

    from lvlm_probe.organisms import run_defaults
    from lvlm_probe.organisms.mitigation import swap_interventions

    clean = lp.load("organism:clean", device="cpu")
    for name in ("encoder_blind", "projector_bottleneck", "small_object", "cooccurrence", "visual_neglect", "clean"):
        room = swap_interventions(types.SimpleNamespace(run_defaults=run_defaults(name)), clean)
        front_end = name in ("encoder_blind", "projector_bottleneck", "small_object")
        assert sorted(room) == (["swap_encoder", "swap_projector"] if front_end else []), name
        assert all(m.reference is clean for m in room.values())


def test_heat_map_shows_the_chosen_value_and_frames_the_intended_cells():
    import matplotlib.pyplot as plt

    from lvlm_probe.plotting import plot_intervention_matrix

    t = pd.DataFrame({"cause": ["drift", "drift", "sampling", "sampling"],
                      "intervention": ["region_restart", "greedy"] * 2, "n_errors": [10, 10, 4, 4],
                      "fixed_fraction": [0.9, 0.0, 0.2, 1.0], "effect": [0.95, 0.0, -1.7, 0.3]})
    fig = plot_intervention_matrix(t, intended={"drift": "region_restart", "sampling": "greedy"})
    ax = fig.axes[0]
    assert np.allclose(ax.images[0].get_array(), [[0.9, 0.0], [0.2, 1.0]]) and len(ax.patches) == 2
    assert [x.get_text() for x in ax.get_yticklabels()] == ["drift (n=10)", "sampling (n=4)"]
    fig2 = plot_intervention_matrix(t, value="effect")
    im = fig2.axes[0].images[0]
    assert im.get_clim() == (-1, 1) and np.allclose(im.get_array(), [[0.95, 0.0], [-1.0, 0.3]])  # colour clipped
    assert "-1.70" in [x.get_text() for x in fig2.axes[0].texts]  # the text keeps the value
    assert fig2.axes[1].get_ylabel() == "reduction beyond the best control"
    plt.close("all")
