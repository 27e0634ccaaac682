#!/usr/bin/env python3
"""The summary table of tools/gpu_check.sh, from the logs it wrote.

One line per timing goal (public time, raw time, ratio, goal, pass/fail; from
``tools/gpu_timings.py --json``), then the pytest counts, compute-sanitizer's
memcheck and racecheck, and asv's run::

    python tools/gpu_table.py --dir gpu_check_logs
    python tools/gpu_table.py --timings t.json --pytest pytest.log \\
        --sanitizer sanitizer.log --asv asv.log

Every input is optional: a missing log gives a line saying so. The logs are
those gpu_check.sh writes: each step's output followed by ``### exit RC``
(124 or 137: the step's timeout). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

TIMED_OUT = (124, 137)


def _ms(seconds, per):
    return f"{1e3 * seconds / per:.3f}"


def format_timings(rows, header=True):
    """Aligned text table of gpu_timings.py's rows (times per row's unit, ms)."""
    lines = []
    if header:
        lines.append(f"{'goal':<52} {'public ms':>11} {'raw ms':>11} {'ratio':>7} "
                     f"{'goal':>5}  result")
    for r in rows:
        name = r["name"] + (f" (per {r['unit']})" if r.get("unit", "call") != "call" else "")
        if "error" in r:
            lines.append(f"{name:<52} ERROR {r['error'][:120]}")
            continue
        per = r.get("per", 1)
        lines.append(f"{name:<52} {_ms(r['public_s'], per):>11} {_ms(r['raw_s'], per):>11} "
                     f"{r['ratio']:>7.3f} {r['goal']:>5.2f}  "
                     f"{ {True: 'pass', False: 'FAIL'}.get(r['pass'], '-') }")
    return "\n".join(lines)


def _read(path):
    if path is None:
        return None
    p = pathlib.Path(path)
    return p.read_text(errors="replace") if p.is_file() else None


def _exit_codes(text):
    return [int(c) for c in re.findall(r"^### exit (-?\d+)$", text, re.M)]


def _step_note(text):
    """'' or why a step's log holds no result (skipped, timed out, no exit)."""
    if text is None:
        return "no log"
    if re.search(r"^### skipped", text, re.M):
        return re.search(r"^### (skipped.*)$", text, re.M).group(1)
    codes = _exit_codes(text)
    if not codes:
        return "no exit status (stopped?)"
    if codes[-1] in TIMED_OUT:
        return f"timed out (exit {codes[-1]})"
    return ""


def timings_lines(path, log=None):
    text = _read(path)
    note = _step_note(_read(log)) if log is not None and _read(log) is not None else ""
    if text is None:
        return [f"timings: no results ({path})" + (f"; the step: {note}" if note else "")]
    report = json.loads(text)
    if report.get("status") == "no-gpu":
        return [f"timings: no CUDA GPU ({report.get('device')})"]
    lines = [format_timings(report["rows"])] if report["rows"] else ["timings: no rows"]
    if report.get("quick"):
        lines.append("(timings --quick: few samples)")
    if report.get("status") == "errors":
        lines.append("timings: some pairs raised (see timings.log)")
    if note:
        lines.append(f"timings step: {note}; the rows above are those measured before")
    return lines


def pytest_line(path):
    text = _read(path)
    note = _step_note(text)
    if text is None or note.startswith("skipped"):
        return f"tests: {note}"
    counts = {}
    summary = None
    for line in text.splitlines():
        if re.search(r"\d+ (passed|failed|skipped|errors?|deselected)", line) and \
                re.search(r" in [\d.]+s", line):
            summary = line
    if summary is not None:
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|"
                                  r"deselected)", summary):
            counts["error" if what.startswith("error") else what] = int(n)
    codes = _exit_codes(text)
    ok = (summary is not None and counts.get("failed", 0) == 0 and counts.get("error", 0) == 0
          and codes and codes[-1] == 0)
    shown = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "error",
                                                        "skipped"))
    verdict = "pass" if ok else "FAIL"
    return f"tests: {shown} -> {verdict}" + (f" ({note})" if note else "")


