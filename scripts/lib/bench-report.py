#!/usr/bin/env python3
"""Makes docs/benchmarks.md's measured part and its plots from docs/bench/results.json.
The prose around it (targets, analysis) lives in docs/bench/analysis.md and is included as is."""
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent.parent
results = json.loads((root / "docs/bench/results.json").read_text())
lines = []
add = lines.append


def pct(p):
    return f"{p['p50']} / {p['p90']} / {p['p99']} / {p['p999']} / {p['max']}"


machine = results.get("machine", {})
add("# Benchmarks")
add("")
add("Measured by `scripts/bench` (see the scenarios in `scripts/lib/bench.py`); this file is generated from")
add("[`bench/results.json`](bench/results.json) by `scripts/lib/bench-report.py`, the analysis is")
add("[`bench/analysis.md`](bench/analysis.md), included at the end.")
add("")
add(f"Machine: {machine.get('cpus')} cores ({machine.get('cpu_model')}), {machine.get('memory_gb')} GiB, Linux "
    f"{machine.get('kernel')}; {machine.get('build')} build; the daemon, redis-server, the load generator (device-sim "
    "swarm processes) and nginx share the machine. Redis engine, one node, no PostgreSQL.")
add("")
add("Command: `scripts/bench` (all scenarios) or `scripts/bench NAME…`. Latencies in ms: p50 / p90 / p99 / p99.9 / max.")
add("")

if "connections" in results:
    c = results["connections"]["result"]
    add("## Idle connections and memory")
    add("")
    add(f"Measured {results['connections']['measured_at']}. Baseline RSS {c['baseline_rss_kb']} KB; idle CPU with all "
        f"connections open: {c['idle_cpu_percent_of_one_core']} % of one core (heartbeat pings every 15 s).")
    add("")
    add("| connections | daemon RSS (KB) | RSS growth per connection (bytes) |")
    add("|---|---|---|")
    for p in c["points"]:
        add(f"| {p['connections']} | {p['rss_kb']} | {p['per_connection_bytes']} |")
    add("")
    add("![memory per connection](bench/memory-per-connection.png)")
    add("")

if "throughput" in results:
    add("## Throughput (four devices per user)")
    add("")
    add(f"Measured {results['throughput']['measured_at']}.")
    add("")
    add("| offered/s | answered/s | state deliveries/s | command→ack | command→last device | daemon CPU % | errors |")
    add("|---|---|---|---|---|---|---|")
    for r in results["throughput"]["result"]:
        add(f"| {r['offered_rate']} | {r['throughput_per_second']} | {r['deliveries_per_second']} | {pct(r['commandToAck'])} | "
            f"{pct(r['commandToLastDevice'])} | {r['daemon_cpu_percent']} | {r['errors'] or 'none'} |")
    add("")

for name, title in (("latency", "Latency at 5,000 commands/s"), ("transfer", "Transfers")):
    if name in results:
        r = results[name]["result"]
        add(f"## {title}")
        add("")
        add(f"Measured {results[name]['measured_at']}: offered {r['offered_rate']}/s, answered {r['throughput_per_second']}/s, "
            f"daemon CPU {r['daemon_cpu_percent']} %, errors {r['errors'] or 'none'}, invariant violations {r['invariant_violations']}.")
        add("")
        add(f"- command → ack: {pct(r['commandToAck'])}")
        add(f"- command → last device's state: {pct(r['commandToLastDevice'])}")
        if r.get("transferGap"):
            add(f"- the audible gap of a transfer (the old device hears `lease_revoked` and stops → the new one hears "
                f"`lease_granted` and starts; 0 when it started first): {pct(r['transferGap'])} (n={r['transferGap']['count']})")
        add("")

if "reconnect" in results:
    r = results["reconnect"]["result"]
    add("## Reconnect storm")
    add("")
    add(f"Measured {results['reconnect']['measured_at']}: {r['welcomed']} of {r['devices']} devices upgraded, said hello and "
        f"got their welcome in {r['connect_seconds']} s: **{r['upgrades_per_second']} upgrades+hellos per second**.")
    add("")

