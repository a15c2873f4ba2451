"""Bad input gets a clear error that names the item and the fix."""

import dataclasses

import pytest
import torch

import lvlm_probe as lp
from conftest import rand_image


def test_image_token_count_mismatch(llava):
    b = llava.prepare([rand_image(0)], ["what is in the image ?"], item_ids=["cat-01"])
    ids = b.input_ids.clone()
    pos = int(b.roles.image[0].nonzero()[0, 0])
    ids[0, pos] = llava.tokenizer.convert_tokens_to_ids("what")
    bad = dataclasses.replace(b, input_ids=ids)
    with pytest.raises(lp.InputError, match=r"item 'cat-01'.*15 image tokens.*16 features.*LVLM.prepare"):
        llava.forward(bad)
    with pytest.raises(lp.InputError, match="cat-01"):
        llava.generate(bad, max_new_tokens=2)


def test_missing_and_corrupt_image(llava, tmp_path):
    with pytest.raises(lp.InputError, match=r"item 'x1'.*does not exist"):
        llava.prepare([str(tmp_path / "nope.jpg")], ["what ?"], item_ids=["x1"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    with pytest.raises(lp.InputError, match=r"item 'x2'.*corrupt or not an image"):
        llava.prepare([str(broken)], ["what ?"], item_ids=["x2"])
    with pytest.raises(lp.InputError, match="PIL image or a file path"):
        lp.load_image(12345)


def test_prompt_without_placeholder(family):
    model, _ = family
    with pytest.raises(lp.InputError, match=r"item 'q7'.*0 image placeholder\(s\) but 1 image.*add the placeholder"):
        model.prepare([rand_image(0)], ["what is in the image ?"], chat_template=False, item_ids=["q7"])
    with pytest.raises(lp.InputError, match=r"2 image placeholder\(s\) but 1 image"):
        model.prepare([rand_image(0)], ["<image> <image> what ?"], chat_template=False)
    with pytest.raises(lp.InputError, match="chat_template=True places images itself"):
        model.prepare([rand_image(0)], ["<image> what ?"], chat_template=True)


def test_mismatched_lengths(llava):
    with pytest.raises(lp.InputError, match="2 prompts but 1 image"):
        llava.prepare([rand_image(0)], ["a", "b"])


def test_unknown_site_and_selection(llava, tmp_path):
    items = [lp.Item(id="a", image=rand_image(0), prompt="what ?")]
    with pytest.raises(lp.SiteError, match=r"unknown site 'llm.resid_psot.1'.*llm.resid_post"):
        lp.capture(llava, items, sites=["llm.resid_psot.1"], select=["image_mean"], out=tmp_path / "a")
    with pytest.raises(lp.SiteError, match=r"LLM has 2 layers"):
        lp.capture(llava, items, sites=["llm.resid_post.9"], select=["image_mean"], out=tmp_path / "b")
    with pytest.raises(lp.SiteError, match=r"unknown selection\(s\) \['image_max'\]"):
        lp.capture(llava, items, sites=["llm.resid_post.1"], select=["image_max"], out=tmp_path / "c")
    with pytest.raises(lp.SiteError, match=r"none of the selections \['last_prompt'\] applies to site 'projector.out'"):
        lp.capture(llava, items, sites=["projector.out"], select=["last_prompt"], out=tmp_path / "d")
    with pytest.raises(lp.InputError, match="needs generation"):
        lp.capture(llava, items, sites=["llm.resid_post.1"], select=["generated"], out=tmp_path / "e")
    with pytest.raises(lp.InputError, match="appears twice"):
        lp.capture(llava, items * 2, sites=["llm.resid_post.1"], select=["image_mean"], out=tmp_path / "f")


def test_device_mismatch(llava):
    b = llava.prepare([rand_image(0)], ["what ?"])
    moved = b.to("meta")
    with pytest.raises(lp.InputError, match=r"batch tensors are on meta but the model is on cpu.*batch.to"):
        llava.forward(moved)


def test_store_errors(tmp_path, llava):
    with pytest.raises(lp.StoreError, match="not an activation store"):
        lp.ActivationStore(tmp_path)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(lp.StoreError, match="not an activation store; choose an empty"):
        lp.capture(llava, [lp.Item(id="a", image=rand_image(0), prompt="what ?")], sites=["llm.resid_post.0"],
                   select=["image_mean"], out=tmp_path / "junk", progress=False)


def test_hooks_are_removed_after_errors(llava):
    b = llava.prepare([rand_image(0)], ["what ?"])

    def boom(t, hook=None):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with llava.hooks([("blocks.0.hook_resid_post", boom)]):
            llava.forward(b)
    llava.forward(b)  # would raise if the hook leaked
    assert torch.isfinite(llava.forward(b)).all()


def test_systematic_failure_stops_capture(llava, tmp_path, monkeypatch):
    """A non-input error on every item of a batch is a bug, not bad data: capture raises."""
    import importlib

    run = importlib.import_module("lvlm_probe.capture.run")

    def broken(self, *a, **k):
        raise RuntimeError("recorder bug")

    monkeypatch.setattr(run._Recorder, "_llm", broken)
    items = [lp.Item(id=str(k), image=rand_image(k), prompt="what ?") for k in range(3)]
    with pytest.raises(RuntimeError, match="recorder bug"):
        lp.capture(llava, items, sites=["llm.resid_post.0"], select=["image_mean"], out=tmp_path / "s",
                   progress=False)


def test_empty_prompt_and_unknown_words(family):
    model, _ = family
    for bad in ("", "   ", "<image>"):
        with pytest.raises(lp.InputError, match=r"item 'e1': the prompt is empty"):
            model.prepare([rand_image(0)], [bad], item_ids=["e1"], chat_template=bad != "<image>")
    with pytest.warns(UserWarning, match=r"item 'w1': the tokenizer does not know \['zebra'\]"):
        model.prepare([rand_image(0)], ["what is the zebra ?"], item_ids=["w1"])


def test_items_file_messages_name_file_line_and_column(tmp_path):
    f = tmp_path / "malformed.jsonl"
    f.write_text('{"id": "a", "image": "x.png", "prompt": "p"}\n{"id": "b", "image": \n', encoding="utf-8")
    with pytest.raises(lp.InputError, match=r"malformed.jsonl:2: not valid JSON \(Expecting value at column 21\)"):
        lp.read_items(f)
    g = tmp_path / "bom_crlf.jsonl"
    g.write_bytes(b'\xef\xbb\xbf{"id": "a", "image": "x.png", "prompt": "p"}\r\n{"id": "b", "image": "y.png", "prompt": "q"}\r\n')
    assert [it.id for it in lp.read_items(g)] == ["a", "b"]