def sanitizer_lines(path):
    """One line per compute-sanitizer tool section of the log."""
    text = _read(path)
    if text is None:
        return ["compute-sanitizer: no log"]
    sections = re.split(r"^### compute-sanitizer ", text, flags=re.M)[1:]
    if not sections:
        return [f"compute-sanitizer: {_step_note(text) or 'nothing run'}"]
    lines = []
    for sec in sections:
        tool = sec.split()[0].rstrip(":") if sec.split() else "?"
        codes = _exit_codes(sec)
        errors = re.findall(r"ERROR SUMMARY: (\d+) error", sec)
        hazards = re.findall(r"RACECHECK SUMMARY: (\d+) hazard", sec)
        snippet_ok = "SNIPPET OK" in sec
        if re.search(r"^### skipped", sec, re.M):
            lines.append(f"compute-sanitizer {tool}: skipped")
            continue
        if "Device not supported" in sec or "command not found" in sec:
            lines.append(f"compute-sanitizer {tool}: n/a (the tool does not run here)")
            continue
        found = [f"{errors[-1]} errors"] if errors else []
        found += [f"{hazards[-1]} hazards"] if hazards else []
        counted = errors[-1:] + hazards[-1:]
        ok = bool(snippet_ok and codes and codes[-1] == 0 and counted
                  and all(int(n) == 0 for n in counted))
        why = ""
        if codes and codes[-1] in TIMED_OUT:
            why = " (timed out)"
        elif not snippet_ok:
            why = " (the snippet did not finish)"
        lines.append(f"compute-sanitizer {tool}: {', '.join(found) or 'no summary'} -> "
                     f"{'pass' if ok else 'FAIL'}{why}")
    return lines


def asv_line(path):
    text = _read(path)
    note = _step_note(text)
    if text is None or note.startswith("skipped"):
        return f"asv: {note}"
    # asv prints one line per benchmark ("[ 12.50%] ··· module.Class.name  result"),
    # parameterised ones followed by a table whose cells hold times, "n/a" or "failed"
    failed = len(re.findall(r"\bfailed\b", text))
    skipped = len(re.findall(r"\bn/a\b", text))
    benchmarks = len(re.findall(r"^\[\s*[\d.]+%\] ·+ [\w.]+\.(?:time|track|peakmem|mem)_\w+",
                                text, re.M))
    codes = _exit_codes(text)
    rc = codes[-1] if codes else None
    verdict = "pass" if rc == 0 and failed == 0 else "FAIL"
    return (f"asv --quick: {benchmarks} benchmarks, {failed} 'failed', {skipped} 'n/a' "
            f"(exit {rc}) -> {verdict}" + (f" ({note})" if note else ""))


def device_line(path):
    text = _read(path)
    if text is None:
        return None
    m = re.search(r"^GPU 0: .*$", text, re.M)
    return m.group(0) if m else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", help="gpu_check.sh's log folder (the defaults below are in it)")
    p.add_argument("--timings", help="gpu_timings.py --json output (timings.json)")
    p.add_argument("--timings-log", help="gpu_timings.py's log (timings.log)")
    p.add_argument("--pytest", help="pytest log (pytest.log)")
    p.add_argument("--sanitizer", help="compute-sanitizer log (sanitizer.log)")
    p.add_argument("--asv", help="asv log (asv.log)")
    p.add_argument("--env", help="environment log (env.log)")
    args = p.parse_args(argv)
    d = pathlib.Path(args.dir) if args.dir else None
    for name, default in (("timings", "timings.json"), ("timings_log", "timings.log"),
                          ("pytest", "pytest.log"),
                          ("sanitizer", "sanitizer.log"), ("asv", "asv.log"),
                          ("env", "env.log")):
        if getattr(args, name) is None and d is not None:
            setattr(args, name, str(d / default))

    print("== arrseg GPU check: summary ==")
    device = device_line(args.env)
    if device:
        print(device)
    for line in timings_lines(args.timings, args.timings_log):
        print(line)
    print(pytest_line(args.pytest))
    for line in sanitizer_lines(args.sanitizer):
        print(line)
    print(asv_line(args.asv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