if "reference" in results and "latency" in results:
    ref = results["reference"]["result"]
    ours = results["latency"]["result"]
    add("## Side by side with nginx + nchan")
    add("")
    if "skipped" in ref:
        add(f"Skipped: {ref['skipped']}.")
    else:
        add(f"Measured {results['reference']['measured_at']}: the same swarm client, the same number of subscribers "
            f"(four per channel/user), {ref['message_bytes']}-byte messages at {ref['offered_rate']}/s, Redis behind both.")
        add("")
        add("| | offered/s | delivered/s | publish or command → last subscriber | server CPU % | server RSS (KB) |")
        add("|---|---|---|---|---|---|")
        for run_ours, run_ref in ((ours.get("at_1000"), ref.get("at_1000")), (ours, ref)):
            if not run_ours or not run_ref:
                continue
            add(f"| playback-syncd (reducer, Redis commit, fan-out) | {run_ours['offered_rate']} | {run_ours['throughput_per_second']} | {pct(run_ours['commandToLastDevice'])} | {run_ours['daemon_cpu_percent']} | {run_ours['daemon_rss_kb']} |")
            add(f"| nginx + nchan (publish, fan-out) | {run_ref['offered_rate']} | {run_ref['throughput_per_second']} | {pct(run_ref['commandToLastDevice'])} | {run_ref['daemon_cpu_percent']} | {run_ref['daemon_rss_kb']} |")
        add("")
        for run_ours, run_ref in ((ours.get("at_1000"), ref.get("at_1000")), (ours, ref)):
            if not run_ours or not run_ref:
                continue
            ratio = run_ours["commandToLastDevice"]["p99"] / max(run_ref["commandToLastDevice"]["p99"], 0.001)
            add(f"- at {run_ours['offered_rate']}/s: p99 ratio (playback-syncd / nchan) **{ratio:.2f}**, p50 ratio "
                f"**{run_ours['commandToLastDevice']['p50'] / max(run_ref['commandToLastDevice']['p50'], 0.001):.2f}**, "
                f"CPU ratio **{run_ours['daemon_cpu_percent'] / max(run_ref['daemon_cpu_percent'], 0.1):.2f}**")
        add("")
        add("![latency percentiles](bench/latency-percentiles.png)")
    add("")

def reached(run):
    """Timed commands whose state reached all four devices, of those sent (runs before the sum was
    kept have only the worst generator's count)."""
    if "complete_deliveries" in run:
        return f"{run['complete_deliveries']} of {run['commands_sent']}"
    return f"{run['commandToLastDevice']['count']} (one of {run['processes']} generators)"


if "versus" in results:
    v = results["versus"]["result"]
    add("## Side by side in one run: the command path against nginx + nchan")
    add("")
    add(f"Measured {results['versus']['measured_at']}: {v['users']} users x {v['devices_per_user']} devices, the same "
        "light client against both (each message scanned for its id, not decoded), `seek` commands against the "
        "daemon, 620-byte publishes against nchan, Redis behind both, one after the other in one run.")
    add("")
    add("| offered/s | server | answered/s | → last device p50 / p90 / p99 / p99.9 / max (ms) | reached every device | server CPU % | CPU ms per command | p99 ratio |")
    add("|---|---|---|---|---|---|---|---|")
    for row in v["rows"]:
        ours, theirs = row["daemon"], row["nchan"]
        if "skipped" in theirs:
            continue
        ratio = ours["commandToLastDevice"]["p99"] / max(theirs["commandToLastDevice"]["p99"], 0.001)
        sides = [("playback-syncd", ours, ratio), ("nginx + nchan", theirs, None)]
        if "baseline" in row:
            base = row["baseline"]
            sides.append((f"baseline `{pathlib.Path(base['binary']).name}`", base,
                          base["commandToLastDevice"]["p99"] / max(theirs["commandToLastDevice"]["p99"], 0.001)))
        for name, run, p99_ratio in sides:
            per = run["daemon_cpu_percent"] * 10 / max(run["throughput_per_second"], 1)
            add(f"| {row['offered_rate']} | {name} | {run['throughput_per_second']} | {pct(run['commandToLastDevice'])} | "
                f"{reached(run)} | {run['daemon_cpu_percent']} | {per:.3f} | "
                f"{'**%.2f×**' % p99_ratio if p99_ratio is not None else ''} |")
    rc = v.get("redis_commands")
    if rc:
        add("")
        add(f"Redis commands (MONITOR over a whole swarm run of {rc['seconds']} s of commands at {rc['offered_rate']}/s, "
            f"{rc['users']} users x 4 devices: connecting, the commands, upkeep and the closing of every connection; "
            f"what Lua runs inside Redis is not counted): **{rc.get('command_path_per_command', '?')} per command on the "
            f"command path**, {rc['per_command']} per command in all ({rc['redis_commands']} for {rc['commands_answered']} "
            "answered commands). By purpose: "
            + ", ".join(f"{k} {n}" for k, n in sorted(rc.get("by_purpose", {}).items(), key=lambda kv: -kv[1]))
            + "; by name: " + ", ".join(f"{k} {n}" for k, n in sorted(rc["by_name"].items(), key=lambda kv: -kv[1])) + ".")
    add("")

