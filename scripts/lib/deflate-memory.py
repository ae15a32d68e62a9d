#!/usr/bin/env python3
"""Measures the daemon's resident memory per connected device with and without
permessage-deflate: starts the built daemon (embedded engine) with --permessage-deflate, opens
N sessions (hello, welcome; four devices per user) with compression offered or not, after 100
warm-up sessions, and reads VmRSS from /proc: the growth per session includes the session
handler, the socket's buffers and a quarter of a user's state.
Usage: scripts/lib/deflate-memory.py [N] [daemon binary]"""
import asyncio, json, os, sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
mint = __import__("mint-token").mint
from websockets.asyncio.client import connect
sys.path.insert(0, os.path.dirname(__file__))
from daemon import start as start_daemon  # noqa: E402

count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
binary = sys.argv[2] if len(sys.argv) > 2 else ".build/debug/playback-syncd"


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


async def open_sessions(port, compression, sessions, prefix):
    sockets = []
    for index in range(sessions):
        token = mint(f"{prefix}-{index // 4}")
        ws = await connect(f"ws://127.0.0.1:{port}/v1/connect?access_token={token}",
                           compression="deflate" if compression else None, max_queue=4, ping_interval=None)
        await ws.send(json.dumps({"type": "hello", "device": {"id": f"d{index % 4}", "name": "Device", "kind": "speaker"}}))
        await ws.recv()
        sockets.append(ws)
    return sockets


async def measure(compression):
    daemon, port = start_daemon(binary, "--permessage-deflate", "--log-level", "error", "--heartbeat-ms", "600000")
    try:
        warm = await open_sessions(port, compression, 100, "warm")  # load the code paths once
        await asyncio.sleep(1)
        before = rss_kb(daemon.pid)
        sessions = await open_sessions(port, compression, count, "measured")
        await asyncio.sleep(1)
        after = rss_kb(daemon.pid)
        negotiated = sessions[0].response.headers.get("Sec-WebSocket-Extensions")
        for ws in sessions + warm:
            await ws.close()
        return before, after, negotiated
    finally:
        daemon.terminate()
        daemon.wait()


async def main():
    for compression in (False, True):
        before, after, negotiated = await measure(compression)
        per = (after - before) * 1024 / count
        print(f"compression={'on ' if compression else 'off'} sessions={count} rss_before_kb={before} "
              f"rss_after_kb={after} per_connection_bytes={per:.0f} extension={negotiated!r}")

asyncio.run(main())
