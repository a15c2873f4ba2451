"""Region restart: each region of the image described in a fresh, short enumeration, the descriptions joined."""

import pytest
import torch

import lvlm_probe as lp
from conftest import rand_image
from lvlm_probe.errors import InputError
from lvlm_probe.interventions import Greedy, RegionRestart, decode, region_views
from lvlm_probe.misalignment import judge_batch
from lvlm_probe.organisms import default_items

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_region_views_show_one_region_each_over_the_border_colour():
    px = torch.full((3, 8, 8), -1.0)
    px[:, 1:3, 5:7] = torch.tensor([0.5, 0.2, 0.9])[:, None, None]  # an object in the top-right quarter
    px[0, 7, 0] = 3.0  # one odd border pixel does not change the background (the most common border value)
    views, occupied = region_views(px, 2, 2)
    assert views.shape == (4, 3, 8, 8) and occupied == [False, True, True, False]  # bottom-left holds the odd pixel
    assert torch.equal(views[1, :, :4, 4:], px[:, :4, 4:]) and (views[1, :, 4:, :] == -1.0).all()
    assert (views[1, :, :4, :4] == -1.0).all() and views[2, 0, 7, 0] == 3.0 and (views[2, :, :4, :] == -1.0).all()
    assert (views[0] == -1.0).all() and (views[3] == -1.0).all()


def test_region_restart_names_what_a_long_enumeration_drops():
    """organism:drift learned captions of at most 3 objects and drops the middle of longer lists; restarting the
    enumeration per quarter names them (measured on these 8 five-object scenes: 16 omissions -> 0)."""
    model = lp.load("organism:drift", device="cpu")
    items = [it for it in default_items("organism:drift", 16, 1) if it.id.startswith("trig-long")][:8]
    batch = model.prepare_items(items)
    plain = decode(model, batch, Greedy(), max_new_tokens=32)
    restart = decode(model, batch, RegionRestart(), max_new_tokens=32)
    omitted = {name: int((judge_batch(g, items=items).polarity == "omitted").sum())
               for name, g in (("plain", plain), ("restart", restart))}
    assert omitted["plain"] >= 12 and omitted["restart"] <= omitted["plain"] // 4
    assert restart.settings["intervention"]["method"] == "region_restart"
    # the record is a normal Generation: the joined tokens decode to its text, prompt rows unchanged
    assert restart.text[0] == model.tokenizer.decode(restart.tokens[0], skip_special_tokens=True).strip()
    assert torch.equal(restart.sequences[:, :batch.input_ids.shape[1]], batch.input_ids)
    # each region's description is one enumeration: at most 3 objects in a row before a full stop
    assert all(len(part.split(" , ")) <= 3 for t in restart.text for part in t.split(" . "))


def test_region_restart_bad_input_is_one_line(llava, qwen):
    batch = llava.prepare([rand_image(1)], ["describe the image ."])
    with pytest.raises(InputError, match="at least 2 regions"):
        decode(llava, batch, RegionRestart(rows=1, cols=1), max_new_tokens=2)
    with pytest.raises(InputError, match="per-step scores"):
        decode(llava, batch, RegionRestart(), max_new_tokens=2, output_scores=True)
    with pytest.raises(InputError, match="one image per item"):
        decode(qwen, qwen.prepare([rand_image(1)], ["describe the image ."]), RegionRestart(), max_new_tokens=2)
