"""Turns the fault tests' JSON reports (FAULT_REPORT_DIR, one per fault and round) into the
Markdown table of docs/faults.md. Usage: fault-table.py [--load-seconds N] [--rounds N] DIR"""
import argparse
import json
import pathlib
import platform
import subprocess
import time

parser = argparse.ArgumentParser()
parser.add_argument("directory")
parser.add_argument("--load-seconds", default="?")
parser.add_argument("--rounds", default="?")
arguments = parser.parse_args()

totals = {}
for path in sorted(pathlib.Path(arguments.directory).rglob("*.json")):
    entry = json.loads(path.read_text())
    report, commands = entry["report"], entry["report"]["invariants"]["commands"]
    invariants = entry["report"]["invariants"]
    row = totals.setdefault(entry["name"], {"runs": 0, "sent": 0, "acked": 0, "applied": 0, "noOps": 0, "unobserved": 0,
                                            "lost": 0, "rolledBack": 0, "rolledBackAgeMs": 0, "finalNotAcked": 0, "twice": 0, "violations": 0, "fenced": 0, "lostConnections": 0,
                                            "errors": {}})
    row["runs"] += 1
    for key in ("sent", "acked", "applied", "noOps", "unobserved", "lost", "fencedReports"):
        row["fenced" if key == "fencedReports" else key] += commands[key]
    row["twice"] += commands["appliedTwice"]
    row["rolledBack"] += commands.get("rolledBack", 0)
    row["rolledBackAgeMs"] = max(row["rolledBackAgeMs"], commands.get("rolledBackMaxAgeMs", 0))
    row["finalNotAcked"] += commands.get("finalNotAcked", 0)
    row["violations"] += sum(invariants[k] for k in ("epochsNotRising", "staleChanges", "versionViolations",
                                                      "divergentUsers", "overlappingLeases")) + commands["lost"] + commands["appliedTwice"] \
        + commands.get("finalNotAcked", 0)
    row["lostConnections"] += report["disconnections"]
    for code, count in commands["errors"].items():
        row["errors"][code] = row["errors"].get(code, 0) + count

cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.machine())
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print("# Fault runs\n")
print(f"Measured by `scripts/chaos --load-seconds {arguments.load_seconds} --rounds {arguments.rounds}` on "
      f"{time.strftime('%Y-%m-%d')} at commit {commit}: {cpu}, {__import__('os').cpu_count()} cores. Each run: 3 daemons "
      "(debug build), a redis-server and a PostgreSQL of their own, 12 users × 4 reconnecting devices "
      "spread over the daemons, 60 commands/s, holders reporting every 400 ms; the fault happens during "
      "the load, then the invariant checker reads every device's log, Redis and the PostgreSQL snapshots. "
      "See [reliability.md](reliability.md) for what each column means.\n")
print("| fault | runs | sent | acked | applied | no-ops | unobserved | lost | of them rolled back (oldest, ms) | final commands not acked "
      "| applied twice | invariant violations | fenced reports | connections lost | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for name, row in totals.items():
    errors = ", ".join(f"{code} {count}" for code, count in sorted(row["errors"].items())) or "none"
    print(f"| {name} | {row['runs']} | {row['sent']} | {row['acked']} | {row['applied']} | {row['noOps']} | {row['unobserved']} "
          f"| **{row['lost']}** | {row['rolledBack']} ({row['rolledBackAgeMs']}) | {row['finalNotAcked']} | {row['twice']} | **{row['violations']}** | {row['fenced']} | {row['lostConnections']} | {errors} |")
