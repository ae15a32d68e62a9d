#!/usr/bin/env python3
"""Keeps protocol/openapi.yaml true: validates the document, starts the built daemon
(.build/debug/playback-syncd, embedded engine) with a WebSocket device connected, calls every
documented operation (successes and errors), and validates each response's status and body
against the document. Exits non-zero on any mismatch."""
import json
import pathlib
import sys
import threading
import time
import urllib.error
import urllib.request

import jsonschema
import yaml
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from websockets.sync.client import connect

root = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root / "scripts"))
mint = __import__("mint-token").mint
sys.path.insert(0, str(root / "scripts" / "lib"))
from daemon import start as start_daemon  # noqa: E402

document_path = root / "protocol" / "openapi.yaml"
document = yaml.safe_load(document_path.read_text())
base = document_path.as_uri()
common_path = root / "protocol" / "schemas" / "common.json"
common = json.loads(common_path.read_text())
validate(document, base_uri=base)
registry = Registry().with_resources([
    (base, Resource.from_contents(document, default_specification=DRAFT202012)),
    (common_path.as_uri(), Resource.from_contents(common)),
    (common["$id"], Resource.from_contents(common)),
])

failures = []
exercised = set()


def resolve(node):
    while "$ref" in node and node["$ref"].startswith("#/"):
        target = document
        for part in node["$ref"][2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def check(method, template, path, status, body, token, headers=None, expect=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=body.encode() if body is not None else None)
    request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            got, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        got, text = error.code, error.read().decode()
    label = f"{method} {path}"
    if expect is not None and got != expect:
        failures.append(f"{label}: expected {expect}, got {got} {text}")
        return
    operation = document["paths"][template][method.lower()]
    responses = operation["responses"]
    if str(got) not in responses:
        failures.append(f"{label}: status {got} is not documented")
        return
    response = resolve(responses[str(got)])
    schema = response.get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        if text:
            failures.append(f"{label}: {got} is documented without a body, got {text}")
        return
    pointer = "#/paths/" + template.replace("~", "~0").replace("/", "~1") + f"/{method.lower()}/responses/{got}"
    if "$ref" in responses[str(got)]:
        pointer = responses[str(got)]["$ref"]
    validator = jsonschema.Draft202012Validator({"$ref": base + pointer + "/content/application~1json/schema"}, registry=registry)
    for error in validator.iter_errors(json.loads(text)):
        failures.append(f"{label} → {got}: {error.json_path}: {error.message}")
    if 200 <= got < 300:
        exercised.add((template, method.lower()))


daemon, port = start_daemon(root / ".build/debug/playback-syncd", "--log-level", "warning", "--permessage-deflate")
try:
    user = f"openapi-{int(time.time())}"
    token = mint(user)
    # The websockets client offers permessage-deflate: the device's messages travel compressed.
    with connect(f"ws://127.0.0.1:{port}/v1/connect?access_token={token}") as device:
        negotiated = device.response.headers.get("Sec-WebSocket-Extensions", "")
        if not negotiated.startswith("permessage-deflate"):
            failures.append(f"permessage-deflate was not negotiated: {negotiated!r}")
        device.send(json.dumps({"type": "hello", "device": {"id": "speaker", "name": "Speaker", "kind": "speaker"}}))
        threading.Thread(target=lambda: [m for m in device], daemon=True).start()
        time.sleep(0.3)
        P = "/v1/me/player"
        check("GET", P, P, None, None, token, expect=204)
        check("PUT", P + "/play", P + "/play", None, '{"track_ids":["t0001"]}', token, expect=404)
        check("PUT", P + "/play", P + "/play?device_id=speaker", None, '{"context":{"kind":"album","id":"a01"}}', token, expect=200)
        check("GET", P, P, None, None, token, expect=200)
        check("GET", P + "/devices", P + "/devices", None, None, token, expect=200)
        check("PUT", P + "/pause", P + "/pause", None, None, token, expect=200)
        check("POST", P + "/next", P + "/next", None, None, token, expect=200)
        check("POST", P + "/previous", P + "/previous", None, None, token, expect=200)
        check("PUT", P + "/seek", P + "/seek?position_ms=1000", None, None, token, expect=200)
        check("PUT", P + "/volume", P + "/volume?volume_percent=40", None, None, token, expect=200)
        check("PUT", P + "/volume", P + "/volume?volume_percent=400", None, None, token, expect=400)
        check("PUT", P + "/volume", P + "/volume?volume_percent=30&device_id=nowhere", None, None, token, expect=404)
        check("PUT", P + "/repeat", P + "/repeat?state=track", None, None, token, expect=200)
        check("PUT", P + "/shuffle", P + "/shuffle?state=true", None, None, token, expect=200)
        check("POST", P + "/queue", P + "/queue?track_id=t0042", None, None, token, expect=200)
        check("POST", P + "/queue", P + "/queue?track_id=zzz", None, None, token, expect=404)
        check("GET", P + "/queue", P + "/queue", None, None, token, expect=200)
        check("PUT", P, P, None, '{"device_ids":["speaker"]}', token, expect=200)
        check("PUT", P, P, None, '{"device_ids":["a","b"]}', token, expect=400)
        check("PUT", P + "/volume", P + "/volume?volume_percent=41", None, None, token, headers={"If-Match": "0"}, expect=409)
        check("GET", "/v1/tracks", "/v1/tracks?q=harbour&limit=5", None, None, token, expect=200)
        check("GET", P + "/recently-played", P + "/recently-played?limit=5", None, None, token, expect=200)
        check("GET", P + "/recently-played", P + "/recently-played?limit=0", None, None, token, expect=400)
        check("GET", P, P, None, None, "not-a-token", expect=401)
        check("POST", "/v1/dev/token", "/v1/dev/token", None, '{"user":"web-user"}', token, expect=200)
        check("POST", "/v1/dev/token", "/v1/dev/token", None, '{"user":"bad user!"}', token, expect=400)
        # The original design's shape.
        A = "/api/playback"
        check("POST", A + "/play", A + "/play", None,
              '{"song_id":"t0001","device_id":"speaker","context":"album:a01","position":3}', token, expect=200)
        check("POST", A + "/play", A + "/play", None, '{"context":"no-kind"}', token, expect=400)
        check("GET", A + "/current", A + "/current", None, None, token, expect=200)
        check("POST", A + "/pause", A + "/pause", None, '{"device_id":"speaker","position":4}', token, expect=200)
        check("POST", A + "/seek", A + "/seek", None, '{"song_id":"t0001","position":10}', token, expect=200)
        check("POST", A + "/seek", A + "/seek", None, '{"song_id":"t0002","position":10}', token, expect=409)
        check("POST", A + "/update", A + "/update", None, '{"device_id":"speaker","position":11}', token, expect=200)
        check("POST", A + "/report", A + "/report", None, '{"device_id":"speaker","song_id":"t0001","position":12}', token, expect=200)
        check("POST", A + "/report", A + "/report", None, '{"device_id":"phone","position":12}', token, expect=409)
        check("POST", A + "/transfer", A + "/transfer", None, '{"device":"speaker"}', token, expect=200)
        regional = mint(user, 3600, "DE")
        check("POST", P + "/queue", P + "/queue?track_id=t0013", None, None, regional, expect=451)
finally:
    daemon.terminate()
    daemon.wait(timeout=10)

documented = {(path, method) for path, item in document["paths"].items() for method in item}
for path, method in sorted(documented - exercised):
    failures.append(f"{method.upper()} {path}: never answered successfully in the check")
for failure in failures:
    print("openapi check:", failure, file=sys.stderr)
print(f"openapi check: {len(documented)} operations against the running daemon: {'ok' if not failures else f'{len(failures)} failures'}")
sys.exit(1 if failures else 0)