if "cluster" in results:
    c = results["cluster"]["result"]
    add("## Redis Cluster: 1 master against 3")
    add("")
    add(f"Measured {results['cluster']['measured_at']} (`scripts/bench cluster`): one daemon, {c['users']} users x "
        f"{c['devices_per_user']} devices, the default command mix, on a Redis Cluster of one master and then of three "
        "(no replicas), everything on this machine's two cores. See docs/redis-cluster.md for what it shows.")
    add("")
    add("| masters | offered/s | answered/s | → last device p50 / p90 / p99 / p99.9 / max (ms) | reached every device | daemon CPU % | CPU % of each master |")
    add("|---|---|---|---|---|---|---|")
    for run in c["runs"]:
        add(f"| {run['masters']} | {run['offered_rate']} | {run['throughput_per_second']} | {pct(run['commandToLastDevice'])} | "
            f"{reached(run)} | {run['daemon_cpu_percent']} | {' / '.join(str(x) for x in run.get('redis_cpu_percent', []))} |")
    if c.get("light_runs"):
        add("")
        add(f"The command path alone, as in the side-by-side with nchan: {c['light_users']} users x 4 devices, the light "
            "client, `seek` commands.")
        add("")
        add("| masters | offered/s | answered/s | → last device p50 / p90 / p99 / p99.9 / max (ms) | reached every device | daemon CPU % | CPU % of each master |")
        add("|---|---|---|---|---|---|---|")
        for run in c["light_runs"]:
            add(f"| {run['masters']} | {run['offered_rate']} | {run['throughput_per_second']} | {pct(run['commandToLastDevice'])} | "
                f"{reached(run)} | {run['daemon_cpu_percent']} | {' / '.join(str(x) for x in run.get('redis_cpu_percent', []))} |")
    add("")

if "contention" in results:
    c = results["contention"]["result"]
    add("## One user raced from three daemons")
    add("")
    add(f"Measured {results['contention']['measured_at']} (`scripts/bench contention`): {c['devices']} devices of one "
        f"user spread over {c['daemons']} daemons on a Redis Cluster of {c['masters']} masters, {c['commands_sent']} `play` "
        "commands in two seconds, each on one of the user's devices (each moves the lease).")
    add("")
    add(f"- refused for contention (`unavailable`): **{c['unavailable']}** of {c['commands_answered']} answered; errors {c['errors'] or 'none'}")
    add(f"- command → ack (ms): {pct(c['commandToAck'])}")
    add(f"- command → last device (ms): {pct(c['commandToLastDevice'])}")
    add(f"- invariant violations: {c['invariant_violations']}")
    add("")

if "tracing" in results:
    t = results["tracing"]["result"]
    add("## Traces: CPU per command with tracing off and on")
    add("")
    add(f"Measured {results['tracing']['measured_at']} (`scripts/bench tracing`): the versus load ({t['users']} users x 4 devices, "
        f"light client, `seek` commands) at {t['offered_rate']}/s, alternating tracing off, on keeping every trace, and on keeping "
        "1 in 100 (OTLP/protobuf to a local sink), each run on a fresh daemon.")
    add("")
    add("| tracing | daemon CPU % | CPU ms per command | → last device p50 / p90 / p99 / p99.9 / max (ms) | OTLP posts |")
    add("|---|---|---|---|---|")
    for run in t["rows"]:
        ratio = run.get("sample_ratio")
        label = "off" if ratio is None else f"on, ratio {ratio}"
        add(f"| {label} | {run['daemon_cpu_percent']} | {run['cpu_ms_per_command']} | {pct(run['commandToLastDevice'])} | {run['otlp_posts']} |")
    add("")
    rises = ", ".join(f"ratio {ratio}: **{rise:+} %**" for ratio, rise in t["rise_percent"].items())
    add(f"CPU per command against tracing off ({t['cpu_ms_per_command_off']} ms): {rises}.")
    add("")

