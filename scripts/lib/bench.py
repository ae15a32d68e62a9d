#!/usr/bin/env python3
"""The scenarios of scripts/bench. Each starts a fresh daemon (Redis engine on the redis-server
scripts/lib/services.sh started), drives it with `device-sim swarm` processes (open loop,
HdrHistogram, several 127.0.0.x source addresses, at most 2,500 connections per process because
of the 20,000 open-file limit), samples the daemon's RSS and CPU from /proc, and appends the raw
results to docs/bench/results.json. `reference` runs the same client against nginx+nchan on the
same Redis. The report (docs/benchmarks.md) and the plots are made from results.json."""
import json
import os
import pathlib
import platform
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

root = pathlib.Path(__file__).resolve().parent.parent.parent
args = [a for a in sys.argv[1:] if not a.startswith("--")]
quick = "--quick" in sys.argv
build = root / (".build/debug" if quick else ".build/release")
daemon_bin, sim_bin = build / "playback-syncd", build / "device-sim"
redis_url = os.environ.get("PLAYBACK_REDIS_URL", "redis://127.0.0.1:6390/0")
redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
sources = [f"127.0.0.{i}" for i in range(1, 9)]
per_process = 2500
clock_ticks = os.sysconf("SC_CLK_TCK")
out_dir = root / "docs" / "bench"
results_path = (pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "playback-bench-quick.json") if quick else out_dir / "results.json"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Process:
    """RSS and CPU of a process from /proc."""

    def __init__(self, pid):
        self.pid = pid

    def rss_kb(self):
        for line in open(f"/proc/{self.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self):
        fields = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / clock_ticks

    def cpu_percent(self, seconds):
        start = self.cpu_seconds()
        time.sleep(seconds)
        return round(100 * (self.cpu_seconds() - start) / seconds, 1)


def start_daemon(extra=(), redis=None, binary=None):
    port = free_port()
    daemon = subprocess.Popen(
        [str(binary or daemon_bin), "--port", str(port), "--engine", "redis", "--redis-url", redis or redis_url, "--log-level", "error",
         "--messages-per-second", "1000", "--max-devices-per-user", "1000", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=raise_nofile)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return daemon, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit("bench: the daemon did not become ready")


def stop(process):
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def swarm(port, users, rate, duration, devices=4, mix=None, concurrency=16, source=None, reference=None, message_bytes=None,
          light=False):
    command = [str(sim_bin), "swarm", "--server", f"ws://127.0.0.1:{port}", "--users", str(users),
               "--devices-per-user", str(devices), "--rate", str(rate), "--duration", f"{duration}s", "--json",
               "--connect-concurrency", str(concurrency)]
    for address in ([source] if source else sources):
        command += ["--source-ip", address]
    if mix:
        command += ["--mix", mix]
    if reference:
        command += ["--reference", reference, "--message-bytes", str(message_bytes or 600)]
    if light:
        command += ["--light"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=raise_nofile)


def collect(process):
    out, err = process.communicate(timeout=600)
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        raise SystemExit(f"bench: swarm failed: {err[-2000:]}")


def split(total, parts):
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# MARK: Scenarios

def connections():
    """Idle connections in steps up to the open-file limit: RSS per connection and idle CPU."""
    steps = [200, 400] if quick else [2500, 5000, 7500, 10000, 12500, 15000, 17500, 19000]
    daemon, port = start_daemon(["--heartbeat-ms", "15000"])
    process = Process(daemon.pid)
    time.sleep(1)
    baseline = process.rss_kb()
    points, holders, connected = [], [], 0
    hold = 30 + 8 * len(steps) if not quick else 15
    try:
        for step in steps:
            count = step - connected
            users = count // 4
            holder = swarm(port, users, 0, hold, concurrency=64, source=sources[len(holders) % len(sources)])
            holders.append(holder)
            # Wait until the daemon holds the new connections.
            deadline = time.time() + 60
            while time.time() < deadline and established(port) < step:
                time.sleep(0.25)
            connected = step
            time.sleep(1.5)
            rss = process.rss_kb()
            points.append({"connections": established(port), "rss_kb": rss,
                           "per_connection_bytes": round((rss - baseline) * 1024 / max(1, established(port)))})
            print(f"bench: connections {points[-1]}", file=sys.stderr)
        idle_cpu = process.cpu_percent(5 if quick else 10)
    finally:
        for holder in holders:
            holder.kill()
        stop(daemon)
    return {"baseline_rss_kb": baseline, "points": points, "idle_cpu_percent_of_one_core": idle_cpu}


def established(port):
    """ESTABLISHED TCP connections whose local port is the daemon's (from /proc/net/tcp)."""
    target = f"{port:04X}"
    count = 0
    for line in open("/proc/net/tcp").readlines()[1:]:
        fields = line.split()
        if fields[1].endswith(":" + target) and fields[3] == "01":
            count += 1
    return count


def run_load(users, rate, duration, mix=None, processes=2, extra=(), light=False, redis=None, watch=(), binary=None):
    """`watch`: other processes (Redis masters) whose CPU over the run goes into the result;
    `binary`: another daemon than the one built (a baseline)."""
    daemon, port = start_daemon(extra, redis=redis, binary=binary)
    process = Process(daemon.pid)
    try:
        cpu_start, wall_start = process.cpu_seconds(), time.time()
        watched = [(pid, Process(pid).cpu_seconds()) for pid in watch]
        runs = [swarm(port, u, r, duration, mix=mix, source=sources[i % len(sources)], light=light)
                for i, (u, r) in enumerate(zip(split(users, processes), split(rate, processes)))]
        reports = [collect(run) for run in runs]
        wall = time.time() - wall_start
        cpu = round(100 * (process.cpu_seconds() - cpu_start) / wall, 1)
        watched_cpu = [round(100 * (Process(pid).cpu_seconds() - start) / wall, 1) for pid, start in watched]
        rss = process.rss_kb()
    finally:
        stop(daemon)
    merged = merge(reports, cpu, rss)
    if watch:
        merged["redis_cpu_percent"] = watched_cpu
    return merged


def merge(reports, cpu, rss):
    """Sums counts; percentiles are the worst of the processes (each is a fair sample)."""
    merged = {
        "processes": len(reports), "daemon_cpu_percent": cpu, "daemon_rss_kb": rss,
        "commands_sent": sum(r["commandsSent"] for r in reports),
        "commands_answered": sum(r["commandsAnswered"] for r in reports),
        "throughput_per_second": round(sum(r["throughputPerSecond"] for r in reports), 1),
        "state_deliveries": sum(r["stateDeliveries"] for r in reports),
        "duration_seconds": max(r["durationSeconds"] for r in reports),
        "errors": {}, "invariant_violations": sum(r["invariantViolations"] for r in reports),
        "connects_per_second": round(sum(r.get("connectsPerSecond", 0) for r in reports)),
    }
    for key in ("commandToAck", "commandToLastDevice", "transferGap"):
        measured = [r for r in reports if r.get(key)]
        if measured:
            merged[key] = max(measured, key=lambda r: r[key]["p99"])[key]
    # Timed commands whose state reached every device of the user, over all the generators.
    merged["complete_deliveries"] = sum(r["commandToLastDevice"]["count"] for r in reports)
    for r in reports:
        for code, count in r["errors"].items():
            merged["errors"][code] = merged["errors"].get(code, 0) + count
    merged["deliveries_per_second"] = round(merged["state_deliveries"] / max(merged["duration_seconds"], 0.001))
    # Which invariants broke, and the first lines saying how: a run with any is a failed run.
    if merged["invariant_violations"]:
        kinds = {}
        for r in reports:
            invariants = r.get("invariants", {})
            commands = invariants.get("commands", {})
            for name, count in (("1 epochs", invariants.get("epochsNotRising", 0)), ("2 stale changes", invariants.get("staleChanges", 0)),
                                ("3 versions", invariants.get("versionViolations", 0)), ("4 divergent users", invariants.get("divergentUsers", 0)),
                                ("5 lost", commands.get("lost", 0)), ("5 applied twice", commands.get("appliedTwice", 0)),
                                ("6 overlapping leases", invariants.get("overlappingLeases", 0)),
                                ("7 final commands not acked", commands.get("finalNotAcked", 0))):
                if count:
                    kinds[name] = kinds.get(name, 0) + count
        merged["invariants_broken"] = kinds
        merged["invariant_details"] = [line for r in reports for line in r.get("invariants", {}).get("details", [])][:10]
    return merged


def throughput():
    """Commands per second with four devices per user, stepping the offered rate."""
    rates = [100] if quick else [2000, 5000, 10000]
    users = 25 if quick else 2500
    return [{"offered_rate": rate, **run_load(users, rate, 3 if quick else 15, processes=1 if quick else 2)} for rate in rates]


def latency():
    """Command → last device's state at 5,000 commands/s (the target's rate), and at 1,000/s."""
    rate = 100 if quick else 5000
    result = {"offered_rate": rate, **run_load(25 if quick else 2500, rate, 3 if quick else 20, processes=1 if quick else 2)}
    if not quick:
        result["at_1000"] = {"offered_rate": 1000, **run_load(2500, 1000, 20, processes=2)}
    return result


def transfer():
    """Transfers only: command → the state on every device (after the revoke and the grant), light client."""
    rate = 50 if quick else 1000
    return {"offered_rate": rate, **run_load(25 if quick else 1000, rate, 3 if quick else 20, mix="transfer:1",
                                             processes=1 if quick else 2, light=True)}


def reconnect():
    """A storm: devices upgrading and saying hello as fast as the daemon takes them."""
    total = 400 if quick else 10000
    daemon, port = start_daemon()
    try:
        processes = 1 if quick else 4
        started = time.time()
        runs = [swarm(port, u // 4, 0, 1, concurrency=128, source=sources[i]) for i, u in enumerate(split(total, processes))]
        reports = [collect(run) for run in runs]
        wall = time.time() - started
    finally:
        stop(daemon)
    welcomed = sum(r["devicesWelcomed"] for r in reports)
    slowest = max(r["connectSeconds"] for r in reports)
    return {"devices": total, "welcomed": welcomed, "connect_seconds": slowest,
            "upgrades_per_second": round(welcomed / slowest) if slowest else 0, "wall_seconds": round(wall, 2)}


def reference():
    """nginx+nchan on the same Redis: the same subscribers, message size and rates, the same client."""
    result = reference_at(100 if quick else 5000)
    if not quick and "skipped" not in result:
        result["at_1000"] = reference_at(1000)
    return result


def reference_at(rate, users=None, seconds=None, light=False):
    nginx = shutil.which("nginx")
    module = pathlib.Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
    if not nginx or not module.exists():
        return {"skipped": "nginx-light and libnginx-mod-nchan are not installed"}
    port = free_port()
    prefix = pathlib.Path(f"/tmp/playback-bench-nchan-{port}")
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(f"""
load_module {module};
worker_processes auto;
worker_rlimit_nofile 20000;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path {prefix};
  upstream redis_server {{ nchan_redis_server redis://127.0.0.1:{redis_port}; }}
  server {{
    listen 127.0.0.1:{port};
    location ~ /sub/(.+)$ {{ nchan_subscriber websocket; nchan_channel_id $1; nchan_redis_pass redis_server; }}
    location ~ /pub/(.+)$ {{ nchan_publisher http; nchan_channel_id $1; nchan_redis_pass redis_server;
                            nchan_message_buffer_length 5; nchan_message_timeout 30s; }}
  }}
}}
""")
    subprocess.run([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], check=True, preexec_fn=raise_nofile)
    time.sleep(0.5)
    master = int((prefix / "nginx.pid").read_text())
    users = users or (25 if quick else 2500)
    seconds = seconds or (3 if quick else 20)
    try:
        workers = [Process(int(pid)) for pid in subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()]
        cpu_start, wall_start = sum(w.cpu_seconds() for w in workers), time.time()
        runs = [swarm(port, u, r, seconds, reference="nchan", message_bytes=state_message_bytes,
                      source=sources[i % len(sources)], light=light)
                for i, (u, r) in enumerate(zip(split(users, 1 if quick else 2), split(rate, 1 if quick else 2)))]
        reports = [collect(run) for run in runs]
        cpu = round(100 * (sum(w.cpu_seconds() for w in workers) - cpu_start) / (time.time() - wall_start), 1)
        rss = sum(w.rss_kb() for w in workers)
    finally:
        subprocess.run([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-s", "stop"], check=False)
    return {"offered_rate": rate, "message_bytes": state_message_bytes, **merge(reports, cpu, rss)}


def versus():
    """The issue's comparison, in one run: the daemon and nginx+nchan loaded by the same light client
    (each message scanned for its id, not decoded), 250 users x 4 devices, `seek` commands against the
    daemon and state-sized publishes against nchan, at 1,000, 2,500 and 5,000 per second; then the
    Redis commands per command, counted with MONITOR."""
    rates = [100] if quick else [1000, 2500, 5000]
    users = 25 if quick else 250
    seconds = 3 if quick else 15
    # BENCH_BASELINE_DAEMON: another build of the daemon (say, the commit before a change), run at
    # each rate beside this one, so that the two are compared within one run.
    baseline = os.environ.get("BENCH_BASELINE_DAEMON")
    rows = []
    for rate in rates:
        ours = run_load(users, rate, seconds, mix="seek:1", processes=1 if quick else 2, light=True)
        theirs = reference_at(rate, users=users, seconds=seconds, light=True)
        row = {"offered_rate": rate, "daemon": ours, "nchan": theirs}
        if baseline:
            row["baseline"] = run_load(users, rate, seconds, mix="seek:1", processes=1 if quick else 2, light=True, binary=baseline)
            row["baseline"]["binary"] = baseline
        rows.append(row)
        print(f"bench: versus {rate}/s daemon p99 {ours['commandToLastDevice']['p99']} ms, "
              f"nchan p99 {theirs.get('commandToLastDevice', {}).get('p99')} ms"
              + (f", baseline p99 {row['baseline']['commandToLastDevice']['p99']} ms" if baseline else ""), file=sys.stderr)
    return {"users": users, "devices_per_user": 4, "rows": rows,
            "redis_commands": redis_commands(users, 100 if quick else 1000, 3 if quick else 10)}


class OTLPSink:
    """A collector that takes OTLP/HTTP posts and keeps only their count and size."""

    def __init__(self):
        import http.server
        sink = self
        self.requests = 0
        self.bytes = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.requests += 1
                sink.bytes += len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def tracing():
    """CPU per command with traces off, and on (OTLP/protobuf to a local sink) keeping every trace
    and keeping 1 in 100, alternating in one run at 2,500 commands/s (the versus load: 250 users x
    4 devices, seeks)."""
    rate = 100 if quick else 2500
    users = 25 if quick else 250
    seconds = 3 if quick else 15
    sink = OTLPSink()
    rows = []
    try:
        for _ in range(1 if quick else 2):
            for ratio in (None, 1.0, 0.01):
                extra = ("--otlp-traces-url", sink.url, "--trace-sample-ratio", str(ratio)) if ratio is not None else ()
                before = sink.requests
                run = run_load(users, rate, seconds, mix="seek:1", processes=1 if quick else 2, light=True, extra=extra)
                answered = max(run["commands_answered"], 1)
                run["sample_ratio"] = ratio
                run["cpu_ms_per_command"] = round(10 * run["daemon_cpu_percent"] * run["duration_seconds"] / answered, 4)
                run["otlp_posts"] = sink.requests - before
                rows.append(run)
                print(f"bench: tracing {'off' if ratio is None else f'on, ratio {ratio}'}: cpu {run['daemon_cpu_percent']} % "
                      f"{run['cpu_ms_per_command']} ms/command, p99 {run['commandToLastDevice']['p99']} ms, "
                      f"{run['otlp_posts']} OTLP posts", file=sys.stderr)
    finally:
        sink.close()

    def mean(ratio):
        values = [r["cpu_ms_per_command"] for r in rows if r["sample_ratio"] == ratio]
        return sum(values) / len(values)

    off = mean(None)
    return {"offered_rate": rate, "users": users, "rows": rows, "cpu_ms_per_command_off": round(off, 4),
            "rise_percent": {str(ratio): round(100 * (mean(ratio) / off - 1), 1) for ratio in (1.0, 0.01)},
            "otlp_bytes": sink.bytes}


def resp(port, *commands, db=0):
    """Sends RESP commands to Redis on one connection (pipelined) and returns the parsed replies."""
    def encode(args):
        out = f"*{len(args)}\r\n"
        for arg in args:
            arg = str(arg)
            out += f"${len(arg.encode())}\r\n{arg}\r\n"
        return out.encode()

    with socket.create_connection(("127.0.0.1", port)) as s:
        reader = s.makefile("rb")
        s.sendall(encode(["SELECT", db]) + b"".join(encode(c) for c in commands))

        def read():
            line = reader.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind in (b"+", b"-"):
                return rest.decode()
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                if n < 0:
                    return None
                data = reader.read(n + 2)[:-2]
                return data.decode(errors="replace")
            if kind == b"*":
                n = int(rest)
                return None if n < 0 else [read() for _ in range(n)]
            raise ValueError(line)

        read()
        return [read() for _ in commands]


def idempotency():
    """Redis bytes per remembered command: 250 users x 4 devices send `seek` commands (each with a
    request id, as the swarm names them: `c<n>`) at 1,000/s for 60 s into a Redis database of their
    own; then the remembered answers' keys are measured (MEMORY USAGE, and used_memory against the
    empty database). With BENCH_BASELINE_DAEMON the same for that build, beside."""
    rate = 100 if quick else 1000
    users = 25 if quick else 250
    seconds = 3 if quick else 60
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    db = 12
    url = f"redis://127.0.0.1:{redis_port}/{db}"

    def measure(binary):
        resp(redis_port, ["FLUSHDB"], db=db)
        before = int(next(l for l in resp(redis_port, ["INFO", "memory"], db=db)[0].splitlines() if l.startswith("used_memory:")).split(":")[1])
        run = run_load(users, rate, seconds, mix="seek:1", processes=1 if quick else 2, light=True, redis=url, binary=binary)
        keys = []
        cursor = "0"
        while True:
            cursor, batch = resp(redis_port, ["SCAN", cursor, "COUNT", 1000], db=db)[0]
            keys += batch
            if cursor == "0":
                break
        answers = [k for k in keys if k.startswith("req")]
        sizes = resp(redis_port, *[["MEMORY", "USAGE", k, "SAMPLES", 0] for k in answers], db=db) if answers else []
        types = resp(redis_port, *[["TYPE", k] for k in answers], db=db) if answers else []
        counts = resp(redis_port, *[["HLEN", k] for k, t in zip(answers, types) if t == "hash"], db=db)
        remembered = sum(counts) + sum(1 for t in types if t == "string")
        others = [k for k in keys if not k.startswith("req")]
        other_bytes = sum(resp(redis_port, *[["MEMORY", "USAGE", k, "SAMPLES", 0] for k in others], db=db)) if others else 0
        after = int(next(l for l in resp(redis_port, ["INFO", "memory"], db=db)[0].splitlines() if l.startswith("used_memory:")).split(":")[1])
        encodings = resp(redis_port, *[["OBJECT", "ENCODING", k] for k in answers[:2000]], db=db) if answers else []
        result = {
            "commands_answered": run["commands_answered"], "remembered": remembered, "keys": len(answers),
            "memory_usage_bytes": sum(sizes), "bytes_per_remembered": round(sum(sizes) / max(remembered, 1), 1),
            "used_memory_delta_bytes": after - before, "other_keys_bytes": other_bytes,
            "used_memory_per_remembered": round((after - before - other_bytes) / max(remembered, 1), 1),
            "encodings": {e: encodings.count(e) for e in set(encodings)}, "invariant_violations": run["invariant_violations"],
        }
        resp(redis_port, ["FLUSHDB"], db=db)
        return result

    result = {"offered_rate": rate, "users": users, "seconds": seconds, "daemon": measure(None)}
    baseline = os.environ.get("BENCH_BASELINE_DAEMON")
    if baseline:
        result["baseline"] = {"binary": baseline, **measure(baseline)}
    for side in ("daemon", "baseline"):
        if side in result:
            r = result[side]
            print(f"bench: idempotency {side}: {r['remembered']} remembered in {r['keys']} keys, {r['bytes_per_remembered']} B each "
                  f"(MEMORY USAGE), {r['used_memory_per_remembered']} B each (used_memory)", file=sys.stderr)
    return result


def redis_commands(users, rate, seconds):
    """Redis commands the daemon sends per command, from MONITOR over a whole run (upkeep included):
    every line but the ones scripts run inside Redis ([0 lua])."""
    daemon, port = start_daemon()
    log = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"playback-bench-monitor-{port}.log"
    try:
        with open(log, "w") as out:
            monitor = subprocess.Popen(["redis-cli", "-p", str(redis_port), "monitor"], stdout=out, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            report = collect(swarm(port, users, rate, seconds, mix="seek:1", source=sources[0], light=True))
            monitor.terminate()
            monitor.wait(timeout=10)
    finally:
        stop(daemon)
    counts, purposes = {}, {}
    for line in log.read_text(errors="replace").splitlines():
        if "[0 lua]" in line or '"' not in line:
            continue
        words = line.split('"')[1::2]
        name = words[0].upper()
        counts[name] = counts.get(name, 0) + 1
        purpose = command_purpose(name, words)
        purposes[purpose] = purposes.get(purpose, 0) + 1
    log.unlink(missing_ok=True)
    answered = max(1, report["commandsAnswered"])
    total = sum(counts.values())
    return {"offered_rate": rate, "seconds": seconds, "users": users, "commands_answered": report["commandsAnswered"],
            "redis_commands": total, "per_command": round(total / answered, 3),
            "command_path_per_command": round(purposes.get("command", 0) / answered, 3),
            "by_name": counts, "by_purpose": purposes}


def command_purpose(name, words):
    """What a daemon's Redis command is for, from its first key (scripts: EVALSHA sha numkeys key...)."""
    key = words[3] if name == "EVALSHA" and len(words) > 3 else (words[1] if len(words) > 1 else "")
    prefix = key.split(":", 1)[0]
    if name in ("SUBSCRIBE", "UNSUBSCRIBE", "SCRIPT", "CLIENT", "PING", "SELECT", "AUTH"):
        return "connection"
    return {"pb": "command", "dev": "device joined or left", "lock": "lease upkeep", "online": "presence upkeep"}.get(
        prefix, "reads (connect, REST, recovery)")


def cluster():
    """The Redis engine on a Redis Cluster of 1 master and of 3 masters (no replicas, made here on
    ports of their own), the same daemon and load: commands/s, p99 command → last device, and the
    CPU of the daemon and of each master, at rising rates; with the throughput scenario's load
    (2,500 users, the full client) and with the versus scenario's (250 users, light client, seeks)."""
    rates = [100] if quick else [2000, 5000, 10000]
    users = 25 if quick else 2500
    seconds = 3 if quick else 15
    light_rates = [100] if quick else [1000, 2500, 5000]
    light_users = 25 if quick else 250
    result = {"users": users, "devices_per_user": 4, "runs": [], "light_users": light_users, "light_runs": []}
    for masters in (1, 3):
        ports, directory = make_cluster(masters)
        try:
            url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
            pids = [int(subprocess.run(["redis-cli", "-p", str(p), "info", "server"], capture_output=True, text=True).stdout
                        .split("process_id:")[1].split()[0]) for p in ports]
            for rate in rates:
                run = run_load(users, rate, seconds, processes=1 if quick else 2, redis=url, watch=pids)
                result["runs"].append({"masters": masters, "offered_rate": rate, **run})
                print(f"bench: cluster {masters} master(s) {rate}/s: {run['throughput_per_second']}/s, "
                      f"p99 {run['commandToLastDevice']['p99']} ms, daemon {run['daemon_cpu_percent']} %, "
                      f"redis {run['redis_cpu_percent']} %", file=sys.stderr)
            # The command path alone, as in `versus`: 250 users, the light client, seeks.
            for rate in light_rates:
                run = run_load(light_users, rate, seconds, mix="seek:1", processes=1 if quick else 2, light=True, redis=url, watch=pids)
                result["light_runs"].append({"masters": masters, "offered_rate": rate, **run})
                print(f"bench: cluster {masters} master(s) {rate}/s: {run['throughput_per_second']}/s, "
                      f"p99 {run['commandToLastDevice']['p99']} ms, daemon {run['daemon_cpu_percent']} %, "
                      f"redis {run['redis_cpu_percent']} %", file=sys.stderr)
        finally:
            for port in ports:
                subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)
            shutil.rmtree(directory, ignore_errors=True)
    return result


def contention():
    """Thirty devices of one user spread over three daemons on a 3-master Redis Cluster, every command
    a `play` on one of the user's devices (each moves the lease), 1,000 of them in two seconds: the
    daemons race to commit one user. How many are refused for contention (the target: none), and
    the time to the ack."""
    total, seconds = (60, 2) if quick else (1000, 2)
    ports, directory = make_cluster(3)
    try:
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
        daemons = [start_daemon(redis=url) for _ in range(3)]
        try:
            command = [str(sim_bin), "swarm", "--users", "1", "--devices-per-user", "30", "--rate", str(total // seconds),
                       "--duration", f"{seconds}s", "--mix", "play:1", "--json", "--connect-concurrency", "4"]
            for _, port in daemons:
                command += ["--server", f"ws://127.0.0.1:{port}"]
            out = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=raise_nofile)
            try:
                report = json.loads(out.stdout)
            except json.JSONDecodeError:
                raise SystemExit(f"bench: contention swarm failed: {out.stderr[-2000:]}")
        finally:
            for daemon, _ in daemons:
                stop(daemon)
    finally:
        for port in ports:
            subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)
    return {"daemons": 3, "masters": 3, "devices": 30, "commands_sent": report["commandsSent"],
            "commands_answered": report["commandsAnswered"], "errors": report["errors"],
            "unavailable": report["errors"].get("unavailable", 0), "commandToAck": report["commandToAck"],
            "commandToLastDevice": report["commandToLastDevice"], "invariant_violations": report["invariantViolations"]}


def callgrind():
    """Instructions per command, counted by valgrind --tool=callgrind (repeatable whatever else the
    machine does): the daemon (Redis engine) runs under callgrind through two swarms of the same
    devices and length at two rates; the difference in instructions over the difference in commands
    is what a command costs, start-up, connections and idle ticks cancelling out. With
    BENCH_BASELINE_DAEMON=<path to another build of playback-syncd> the same for that build, side by side."""
    if not shutil.which("valgrind"):
        raise SystemExit("bench: callgrind needs valgrind (apt-get install valgrind)")
    users, devices, seconds, rates = (10, 2, 4, (10, 30)) if quick else (25, 4, 10, (40, 120))

    def probe(binary):
        """Valgrind 3.19 (Debian 12's) dies reading the unwind tables of Swift 6's lib_FoundationICU.so,
        before the daemon runs: said plainly instead of waiting for a daemon that never comes up."""
        out = subprocess.run(["valgrind", "--tool=none", str(binary), "--help"], capture_output=True, text=True, timeout=300)
        if "the 'impossible' happened" in out.stderr or out.returncode not in (0, 64):
            said = [line.split("--", 2)[-1].strip() for line in out.stderr.splitlines() if "INTERNAL ERROR" in line or "Valgrind:" in line]
            raise SystemExit(f"bench: valgrind cannot run {binary} on this machine ({' / '.join(said[:2]) or out.stderr[-300:]}); "
                             "a valgrind that reads DWARF 5 and Swift's runtime libraries is needed")

    def count(binary, rate):
        port = free_port()
        out = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"playback-callgrind-{port}.out"
        daemon = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(binary), "--port", str(port), "--engine", "redis",
             "--redis-url", redis_url, "--log-level", "error", "--messages-per-second", "1000", "--max-bus-lag-ms", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=raise_nofile)
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
                    break
                except OSError:
                    time.sleep(0.2)
            else:
                raise SystemExit("bench: the daemon did not become ready under callgrind")
            report = collect(swarm(port, users, rate, seconds, devices=devices, mix="seek:1", concurrency=4, source="127.0.0.1"))
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=180)
            except subprocess.TimeoutExpired:
                daemon.kill()
        totals = [line for line in out.read_text().splitlines() if line.startswith(("summary:", "totals:"))]
        out.unlink(missing_ok=True)
        if not totals:
            raise SystemExit("bench: callgrind wrote no totals (did the daemon exit cleanly?)")
        return {"rate": rate, "commands_answered": report["commandsAnswered"], "instructions": int(totals[-1].split()[1]),
                "invariant_violations": report["invariantViolations"]}

    def per_command(built):
        # Without its debug information (DWARF 5, which valgrind 3.19 cannot read): only totals are needed.
        binary = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"playback-callgrind-{os.getpid()}-{built.parent.name}"
        shutil.copy(built, binary)
        subprocess.run(["strip", "--strip-debug", str(binary)], check=True)
        probe(binary)
        low, high = count(binary, rates[0]), count(binary, rates[1])
        commands = high["commands_answered"] - low["commands_answered"]
        binary.unlink(missing_ok=True)
        return {"binary": str(built), "runs": [low, high],
                "instructions_per_command": round((high["instructions"] - low["instructions"]) / max(commands, 1))}

    result = {"users": users, "devices_per_user": devices, "seconds": seconds, "daemon": per_command(daemon_bin)}
    baseline = os.environ.get("BENCH_BASELINE_DAEMON")
    if baseline:
        result["baseline"] = per_command(pathlib.Path(baseline))
    return result


def make_cluster(masters):
    """A cluster of `masters` masters on free ports, the slots split evenly (CLUSTER ADDSLOTSRANGE)."""
    ports = []
    while len(ports) < masters:
        port = free_port()
        if port + 10000 < 65536 and port not in ports:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            ports.append(port)
    directory = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"playback-bench-cluster-{ports[0]}"
    for port in ports:
        node = directory / str(port)
        node.mkdir(parents=True, exist_ok=True)
        subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node), "--daemonize", "yes",
                        "--save", "", "--appendonly", "no", "--cluster-enabled", "yes",
                        "--cluster-config-file", str(node / "nodes.conf"), "--logfile", str(node / "redis.log")], check=True)
    for _ in range(100):
        if all(subprocess.run(["redis-cli", "-p", str(p), "ping"], capture_output=True).returncode == 0 for p in ports):
            break
        time.sleep(0.1)
    bounds = [round(16384 * i / masters) for i in range(masters + 1)]
    for index, port in enumerate(ports):
        subprocess.run(["redis-cli", "-p", str(port), "cluster", "addslotsrange", str(bounds[index]), str(bounds[index + 1] - 1)],
                       check=True, capture_output=True)
        if index:
            subprocess.run(["redis-cli", "-p", str(port), "cluster", "meet", "127.0.0.1", str(ports[0])], check=True, capture_output=True)
    for _ in range(300):
        if all("cluster_state:ok" in subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True,
                                                    text=True).stdout for p in ports):
            return ports, directory
        time.sleep(0.1)
    raise SystemExit("bench: the cluster did not come up")


