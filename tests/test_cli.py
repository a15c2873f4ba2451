import json

import pandas as pd

import lvlm_probe as lp
from conftest import rand_image
from lvlm_probe.cli import main


def test_info_and_capture_from_items_file(llava_dir, tmp_path, capsys):
    assert main(["info", str(llava_dir), "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "llava" and "llm.resid_post.1" in info["sites"]
    for k in range(3):
        rand_image(k).save(tmp_path / f"img{k}.png")
    lines = [json.dumps({"id": f"i{k}", "image": f"img{k}.png", "prompt": "what is in the image ?"}) for k in range(3)]
    lines.append(json.dumps({"id": "gone", "image": "missing.png", "prompt": "what ?"}))
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    rc = main(["capture", "--model", str(llava_dir), "--items", str(tmp_path / "items.jsonl"), "--sites",
               "llm.resid_post.*", "--select", "image_mean", "--out", str(tmp_path / "store"), "--device", "cpu"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["items"] == 3 and list(out["failed"]) == ["gone"]
    assert lp.ActivationStore(tmp_path / "store").get("llm.resid_post.*", "image_mean").shape[:2] == (3, 2)


def test_cli_reports_errors_cleanly(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_demo_writes_report(tmp_path):
    from lvlm_probe.demo import run_demo

    s = run_demo(tmp_path / "demo", n=6, batch_size=3, max_new_tokens=32, progress=False)
    assert s["n_items"] == 6 and not s["failed"] and s["n_trigger_items"] == 3
    assert s["model"]["family"] == "llava" and "cooccurrence" in s["model"]["name"]
    assert (tmp_path / "demo" / "report.html").read_text().count("<tr>") == 7
    assert (tmp_path / "demo" / "figures" / "overview.pdf").exists()
    errs = pd.read_csv(tmp_path / "demo" / "misalignments.csv")
    assert set(errs.columns) >= {"item", "kind", "polarity", "token_indices"}
    assert set(errs.kind) <= {"object", "attribute", "relation"}
    # the planted bias shows up as typed object hallucinations of the square on trigger scenes
    square = errs[(errs.kind == "object") & (errs.polarity == "hallucinated") & (errs.subject == "square")]
    assert s["trigger_items_mentioning_square"] == square.item.str.startswith("trigger").sum()
    assert lp.ActivationStore(tmp_path / "demo" / "store").get("llm.resid_post.*", "generated").shape[:2] == (6, 4)
