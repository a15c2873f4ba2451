import json, glob
for f in sorted(glob.glob("res_*.json")):
    r = json.load(open(f)); a = r["args"]; h = r["hist"][-1]
    print(f"{a['out']:22s} prep={a['prep']:8s} prior={a['prior']:4s} freeze={a['freeze']:13s} aux={a.get('aux',0)} steps={a['steps']:5d} "
          f"rel={h['relation']:.3f} yes={h['rel_yes_rate']:.2f} col={h['color']:.3f} siz={h['size']:.3f} ex={h['exists']:.3f} "
          f"diag={h['diag']:.2f} s2={r['train_s']:.0f}s prep={r['prep_seconds']:.0f}s MB={r['mb_fp16']:.2f}")