# A state event with a four-entry-context player state is about this long on the wire.
state_message_bytes = 620

scenarios = {"connections": connections, "throughput": throughput, "latency": latency, "transfer": transfer,
             "reconnect": reconnect, "reference": reference, "versus": versus, "cluster": cluster, "contention": contention,
             "tracing": tracing, "idempotency": idempotency,
             "callgrind": callgrind}
# Under valgrind a run takes minutes: counted when named, not in every run.
chosen = args or [name for name in scenarios if name != "callgrind"]
unknown = [name for name in chosen if name not in scenarios]
if unknown:
    raise SystemExit(f"bench: unknown scenario {unknown}; known: {', '.join(scenarios)}")

results = json.loads(results_path.read_text()) if results_path.exists() and not quick else {}
results["machine"] = {
    "cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
    "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    "build": "debug" if quick else "release",
}
for name in chosen:
    print(f"bench: {name}", file=sys.stderr)
    started = time.time()
    results[name] = {"measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), **({"result": scenarios[name]()})}
    results[name]["seconds"] = round(time.time() - started, 1)
    print(json.dumps({name: results[name]}), file=sys.stderr)
out_dir.mkdir(parents=True, exist_ok=True)
results_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
print(f"bench: results in {results_path}")
def runs_of(name, result):
    runs = result if isinstance(result, list) else [result]
    if name == "versus":
        runs = [row[side] for row in result["rows"] for side in ("daemon", "nchan", "baseline") if side in row]
    if name == "cluster":
        runs = result["runs"] + result["light_runs"]
    if name == "tracing":
        runs = result["rows"]
    if name == "idempotency":
        runs = [result[side] for side in ("daemon", "baseline") if side in result]
    if name == "callgrind":
        runs = result["daemon"]["runs"] + result.get("baseline", {}).get("runs", [])
    if name == "latency" and isinstance(result, dict) and "at_1000" in result:
        runs = runs + [result["at_1000"]]
    return [run for run in runs if isinstance(run, dict) and not run.get("skipped")]


if not quick:
    subprocess.run([sys.executable, str(root / "scripts/lib/bench-report.py")], check=False)
    # A run whose checker found broken invariants is a failed run, however fast it was.
    broken = [(name, run) for name in chosen for run in runs_of(name, results[name]["result"]) if run.get("invariant_violations", 0)]
    for name, run in broken:
        print(f"bench: FAILED {name} at {run.get('offered_rate', '?')}/s: {run['invariant_violations']} invariant violations "
              f"{json.dumps(run.get('invariants_broken', {}))}", file=sys.stderr)
        for line in run.get("invariant_details", []):
            print(f"bench:     {line}", file=sys.stderr)
    if broken:
        print("bench: INVARIANTS BROKEN: these results are not valid measurements", file=sys.stderr)
        sys.exit(1)
else:
    # The quick run keeps the scenarios working: each must have moved something, without violations.
    problems = []
    for name in chosen:
        for run in runs_of(name, results[name]["result"]):
            if run.get("invariant_violations", 0) or run.get("commands_answered", 1) == 0 or run.get("welcomed", 1) == 0:
                problems.append(f"{name}: {json.dumps(run)[:300]}")
            if name == "connections" and not run.get("points"):
                problems.append("connections: no measurement")
    for problem in problems:
        print(f"bench: FAILED {problem}", file=sys.stderr)
    print(f"bench: quick run {'ok' if not problems else 'failed'}")
    sys.exit(1 if problems else 0)
