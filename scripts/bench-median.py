#!/usr/bin/env python3
"""Median per row of several `make bench` runs (each run's target/bench/report.json, copied
aside), as Markdown: the plain rows with their ceilings and goals, then the Citus rows beside
the same rows on plain PostgreSQL. Usage: scripts/bench-median.py run1.json run2.json run3.json"""
import json, sys, statistics, os
runs = [json.load(open(p)) for p in sys.argv[1:]]
names = [os.path.basename(p).removesuffix(".json") for p in sys.argv[1:]]
keys = [r["key"] for r in runs[0]["table"]]
fmt = lambda v: "—" if v is None else (f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}")
med = lambda xs: statistics.median(xs) if xs else None
def rows(k): return [next((r for r in run["table"] if r["key"] == k), None) for run in runs]
print("| row | " + " | ".join(names) + " | median | ceiling (median) | ratio | goal | met |")
print("|---|" + "---|" * (len(runs) + 5))
for k in keys:
    if k.startswith("citus_"): continue
    rs = rows(k); r0 = rs[0]
    vals = [r["value"] for r in rs if r]
    ceil = med([r["ceiling"] for r in rs if r and r["ceiling"] is not None])
    ratio = med([r["ratio"] for r in rs if r and r["ratio"] is not None])
    mets = [r["goal_met"] for r in rs if r and r["goal_met"] is not None]
    met = "" if not mets else ("yes" if sum(mets) * 2 > len(mets) else "no")
    rt = "" if ratio is None else f"{ratio:.0%}"
    print(f"| {r0['figure'].strip()} ({r0['unit']}) | " + " | ".join(fmt(v) for v in vals)
          + f" | **{fmt(med(vals))}** | {fmt(ceil) if ceil else ''} | {rt} | {r0['goal'] or ''} | {met} |")
print()
print("| row on Citus | " + " | ".join(names) + " | median | plain PostgreSQL (median) | Citus ÷ plain |")
print("|---|" + "---|" * (len(runs) + 3))
for k in keys:
    if not k.startswith("citus_"): continue
    rs = rows(k); r0 = rs[0]
    vals = [r["value"] for r in rs if r]
    plain = med([r["ceiling"] for r in rs if r and r["ceiling"] is not None])
    ratio = med([r["ratio"] for r in rs if r and r["ratio"] is not None])
    rt = "" if ratio is None else (f"{ratio:.0%}" if r0["unit"] != "ms" else f"{ratio:,.0f}×")
    print(f"| {r0['figure'].removeprefix('on Citus: ')} ({r0['unit']}) | " + " | ".join(fmt(v) for v in vals)
          + f" | **{fmt(med(vals))}** | {fmt(plain)} | {rt} |")
