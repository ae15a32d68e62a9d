"""Starting a built playback-syncd for the Python checks: a free port, the process, and waiting
until it answers /healthz. Its standard error goes to a temporary file that is shown when it
does not come up."""
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(port, seconds=30, process=None):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return True
        except OSError:
            time.sleep(0.1)
    return False


def start(binary, *arguments):
    """Starts the daemon on a free port with `arguments`; returns (process, port) once it answers."""
    port = free_port()
    errors = tempfile.TemporaryFile()
    process = subprocess.Popen([str(binary), "--port", str(port), *arguments],
                               stdout=subprocess.DEVNULL, stderr=errors)
    if not wait_healthy(port, process=process):
        process.kill()
        process.wait()
        errors.seek(0)
        tail = errors.read().decode(errors="replace").strip().splitlines()[-20:]
        raise SystemExit(f"{binary} did not answer on port {port} (exit status {process.returncode}):\n"
                         + "\n".join(tail))
    return process, port
