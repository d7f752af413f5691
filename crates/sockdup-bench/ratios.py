#!/usr/bin/env python3
"""Print sockdup / raw-twin ratios from the `handoff` and `upgrade` benchmarks' criterion estimates.

Reads <criterion dir>/<group>/<bench>/new/estimates.json, where the criterion dir is
$CRITERION_HOME if set, else $CARGO_TARGET_DIR/criterion, else ./target/criterion (and, failing
that, the workspace's target/criterion next to this script). A directory given as the first
argument is taken as the target dir instead.

  single:  sockdup time / raw time           goal <= 1.3
  batch64: sockdup fds/s / raw fds/s         goal >= 0.6
  chain3:  layered time / base time          goal <= 1.05
  floors:  the floor twins (the contract's least work: identify each socket, pass it, send its
           record separately; see the benchmark's docs) against raw, and sockdup against them:
           what any implementation of the contract can reach, measured in the same run
           (Socket::duplicate + Socket::from_info through a 3-layer chain vs. the base entry)
  takeover/N (upgrade, N = 1, 64, 1000): sockdup time / raw time, median and mean; N = 1000:
           goal <= 1 ms (Upgrade::take_over of N listeners vs. N fds by bare SCM_RIGHTS)

Each benchmark's section is printed when its estimates are there (run
`cargo bench -p sockdup-bench --bench handoff` and/or `--bench upgrade`); `--bench handoff` or
`--bench upgrade` asks for that one only.

The ratios depend on where the benchmark ran its processes (SOCKDUP_BENCH_PIN, printed by the
benchmark as it starts): `same` (default) measures CPU work, `split` cross-CPU wake-up latency.

Exit status: 0 when every estimate was found (1 with --strict and any MISS), 2 if one is missing
(a benchmark asked for, or any part of one found, or no benchmark at all).
Python 3 standard library only.
"""

import json
import os
import sys
from pathlib import Path


def criterion_dir(args):
    if args:
        return Path(args[0]) / "criterion"
    if os.environ.get("CRITERION_HOME"):
        return Path(os.environ["CRITERION_HOME"])
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]) / "criterion"
    local = Path("target") / "criterion"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parent.parent.parent / "target" / "criterion"


# The criterion groups and benchmarks each benchmark target writes.
HANDOFF = [("single", "sockdup"), ("single", "raw"), ("batch64", "sockdup"), ("batch64", "raw"),
           ("chain3", "layered"), ("chain3", "base")]
TAKEOVER_COUNTS = (1, 64, 1000)
UPGRADE = [("takeover", f"{side}/{n}") for n in TAKEOVER_COUNTS for side in ("sockdup", "raw")]


def present(root, benches):
    """Whether any estimate of `benches` ((group, bench) pairs) exists."""
    return any((root / g / b / "new" / "estimates.json").is_file() for g, b in benches)


def load(root, group, bench, stat="mean", target="handoff"):
    """Time per iteration (ns) by `stat` (mean or median), its 95% interval, and the elements
    per iteration."""
    new = root / group / bench / "new"
    path = new / "estimates.json"
    try:
        with open(path) as f:
            mean = json.load(f)[stat]
    except FileNotFoundError:
        print(
            f"ratios.py: {path} not found: run "
            f"`cargo bench -p sockdup-bench --bench {target}` first (with the same CARGO_TARGET_DIR)",
            file=sys.stderr,
        )
        sys.exit(2)
    elements = 1
    try:
        with open(new / "benchmark.json") as f:
            throughput = json.load(f).get("throughput") or {}
        elements = throughput.get("Elements", elements)
    except FileNotFoundError:
        pass
    ci = mean["confidence_interval"]
    return mean["point_estimate"], ci["lower_bound"], ci["upper_bound"], elements


def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3f} {unit}"
    return f"{ns:.1f} ns"


def fmt_rate(per_s):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if per_s >= scale:
            return f"{per_s / scale:.3f} {unit}fds/s"
    return f"{per_s:.1f} fds/s"


def takeover(root):
    """The `upgrade` benchmark's takeover/N pairs: no goal, the ratios are reported."""
    print("takeover (new process asks -> holds the N listeners: Upgrade::take_over vs. bare SCM_RIGHTS;")
    print("          median time, mean in brackets; abort / close untimed)")
    for n in TAKEOVER_COUNTS:
        s_med = load(root, "takeover", f"sockdup/{n}", "median", "upgrade")[0]
        r_med = load(root, "takeover", f"raw/{n}", "median", "upgrade")[0]
        s_mean = load(root, "takeover", f"sockdup/{n}", "mean", "upgrade")[0]
        r_mean = load(root, "takeover", f"raw/{n}", "mean", "upgrade")[0]
        print(f"  N={n:<5} sockdup {fmt_time(s_med):>11} [{fmt_time(s_mean)}]"
              f"  raw {fmt_time(r_med):>11} [{fmt_time(r_mean)}]"
              f"  sockdup/raw = {s_med / r_med:.1f} [{s_mean / r_mean:.1f}]"
              f"  ({fmt_time(s_med / n)} vs. {fmt_time(r_med / n)} per listener)"
              + (f"  goal <= 1 ms  {'PASS' if s_med <= 1e6 else 'MISS'}" if n == 1000 else "  report"))


