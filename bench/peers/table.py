"""bench/peers/table.py - the one table of make bench-peers, from the RESULT and
PEER-SKIP lines of storage.py and tcp.py (read from the files given, or stdin).

Rows: system and operation. GB/s: median of the repetitions [min - best];
CPU s/GB: median, both processes for PD transfers, this process (all its
threads) for storage; kvx/this: kvx's median GB/s over this row's, same
operation, same run (> 1: kvx faster). Latency rows give milliseconds."""
import json
import sys


def main():
    lines = []
    for f in sys.argv[1:] or ["-"]:
        lines += (sys.stdin if f == "-" else open(f)).read().splitlines()
    rows = [json.loads(l[7:]) for l in lines if l.startswith("RESULT ")]
    skips = [l[10:] for l in lines if l.startswith("PEER-SKIP ")]
    errors = [l for l in lines if l.startswith("ERROR ")]
    kvx = {}
    for r in rows:
        if r["system"].startswith("kvx"):
            kvx[(r["group"], r["op"])] = r
    print(f"{'system':<26} {'operation':<18} {'GB/s median [min-best]':<24} "
          f"{'CPU s/GB':>8} {'kvx/this':>8}")
    print("-" * 88)
    for r in rows:
        k = kvx.get((r["group"], r["op"]))
        if "ms_median" in r:
            ratio = f"{r['ms_median'] / k['ms_median']:.2f}" if k else "-"
            print(f"{r['system']:<26} {r['op']:<18} "
                  f"{'%.2f ms [best %.2f]' % (r['ms_median'], r['ms_best']):<24} {'':>8} "
                  f"{ratio:>8}")
            continue
        ratio = f"{k['gbs_median'] / r['gbs_median']:.2f}" if k else "-"
        rng = f"{r['gbs_median']:.2f} [{r['gbs_min']:.2f}-{r['gbs_best']:.2f}]"
        print(f"{r['system']:<26} {r['op']:<18} {rng:<24} {r['cpu_s_per_gb']:>8.3f} {ratio:>8}")
    print("(latency rows: kvx/this = this row's ms over kvx's ms: > 1 means kvx is faster)")
    for s in skips:
        print(f"not run: {s}")
    for e in errors:
        print(e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
