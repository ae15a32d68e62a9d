#!/usr/bin/env python3
"""The README works as written: its examples, run against a fresh daemon (an empty Redis database,
a new PostgreSQL database with the demo catalog loaded as scripts/run loads it), print what it
shows. Run by scripts/test after the build; uses the debug binaries.

What is checked, each against the README's own text:
- the psql walk-through: its commands, run as written, print its output (times, durations and
  the milliseconds played masked; psql's column widths ignored);
- every one-shot command of the device-sim list exits 0;
- the "any WebSocket client" session: the token line and the four messages give welcome,
  lease_granted, state, ack and clock;
- the catalog it describes (tracks t0001-t10000, albums a01-a1000, playlists p1-p5, the tracks
  licensed only in SE and NO);
- the configuration table and `playback-syncd serve --help` list the same flags, and
  `playback-syncd --help` points to `serve --help`.

Only the address (a free port instead of 8080), the database (a new one instead of `playback`)
and, for the WebSocket session, the user (one with no active device, as the section assumes) are
changed in the commands."""
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

root = pathlib.Path(__file__).resolve().parent.parent
readme = (root / "README.md").read_text()
debug = root / ".build" / "debug"
redis_port = os.environ.get("REDIS_PORT", "6390")
postgres_port = os.environ.get("POSTGRES_PORT", "5440")
failures = []


def fail(what):
    failures.append(what)
    print(f"check-readme: FAIL {what}", file=sys.stderr)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def section(heading):
    """The text from a heading to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = readme[readme.index(heading) + len(heading):].split("\n")
    fenced = False
    for number, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,%d} " % level, line):
            return "\n".join(lines[:number])
    return "\n".join(lines)


def blocks(text):
    """The fenced code blocks of `text`: (language, body)."""
    return re.findall(r"```(\w*)\n(.*?)```", text, re.S)


def psql(database, sql):
    return subprocess.run(["psql", "-h", "127.0.0.1", "-p", postgres_port, "-U", "postgres", "-d", database, "-qtA", "-c", sql],
                          capture_output=True, text=True, check=True).stdout


# A fresh start: an empty Redis database, a new PostgreSQL database, the catalog loaded.
database = f"readme_{os.getpid()}"
redis_db = "11"
subprocess.run(["redis-cli", "-p", redis_port, "-n", redis_db, "flushdb"], check=True, capture_output=True)
psql("postgres", f"create database {database} owner playback")
postgres_url = f"postgres://playback@127.0.0.1:{postgres_port}/{database}"
redis_url = f"redis://127.0.0.1:{redis_port}/{redis_db}"
port = free_port()
env = dict(os.environ, PLAYBACK_POSTGRES_URL=postgres_url, PLAYBACK_REDIS_URL=redis_url, PLAYBACK_SERVER=f"ws://127.0.0.1:{port}",
           DEVICE_SIM_BINARY=str(debug / "device-sim"), PLAYBACK_SYNCD=str(debug / "playback-syncd"))
for name in ("PLAYBACK_JWT_SECRET", "PLAYBACK_ACCESS_TOKEN"):
    env.pop(name, None)
# As scripts/run loads it (scripts/seed-catalog would point at the local `playback` database).
subprocess.run([str(debug / "playback-syncd"), "seed-catalog", "--postgres-url", postgres_url, "--if-empty"], env=env, check=True,
               capture_output=True)
daemon = subprocess.Popen([str(debug / "playback-syncd"), "--port", str(port), "--engine", "redis", "--log-level", "error"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def localized(command):
    """The command as the README writes it, pointed at this check's daemon and database."""
    command = command.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    return re.sub(r"(-U playback) playback\b", rf"\1 {database}", command)


