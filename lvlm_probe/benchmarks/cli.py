"""``lvlm-probe eval pope|amber|chair|rbench|hallusionbench``: a thin layer over the benchmark scorers."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from lvlm_probe.benchmarks.parsers import PROFILES


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN -> null, numpy scalars -> Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _emit(a: argparse.Namespace, payload: dict, table: Any) -> int:
    if a.json:
        print(json.dumps(_clean(payload)))
    else:
        print(table.to_string(index=False) if hasattr(table, "to_string") else table)
    return 0


def _cmd_pope(a: argparse.Namespace) -> int:
    from lvlm_probe.benchmarks.pope import evaluate_pope, pope_summary

    df = evaluate_pope(a.questions, a.answers, a.labels, parser=a.parser, split=a.split, allow_missing=a.allow_missing)
    out = pope_summary(df)
    if a.json:
        return _emit(a, out, df)
    print(df.to_string(index=False))
    print(f"mean F1 over splits: {out['mean_f1']}")
    return 0


def _cmd_amber(a: argparse.Namespace) -> int:
    from lvlm_probe.benchmarks import amber as am

    payload: dict = {}
    tables = []
    if a.type in ("g", "a"):
        if not (a.association and a.safe_words):
            from lvlm_probe.errors import InputError
            raise InputError("AMBER generative scoring (--type g or a) needs --association relation.json and "
                             "--safe-words safe_words.txt")
        per = am.amber_generative(a.annotations, a.responses, a.association, a.safe_words)
        payload["generative"] = am.amber_generative_summary(per)
        tables.append(str(payload["generative"]))
    if a.type != "g":
        df = am.amber_discriminative(a.annotations, a.responses, "d" if a.type == "a" else a.type)
        for r in df.itertuples(index=False):
            payload[r.dimension] = {"accuracy": r.accuracy, "precision": r.precision, "recall": r.recall, "f1": r.f1}
        tables.append(df.to_string(index=False))
    if a.type == "a":
        payload["amber_score"] = am.amber_score(payload["generative"]["CHAIR"], payload["overall"]["f1"])
    return _emit(a, payload, "\n".join(tables))


def _cmd_chair(a: argparse.Namespace) -> int:
    from lvlm_probe.benchmarks import chair as ch
    from lvlm_probe.errors import InputError

    vocab = ch.load_synonyms(a.synonyms)
    if a.ground_truth:
        gt = ch.load_ground_truth(a.ground_truth, vocab)
        tok = None
    elif a.coco_instances or a.coco_captions:
        tok = ch.nltk_tokenizer()
        gt = ch.ground_truth_from_coco(vocab, tok, a.coco_instances or (), a.coco_captions or ())
    else:
        raise InputError("CHAIR needs ground truth: --ground-truth FILE or --coco-instances/--coco-captions FILES")
    per = ch.chair(ch.load_captions(a.captions, a.image_id_key, a.caption_key), gt, vocab, tok)
    summary = ch.chair_summary(per)
    return _emit(a, summary, "\n".join(f"{k}: {v}" for k, v in summary.items()))


def _cmd_rbench(a: argparse.Namespace) -> int:
    from lvlm_probe.benchmarks.rbench import evaluate_rbench

    df = evaluate_rbench(a.questions, a.answers, a.subsets, by_type=a.web)
    keys = ["n", "tp", "fp", "tn", "fn", "accuracy", "precision", "recall", "f1", "yes_ratio"]
    payload = {"subsets": {str(r["subset"]): {k: r[k] for k in keys} for _, r in df.iterrows()},
               "average": df.attrs["average"]}
    return _emit(a, payload, df)


def _cmd_hallusionbench(a: argparse.Namespace) -> int:
    from lvlm_probe.benchmarks.hallusionbench import evaluate_hallusionbench

    df = evaluate_hallusionbench(a.results, judge_key=a.judge_key, prediction_key=a.prediction_key, parser=a.parser)
    payload = {str(r["split"]): {k: r[k] for k in df.columns if k != "split"} for _, r in df.iterrows()}
    return _emit(a, payload, df)


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` (with one sub-command per benchmark) to the ``lvlm-probe`` sub-command parsers."""
    ev = subparsers.add_parser("eval", help="score benchmark answer files exactly as each benchmark's original code")
    sub = ev.add_subparsers(dest="benchmark", required=True)

    def json_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="print the metrics as one JSON object")

    sp = sub.add_parser("pope", help="POPE: per-split accuracy/precision/recall/F1/yes-ratio and LLaVA's mean F1")
    sp.add_argument("--questions", required=True, help="POPE file with labels, or LLaVA's llava_pope_test.jsonl")
    sp.add_argument("--answers", required=True, help="answers: JSON lines with question_id + text, or POPE 'answer'")
    sp.add_argument("--labels", default=None, help="directory of coco_pope_<split>.json label files (LLaVA layout)")
    sp.add_argument("--parser", choices=PROFILES, default="pope", help="yes/no parser profile (default: pope)")
    sp.add_argument("--split", default=None, help="only this split (LLaVA file), or the split name of a POPE file")
    sp.add_argument("--allow-missing", action="store_true", help="score only answered questions instead of failing")
    json_flag(sp)
    sp.set_defaults(fn=_cmd_pope)

    sp = sub.add_parser("amber", help="AMBER discriminative (and generative) scores as inference.py prints them")
    sp.add_argument("--annotations", required=True, help="data/annotations.json (full file or a subset)")
    sp.add_argument("--responses", required=True, help='JSON list of {"id": int, "response": str}')
    sp.add_argument("--type", choices=["d", "de", "da", "dr", "g", "a"], default="d",
                    help="d: all discriminative; de/da/dr: existence/attribute/relation; g: generative; a: all")
    sp.add_argument("--association", default=None, help="data/relation.json (generative only)")
    sp.add_argument("--safe-words", default=None, help="data/safe_words.txt (generative only)")
    json_flag(sp)
    sp.set_defaults(fn=_cmd_amber)

    sp = sub.add_parser("chair", help="CHAIR_s / CHAIR_i / recall / length of generated captions")
    sp.add_argument("--captions", required=True, help="JSON or JSON lines with image_id and caption")
    sp.add_argument("--synonyms", required=True, help="CHAIR synonyms.txt")
    sp.add_argument("--ground-truth", default=None, help="JSON {image_id: [objects]} or records image_id + objects")
    sp.add_argument("--coco-instances", nargs="+", default=None, help="COCO instances_*2014.json files")
    sp.add_argument("--coco-captions", nargs="+", default=None, help="COCO captions_*2014.json files")
    sp.add_argument("--image-id-key", default="image_id")
    sp.add_argument("--caption-key", default="caption")
    json_flag(sp)
    sp.set_defaults(fn=_cmd_chair)

    sp = sub.add_parser("rbench", help="R-Bench: POPE-style metrics per id subset and their rounded mean")
    sp.add_argument("--questions", required=True)
    sp.add_argument("--answers", required=True, help="JSON lines with question_id and text")
    sp.add_argument("--subsets", nargs="+", default=None, help="id files *_ids_1.json ... *_ids_5.json")
    sp.add_argument("--web", action="store_true", help="web data: score per type (counterfactual, illusion) and total")
    json_flag(sp)
    sp.set_defaults(fn=_cmd_rbench)

    sp = sub.add_parser("hallusionbench", help="HallusionBench aAcc / fAcc / qAcc / easy / hard")
    sp.add_argument("--results", required=True, help="HallusionBench.json records with the model's predictions")
    sp.add_argument("--judge-key", default=None, help="field with judge codes 0/1/2 (e.g. gpt4v_output_gpt_check)")
    sp.add_argument("--prediction-key", default="model_prediction")
    sp.add_argument("--parser", choices=PROFILES, default="vlmevalkit", help="rule-based judge when no --judge-key")
    json_flag(sp)
    sp.set_defaults(fn=_cmd_hallusionbench)
    return ev
