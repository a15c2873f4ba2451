"""Store scaling: does writing an activation store stay O(n) in the number of items?

What is measured
----------------
A synthetic store (no model) is written through the same ``ActivationStore.append`` that ``lp.capture`` calls:
``--n`` items (default 50,000) in shards of ``--shard-items`` (default 50, so 1,000 flushes), each item with one
``image_mean``-style row (``--dim`` float16 values) and a meta record shaped like capture's (prompt, generated
text and tokens, answer). For every flush the script records its wall time, the bytes it wrote (shard + journal)
and the process's resident memory (RSS).

Printed, each as a ratio measured within this one run:

- ``flush time``: median flush time of the last tenth of the flushes over the first tenth (target <= 1.2: a flush
  costs the same whether the store holds 0 or 50,000 items);
- ``RSS``: resident memory after the last flush over after the first tenth (target <= 1.05);
- ``journal bytes per item``: last tenth over first tenth (1.0 means bytes written grow linearly in n);
- ``open``: the time to open the finished store (read header and journal, index every item; target < 1 s at
  100,000 items, so ``--n 100000`` checks it directly; at 50,000 the time is printed as is);
- the same writes under the former scheme (the whole manifest rewritten at every flush, computed here from the
  same records) as bytes written in all, beside the journal's total: the O(n²) the journal removed.

Run: ``python benchmarks/store_scale.py [--n 50000] [--shard-items 50] [--dim 64]``. ``--quick`` runs 2,000
items for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lvlm_probe.capture.store import ActivationStore


def rss_mib() -> float:
    """Current resident set size of this process (Linux /proc), MiB."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def records(start: int, count: int, dim: int) -> list[dict]:
    """Capture-shaped records: one float16 row per item and a meta like capture's."""
    out = []
    for k in range(start, start + count):
        row = torch.full((1, dim), float(k % 997), dtype=torch.float16)
        meta = {"prompt": f"USER: <image>\nIs there a red circle in the image? (item {k}) ASSISTANT:",
                "n_images": 1, "n_tokens": 61, "generated_text": "yes, a red circle left of a blue square",
                "generated_tokens": [k % 50, 7, 9, 11, 2], "answer": "yes"}
        out.append({"id": f"item-{k:07d}", "tensors": {"llm.resid_post.0|image_mean": row}, "index": {},
                    "meta": meta})
    return out


def write_store(path: Path, n: int, shard_items: int, dim: int) -> list[dict]:
    """Append n items in shards; one measurement per flush."""
    store = ActivationStore.open_for_capture(
        path, model={"name": "synthetic-store-scale", "config_hash": "none"},
        settings={"sites": ["llm.resid_post.0"], "select": ["image_mean"]}, overwrite=True)
    journal = path / "index.jsonl"
    stats = []
    for start in range(0, n, shard_items):
        recs = records(start, min(shard_items, n - start), dim)
        before = journal.stat().st_size
        t0 = time.perf_counter()
        store.append(recs)
        dt = time.perf_counter() - t0
        stats.append({"items": start + len(recs), "seconds": dt, "journal_bytes": journal.stat().st_size - before,
                      "rss": rss_mib()})
    return stats


def old_scheme_bytes(path: Path) -> int:
    """Bytes the former scheme (the whole manifest, indented JSON, rewritten at every flush) would have written
    for the same flushes: the sum over flushes of the header plus every shard and item entry listed so far."""
    m = ActivationStore(path).manifest
    header = len(json.dumps({k: m[k] for k in ("format", "version", "created", "model", "settings", "library",
                                               "keys")}, indent=1))
    total = listed = 0
    for sh in m["shards"]:
        listed += len(json.dumps(sh, indent=1)) + sum(len(json.dumps({i: m["items"][i]}, indent=1))
                                                       for i in sh["items"])
        total += header + listed
    return total


def decile_ratio(values: list[float]) -> float:
    k = max(1, len(values) // 10)
    return statistics.median(values[-k:]) / statistics.median(values[:k])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--shard-items", type=int, default=50)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="2,000 items (a smoke test)")
    a = ap.parse_args(argv)
    n = 2_000 if a.quick else a.n
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        t0 = time.perf_counter()
        stats = write_store(path, n, a.shard_items, a.dim)
        total = time.perf_counter() - t0
        k = max(1, len(stats) // 10)
        t_open = time.perf_counter()
        opened = ActivationStore(path)
        t_open = time.perf_counter() - t_open
        assert len(opened) == n
        journal = (path / "index.jsonl").stat().st_size
        old = old_scheme_bytes(path)
    flush = decile_ratio([s["seconds"] for s in stats])
    rss = stats[-1]["rss"] / stats[k - 1]["rss"]
    per_item = decile_ratio([s["journal_bytes"] / a.shard_items for s in stats])
    print(f"store_scale: {n} items, {len(stats)} flushes of {a.shard_items}, write {total:.1f} s "
          f"(median flush {statistics.median(s['seconds'] for s in stats) * 1e3:.2f} ms)")
    print(f"  flush time, last/first tenth      {flush:6.3f}   (target <= 1.20)")
    print(f"  RSS, end/first tenth              {rss:6.3f}   ({stats[k - 1]['rss']:.0f} -> {stats[-1]['rss']:.0f} MiB; "
          "target <= 1.05)")
    print(f"  journal bytes per item, last/first {per_item:5.3f}   (1.00 = linear)")
    print(f"  open the finished store           {t_open:6.3f} s ({n} items; target < 1 s at 100,000)")
    print(f"  bytes written for the index: journal {journal / 2**20:.1f} MiB vs manifest rewritten per flush (estimated) "
          f"{old / 2**20:.1f} MiB (x{old / journal:.0f})")
    ok = flush <= 1.2 and rss <= 1.05 and (n < 100_000 or t_open < 1.0)
    print(f"TARGET {'met' if ok else 'NOT met'}: flush x{flush:.2f}, RSS x{rss:.3f}"
          + (f", open {t_open:.2f} s" if n >= 100_000 else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