def run(command, timeout=60, **kwargs):
    return subprocess.run(["bash", "-c", localized(command)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def masked(text):
    """What may differ between two runs: clock times, durations heard, milliseconds played,
    psql's column widths."""
    lines = []
    for line in text.strip().splitlines():
        line = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?(\+00)?", "<time>", line)
        line = re.sub(r"\d+:\d\d heard", "<d> heard", line)
        if re.fullmatch(r"[-+]+", line.strip()):
            line = "<rule>"
        elif "|" in line:
            cells = [cell.strip() for cell in line.split("|")]
            if re.fullmatch(r"t\d{4}", cells[0]) and len(cells) > 1 and cells[1].isdigit():
                cells[1] = "<ms>"
            line = " | ".join(cells)
        lines.append(line.rstrip())
    return [line for line in lines if line]


try:
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        raise SystemExit(f"check-readme: the daemon did not start: {daemon.stderr.read() if daemon.poll() is not None else ''}")

    # The psql walk-through, its commands in one shell as a user pastes them.
    walk = section("### What PostgreSQL keeps, seen with `psql`")
    (_, commands), (_, shown) = blocks(walk)[:2]
    # Files, not pipes: the devices left in the background keep what they inherited open.
    out, err = (tempfile.TemporaryFile(mode="w+") for _ in range(2))
    shell = subprocess.Popen(["bash", "-c", localized(commands)], cwd=root, env=env, stdout=out, stderr=err, text=True,
                             start_new_session=True)
    shell.wait(timeout=120)
    out.seek(0)
    err.seek(0)
    printed, errors = out.read(), err.read()
    if masked(printed) != masked(shown):
        fail("the psql walk-through printed\n" + printed + errors + "\ninstead of\n" + shown)

    # The one-shot commands, with the walk-through's two devices still connected.
    oneshots = [b for lang, b in blocks(section("## Three terminals: two devices and a transfer")) if "state --user" in b][0]
    for line in oneshots.strip().splitlines():
        command = line.split("#")[0].strip()
        result = run(command)
        if result.returncode != 0:
            fail(f"`{command}` exited {result.returncode}: {result.stdout}{result.stderr}")

    # Any WebSocket client: the token line, then the four messages, one per line.
    client = section("## Try it with any WebSocket client")
    (_, start), (_, messages) = blocks(client)[:2]
    token_line, connect_line = [l for l in start.strip().splitlines()]
    # A user of its own: the section starts from one with no active device, as a reader does.
    token = run(token_line.split("#")[0].strip().replace("alice", "alice-ws") + ' && echo "$TOKEN"').stdout.strip()
    websocket = subprocess.Popen(["bash", "-c", localized(connect_line)], cwd=root, env=dict(env, TOKEN=token), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for message in messages.strip().splitlines():
        time.sleep(0.7)
        websocket.stdin.write(message + "\n")
        websocket.stdin.flush()
    time.sleep(1.5)
    os.killpg(websocket.pid, signal.SIGTERM)
    received = websocket.communicate(timeout=10)[0]
    types = set(re.findall(r'"type":\s*"(\w+)"', received))
    for wanted in ("welcome", "lease_granted", "state", "ack", "clock"):
        if wanted not in types:
            fail(f"the WebSocket session got no {wanted}: {received[-1500:]}")

    # The catalog the README describes.
    catalog = client[client.index("The demo catalog"):]
    if not ("t0001" in catalog and "t10000" in catalog and "a1000" in catalog and "p1" in catalog and "p5" in catalog):
        fail("the README no longer describes the catalog this check knows")
    dev_token = run("scripts/mint-token.py alice").stdout.strip()
    de_token = run("scripts/mint-token.py alice 3600 DE").stdout.strip()

    def rest(method, path, token, body=None):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=json.dumps(body).encode() if body else None,
                                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    for track, found in (("t0001", True), ("t10000", True), ("t10001", False)):
        status, body = rest("GET", f"/v1/tracks?q={track}", dev_token)
        if (f'"{track}"' in body) != found:
            fail(f"the track {track} is {'missing' if found else 'there'}: {status} {body[:200]}")
    for context, found in (("album:a01", True), ("album:a1000", True), ("album:a1001", False), ("playlist:p1", True), ("playlist:p5", True)):
        kind, id = context.split(":")
        status, body = rest("PUT", "/v1/me/player/play?device_id=kitchen", dev_token, {"context": {"kind": kind, "id": id}})
        if (status == 200) != found:
            fail(f"playing {context} answered {status}: {body[:200]}")
    status, body = rest("PUT", "/v1/me/player/play?device_id=kitchen", de_token, {"track_ids": ["t0013"]})
    if status == 200:
        fail(f"t0013 played with a DE token: {body[:200]}")
    os.killpg(shell.pid, signal.SIGTERM)

    # The configuration table and the daemon's own help.
    table = section("## Configuration")
    listed = set(re.findall(r"^\| `(--[a-z0-9-]+)`(?:, `(--[a-z0-9-]+)`)?", table, re.M))
    listed = {flag for pair in listed for flag in pair if flag}
    helped = subprocess.run([str(debug / "playback-syncd"), "serve", "--help"], capture_output=True, text=True).stdout
    offered = set(re.findall(r"^\s+(--[a-z0-9-]+)", helped, re.M)) - {"--help", "--version"}
    if listed != offered:
        fail(f"the README's configuration table and `serve --help` differ: only in the README {sorted(listed - offered)}, "
             f"only in the help {sorted(offered - listed)}")
    top = subprocess.run([str(debug / "playback-syncd"), "--help"], capture_output=True, text=True).stdout
    if "serve --help" not in re.sub(r"\s+", " ", top):
        fail("`playback-syncd --help` does not point to `serve --help`")
finally:
    daemon.terminate()
    try:
        daemon.wait(timeout=15)
    except subprocess.TimeoutExpired:
        daemon.kill()
    psql("postgres", f"drop database if exists {database} with (force)")

if failures:
    print(f"check-readme: {len(failures)} of the README's examples do not work as written", file=sys.stderr)
    sys.exit(1)
print("check-readme: the README's examples work as written")
