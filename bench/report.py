#!/usr/bin/env python3
"""Table and chart for one bench/run.sh result dir: report.py DIR

Reads DIR/results.tsv, prints the table (per workload: each system's IOPS,
MB/s, p50/p99 latency, backend CPU us per I/O; then the ratios 3/1 = prod/fio
and 3/2 = prod/base, also on the null and mem images), and writes
DIR/chart.dat + DIR/chart.gp (gnuplot: IOPS per workload and system -> chart.png).
"""
import csv
import math
import os
import sys

ORDER = ["fio", "base", "prod", "null-base", "null-prod", "mem-base", "mem-prod",
         "prod-nopg", "prod-nozc", "prod-nofix", "prod-wb", "mem-prod-nopg", "mem-prod-nozc"]
# prod with one knob changed: persistent grants, zero-copy, registered
# buffers, cache mode (bench/run.sh variants)
VARIANTS = ["prod-nopg", "prod-nozc", "prod-nofix", "prod-wb", "mem-prod-nopg", "mem-prod-nozc"]


def num(v):
    try:
        return float(v)
    except ValueError:
        return float("nan")


def ratio(a, b):
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


def main():
    out = sys.argv[1]
    rows = list(csv.DictReader(open(os.path.join(out, "results.tsv")), delimiter="\t"))
    wls = []
    by = {}
    for r in rows:
        sysname = r["system"].rstrip("!")
        if r["workload"] not in wls:
            wls.append(r["workload"])
        by[(r["workload"], sysname)] = r
    print("%-16s %-11s %9s %9s %8s %8s %9s" % ("workload", "system", "IOPS", "MB/s",
                                             "p50 us", "p99 us", "CPU us/IO"))
    for wl in wls:
        for s in ORDER:
            r = by.get((wl, s))
            if not r:
                continue
            flag = "" if r["status"] == "ok" and not r["system"].endswith("!") else "  (errors)"
            print("%-16s %-11s %9s %9s %8s %8s %9s%s" % (wl, s, r["iops"], r["mbps"], r["p50_us"],
                                                       r["p99_us"], r["cpu_us_per_io"], flag))
        print()
    print("ratios (3 = prod, 2 = base, 1 = fio): IOPS (MB/s for 1M), p50 difference prod - fio")
    print("%-16s %7s %7s %9s %11s %11s" % ("workload", "3/1", "3/2", "p50 3-1", "null 3/2",
                                          "mem 3/2"))
    for wl in wls:
        key = "mbps" if "1m" in wl else "iops"

        def g(s, k=key):
            r = by.get((wl, s))
            return num(r[k]) if r else float("nan")

        print("%-16s %7.2f %7.2f %9.0f %11.2f %11.2f" % (
            wl, ratio(g("prod"), g("fio")), ratio(g("prod"), g("base")),
            g("prod", "p50_us") - g("fio", "p50_us"),
            ratio(g("null-prod"), g("null-base")), ratio(g("mem-prod"), g("mem-base"))))

    vwls = [wl for wl in wls if any((wl, v) in by for v in VARIANTS)]
    if vwls:
        print()
        print("knobs: prod / variant, IOPS (MB/s for 1M); > 1 means the knob helps")
        print("%-16s %11s %11s %11s %11s %11s %11s" % (
            "workload", "persistent", "zero-copy", "reg. bufs", "direct/wb", "mem persist",
            "mem zc"))
        for wl in vwls:
            key = "mbps" if "1m" in wl else "iops"

            def v(s, k=key):
                r = by.get((wl, s))
                return num(r[k]) if r else float("nan")

            print("%-16s %11.2f %11.2f %11.2f %11.2f %11.2f %11.2f" % (
                wl, ratio(v("prod"), v("prod-nopg")), ratio(v("prod"), v("prod-nozc")),
                ratio(v("prod"), v("prod-nofix")), ratio(v("prod"), v("prod-wb")),
                ratio(v("mem-prod"), v("mem-prod-nopg")),
                ratio(v("mem-prod"), v("mem-prod-nozc"))))

    systems = [s for s in ORDER if any((wl, s) in by for wl in wls)]
    with open(os.path.join(out, "chart.dat"), "w") as f:
        f.write("workload " + " ".join(systems) + "\n")
        for wl in wls:
            f.write(wl + " " + " ".join(
                by[(wl, s)]["iops"] if (wl, s) in by else "0" for s in systems) + "\n")
    with open(os.path.join(out, "chart.gp"), "w") as f:
        f.write('set terminal pngcairo size 1400,700 noenhanced\n')
        f.write('set output "%s"\n' % os.path.join(out, "chart.png"))
        f.write('set title "vdisk bench: IOPS per workload (fio = ceiling, base = 1 queue '
                'event mode, prod = multi-queue + polling)"\n')
        f.write('set style data histograms\nset style histogram clustered gap 1\n')
        f.write('set style fill solid 0.8 border -1\nset boxwidth 0.9\n')
        f.write('set logscale y\nset ylabel "IOPS (log)"\nset grid ytics\n')
        f.write('set xtics rotate by -30\nset key outside right\n')
        cols = ", ".join('"%s" using %d:xtic(1) title columnheader(%d)' % (
            os.path.join(out, "chart.dat"), i + 2, i + 2) for i in range(len(systems)))
        f.write("plot " + cols + "\n")


if __name__ == "__main__":
    main()
