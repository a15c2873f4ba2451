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

    s = run_demo(tmp_path / "demo", n=16, batch_size=8, max_new_tokens=32, progress=False)
    assert s["n_items"] == 16 and not s["failed"] and "cooccurrence" in s["model"]
    assert sum(s["levels"].values()) == s["n_errors"] > 0
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "Object errors" in html and "Manifest" in html
    assert (tmp_path / "demo" / "figures" / "cause_bars.pdf").exists()
    d = pd.read_csv(tmp_path / "demo" / "diagnosis.csv")
    assert {"item_id", "kind", "level", "stage"} <= set(d.columns)
    assert set(d.kind) <= {"object", "attribute", "relation"}
    # the planted bias shows up as object hallucinations of the square, traced to the data level
    square = d[(d.kind == "object") & (d.polarity == "hallucinated") & (d.claimed == "square")]
    assert len(square) and (square.level == "data").mean() >= 0.5
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["n_errors"] == s["n_errors"]
