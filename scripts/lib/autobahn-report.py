"""Judges an Autobahn run (kosoku's per-case JSON reports) and, for the full runs, writes its table.

Usage: autobahn-report.py OUT_DIR MODE RUN=EXPECTED...
  OUT_DIR   holds one folder per run (plain, deflate) of kosoku's `*_case_*.json` reports
  MODE      --fast, --compression or full (the last two write docs/autobahn*.md)
  RUN=N     the run's folder and how many cases it must have reported
Exits 1 when a case failed, a run reported fewer or more cases than expected, or nothing ran.
"""
import collections
import glob
import json
import sys

out, mode, expectations = sys.argv[1], sys.argv[2], sys.argv[3:]
results, problems = {}, []
for expectation in expectations:
    run, _, expected = expectation.partition("=")
    reports = glob.glob(f"{out}/{run}/*_case_*.json")
    if len(reports) != int(expected):
        problems.append(f"the {run} run reported {len(reports)} cases, expected {expected}")
    for path in reports:
        report = json.load(open(path))
        case = report.get("id") or path.rsplit("case_", 1)[-1].removesuffix(".json").replace("_", ".")
        results[case] = (report.get("behavior"), report.get("behaviorClose"))
good = {"OK", "NON-STRICT", "INFORMATIONAL"}
failed = sorted(case for case, (behavior, close) in results.items() if behavior not in good or close not in good | {None})
counts = collections.Counter(behavior for behavior, _ in results.values())
for case in failed:
    print(f"autobahn: case {case} failed: {results[case]}", file=sys.stderr)
for problem in problems:
    print(f"autobahn: {problem}", file=sys.stderr)
if not results:
    problems.append("no case ran")
if mode in ("full", "--compression") and not problems:
    key = lambda case: [int(part) for part in case.split(".")]
    lines = ["# Autobahn WebSocket conformance", "",
             "`scripts/autobahn` runs the Autobahn test suite (kosoku, fuzzing-client mode) against",
             "`/v1/diagnostics/echo`, which shares the frame pipeline, limits and close handling of",
             "`/v1/connect`, with `--permessage-deflate`. " + (
                 "This run: the compression sections 12-13 in full (messages up to 128 KiB, with a 256 KiB message limit);"
                 " sections 1-7 and 10 are in autobahn.md." if mode != "full" else
                 "Sections 1-7 and 10, and the compression sections 12-13 for messages up to 4 KiB (cases x.y.1-5 of"
                 " every payload and negotiation; the full 12-13 run is in autobahn-compression.md)."),
             "`scripts/autobahn --compression` runs all 216 cases of 12-13; they are long (1,000 messages",
             "each, up to 128 KiB). Section 9 (messages of 1-16 MiB) is beyond the message limit by",
             "design: the daemon closes such messages with 1009 (the limit is `--max-message-bytes`).", "",
             "| behaviour | cases |", "|---|---|"]
    lines += [f"| {behavior} | {count} |" for behavior, count in sorted(counts.items(), key=lambda kv: str(kv[0]))]
    lines += ["", "Cases not plainly OK:", ""]
    lines += [f"- {case}: {results[case][0]} (close: {results[case][1]})" for case in sorted(results, key=key) if results[case][0] != "OK"]
    open("docs/autobahn.md" if mode == "full" else "docs/autobahn-compression.md", "w").write("\n".join(lines) + "\n")
print(f"autobahn: {len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed or problems else 0)