def main(argv):
    strict = "--strict" in argv
    args = [a for a in argv if a != "--strict"]
    only = None
    if "--bench" in args:
        i = args.index("--bench")
        only = args[i + 1] if i + 1 < len(args) else ""
        del args[i:i + 2]
        if only not in ("handoff", "upgrade"):
            print("ratios.py: --bench takes handoff or upgrade", file=sys.stderr)
            return 2
    root = criterion_dir(args)
    print(f"criterion estimates from {root}")
    do_handoff = only == "handoff" or (only is None and present(root, HANDOFF))
    do_upgrade = only == "upgrade" or (only is None and present(root, UPGRADE))
    if not (do_handoff or do_upgrade):
        do_handoff = True  # nothing found: say what to run, as before
    missed = False
    if do_handoff:
        missed |= handoff(root)
    if do_upgrade:
        takeover(root)
    return 1 if strict and missed else 0


def handoff(root):
    """The `handoff` benchmark's ratios against their goals; true if any missed its goal."""
    missed = False
    s_mean, s_lo, s_hi, _ = load(root, "single", "sockdup")
    r_mean, r_lo, r_hi, _ = load(root, "single", "raw")
    ratio = s_mean / r_mean
    ok = ratio <= 1.3
    missed |= not ok
    print("single   (one duplicate + redeem vs. one SCM_RIGHTS round trip; mean time, 95% CI)")
    print(f"  sockdup  {fmt_time(s_mean):>12}  [{fmt_time(s_lo)} .. {fmt_time(s_hi)}]")
    print(f"  raw      {fmt_time(r_mean):>12}  [{fmt_time(r_lo)} .. {fmt_time(r_hi)}]")
    print(f"  ratio    sockdup/raw time = {ratio:.2f}  (goal <= 1.3)  {'PASS' if ok else 'MISS'}")
    floors(root, "single", s_mean, r_mean, rate=False)

    s_mean, s_lo, s_hi, s_n = load(root, "batch64", "sockdup")
    r_mean, r_lo, r_hi, r_n = load(root, "batch64", "raw")
    s_rate, r_rate = s_n / s_mean * 1e9, r_n / r_mean * 1e9
    ratio = s_rate / r_rate
    ok = ratio >= 0.6
    missed |= not ok
    print(f"batch64  ({s_n} fds per iteration; throughput from the mean time)")
    print(f"  sockdup  {fmt_rate(s_rate):>16}  (mean {fmt_time(s_mean)} per batch)")
    print(f"  raw      {fmt_rate(r_rate):>16}  (mean {fmt_time(r_mean)} per batch)")
    print(f"  ratio    sockdup/raw fds/s = {ratio:.2f}  (goal >= 0.6)  {'PASS' if ok else 'MISS'}")
    floors(root, "batch64", s_mean, r_mean, rate=True)

    l_mean, l_lo, l_hi, _ = load(root, "chain3", "layered")
    b_mean, b_lo, b_hi, _ = load(root, "chain3", "base")
    ratio = l_mean / b_mean
    ok = ratio <= 1.05
    missed |= not ok
    print("chain3   (SPI duplicate + redeem: 3-layer chain vs. its base entry; mean time, 95% CI)")
    print(f"  layered  {fmt_time(l_mean):>12}  [{fmt_time(l_lo)} .. {fmt_time(l_hi)}]")
    print(f"  base     {fmt_time(b_mean):>12}  [{fmt_time(b_lo)} .. {fmt_time(b_hi)}]")
    print(f"  ratio    layered/base time = {ratio:.3f}  (goal <= 1.05)  {'PASS' if ok else 'MISS'}")
    return missed


def floors(root, group, s_mean, r_mean, rate):
    """The floor twins of `group`, if measured: each against raw (same guarantee: acknowledged,
    or one-way against one-way), and sockdup against the acknowledged floor."""
    def have(bench):
        return (root / group / bench / "new" / "estimates.json").is_file()
    if not have("floor"):
        return
    show = (lambda a, b: f"{b / a:.2f} fds/s") if rate else (lambda a, b: f"{a / b:.2f} time")
    f_mean = load(root, group, "floor")[0]
    print(f"  floor    {fmt_time(f_mean):>12}  floor/raw = {show(f_mean, r_mean)};"
          f"  sockdup/floor = {show(s_mean, f_mean)}")
    if have("floor-one-way") and have("raw-one-way"):
        f1 = load(root, group, "floor-one-way")[0]
        r1 = load(root, group, "raw-one-way")[0]
        print(f"  one-way  floor {fmt_time(f1)}  raw {fmt_time(r1)}  floor/raw = {show(f1, r1)}")
    if have("floor-known"):
        fk = load(root, group, "floor-known")[0]
        print(f"  known    floor without identifying the sockets {fmt_time(fk)}  /raw = {show(fk, r_mean)}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