if "idempotency" in results:
    r = results["idempotency"]["result"]
    add("## Remembered answers: Redis bytes per command")
    add("")
    add(f"Measured {results['idempotency']['measured_at']} (`scripts/bench idempotency`): {r['users']} users x 4 devices, "
        f"`seek` commands with ids at {r['offered_rate']}/s for {r['seconds']} s into a Redis database of their own; then every "
        "key of the remembered answers measured with `MEMORY USAGE`, and `used_memory` against the empty database (less the "
        "users' other keys).")
    add("")
    add("| build | commands answered | answers remembered | keys | bytes each (MEMORY USAGE) | bytes each (used_memory) | encodings |")
    add("|---|---|---|---|---|---|---|")
    for side, label in (("baseline", "before (`BENCH_BASELINE_DAEMON`)"), ("daemon", "this build")):
        if side in r:
            x = r[side]
            add(f"| {label} | {x['commands_answered']:,} | {x['remembered']:,} | {x['keys']:,} | **{x['bytes_per_remembered']}** | "
                f"{x['used_memory_per_remembered']} | {', '.join(f'{k} {v}' for k, v in sorted(x['encodings'].items()))} |")
    add("")

if "callgrind" in results:
    c = results["callgrind"]["result"]
    add("## Instructions per command (valgrind --tool=callgrind)")
    add("")
    add(f"Measured {results['callgrind']['measured_at']} (`scripts/bench callgrind`, `BENCH_BASELINE_DAEMON` for the "
        f"other build): the daemon on the local Redis under callgrind, {c['users']} users x {c['devices_per_user']} devices, "
        f"`seek` commands for {c['seconds']} s at two rates; instructions per command = the difference in instructions over "
        "the difference in commands (start-up, connections and idle ticks cancel out). A count, not a time: it repeats "
        "whatever else the machine does.")
    add("")
    add("| build | commands (low / high rate) | instructions (low / high rate) | instructions per command |")
    add("|---|---|---|---|")
    for label, key in (("before (`BENCH_BASELINE_DAEMON`)", "baseline"), ("this build", "daemon")):
        if key in c:
            runs = c[key]["runs"]
            add(f"| {label} | {runs[0]['commands_answered']:,} / {runs[1]['commands_answered']:,} | "
                f"{runs[0]['instructions']:,} / {runs[1]['instructions']:,} | **{c[key]['instructions_per_command']:,}** |")
    add("")

analysis = root / "docs/bench/analysis.md"
if analysis.exists():
    add(analysis.read_text().rstrip())
    add("")
add("## Raw results")
add("")
add("```json")
add(json.dumps(results, indent=1, sort_keys=True))
add("```")
(root / "docs/benchmarks.md").write_text("\n".join(lines) + "\n")

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("bench-report: matplotlib missing, no plots")
    raise SystemExit(0)

if "connections" in results:
    points = results["connections"]["result"]["points"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p["connections"] for p in points], [p["per_connection_bytes"] / 1024 for p in points], marker="o", label="measured")
    ax.axhline(16, color="red", linestyle="--", label="target 16 KB")
    ax.axhline(10, color="orange", linestyle=":", label="stretch 10 KB")
    ax.set_xlabel("idle connections")
    ax.set_ylabel("RSS growth per connection (KB)")
    ax.set_ylim(bottom=0)
    ax.set_title("playback-syncd: memory per idle connection")
    ax.legend()
    fig.tight_layout()
    fig.savefig(root / "docs/bench/memory-per-connection.png", dpi=110)

curves = []
for name, label in (("latency", "playback-syncd, 5,000 commands/s"), ("transfer", "playback-syncd, 1,000 transfers/s"),
                    ("reference", "nginx + nchan, 5,000 publishes/s")):
    r = results.get(name, {}).get("result", {})
    if "commandToLastDevice" in r:
        curves.append((label, r["commandToLastDevice"]["curve"]))
    if "at_1000" in r and name != "transfer":
        curves.append((label.replace("5,000", "1,000"), r["at_1000"]["commandToLastDevice"]["curve"]))
if curves:
    percentiles = [0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100]
    xs = [1 / (1 - p / 100) if p < 100 else 100000 for p in percentiles]
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, curve in curves:
        ax.plot(xs, curve, marker=".", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([1, 2, 10, 100, 1000, 10000, 100000])
    ax.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%", "max"])
    ax.axhline(5, color="red", linestyle="--", label="target p99 5 ms")
    ax.set_ylabel("to the last device (ms)")
    ax.set_title("Fan-out latency percentiles")
    ax.legend()
    fig.tight_layout()
    fig.savefig(root / "docs/bench/latency-percentiles.png", dpi=110)
print("bench-report: docs/benchmarks.md and plots written")
