#!/usr/bin/env python3
"""Put one benchmark's summary table into bench/RESULTS.md.

    record.py RESULTS.md NAME TABLE [DESCRIPTION]

RESULTS.md holds one section per benchmark (datapath, formats, nbd),
between <!-- NAME begin --> and <!-- NAME end --> markers; this replaces
that section (or appends it) with TABLE's text, the date, the host and
DESCRIPTION. The raw outputs stay in the untracked bench/out/.
"""
import datetime
import os
import socket
import sys


def section(name, table, desc):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ""
    try:
        with open("/proc/loadavg") as f:
            load = ", load " + " ".join(f.read().split()[:3])
    except OSError:
        pass
    lines = ["<!-- %s begin -->" % name, "## %s" % name, ""]
    lines.append("%s, %s (%d cores%s)%s" % (now, socket.gethostname(), os.cpu_count() or 0,
                                          load, ": " + desc if desc else ""))
    lines += ["", "```", table.rstrip("\n"), "```", "<!-- %s end -->" % name]
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    path, name, table_path = sys.argv[1:4]
    desc = sys.argv[4] if len(sys.argv) == 5 else ""
    with open(table_path) as f:
        new = section(name, f.read(), desc)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmark results\n\nOne table per benchmark, written by its script (bench/README.md).\n\n"
    begin, end = "<!-- %s begin -->" % name, "<!-- %s end -->" % name
    i, j = text.find(begin), text.find(end)
    if i >= 0 and j > i:
        text = text[:i] + new + text[j + len(end) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + new
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
