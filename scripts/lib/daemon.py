"""Starting a built playback-syncd for the Python checks: a free port, the process, and waiting
until it answers /healthz."""
import socket
import subprocess
import time
import urllib.request


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(port, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return True
        except OSError:
            time.sleep(0.1)
    return False


def start(binary, *arguments):
    """Starts the daemon on a free port with `arguments`; returns (process, port) once it answers."""
    port = free_port()
    process = subprocess.Popen([str(binary), "--port", str(port), *arguments],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_healthy(port):
        process.kill()
        raise SystemExit(f"{binary} did not answer on port {port}")
    return process, port
