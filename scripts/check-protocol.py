#!/usr/bin/env python3
"""Checks protocol/: every example validates against its message's JSON Schema, every
schema has an example, and the AsyncAPI document names every message schema.

An example protocol/examples/<direction>/<type>[.<variant>].json is checked against
protocol/schemas/<direction>/<type>.json. Exits non-zero on any failure."""
import json
import pathlib
import sys

import jsonschema
import yaml
from referencing import Registry, Resource

root = pathlib.Path(__file__).resolve().parent.parent / "protocol"
schemas = {p: json.loads(p.read_text()) for p in (root / "schemas").rglob("*.json")}
registry = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema)) for schema in schemas.values())
failures = []
covered = set()

for schema in schemas.values():
    jsonschema.Draft202012Validator.check_schema(schema)

for example in sorted((root / "examples").rglob("*.json")):
    direction = example.parent.name
    message_type = example.name.split(".")[0]
    schema_path = root / "schemas" / direction / f"{message_type}.json"
    if schema_path not in schemas:
        failures.append(f"{example.relative_to(root)}: no schema {schema_path.relative_to(root)}")
        continue
    covered.add(schema_path)
    validator = jsonschema.Draft202012Validator(schemas[schema_path], registry=registry)
    for error in validator.iter_errors(json.loads(example.read_text())):
        failures.append(f"{example.relative_to(root)}: {error.json_path}: {error.message}")

# Counter-examples: each mutation of a valid example must be rejected by its schema.
def must_fail(direction, name, mutate, why):
    message = json.loads((root / "examples" / direction / f"{name}.json").read_text())
    mutate(message)
    schema = schemas[root / "schemas" / direction / f"{name.split('.')[0]}.json"]
    if jsonschema.Draft202012Validator(schema, registry=registry).is_valid(message):
        failures.append(f"schema {direction}/{name} accepts a message with {why}")

must_fail("server", "welcome", lambda m: m["state"].pop("queue"), "no queue in welcome.state")
must_fail("server", "state", lambda m: m["state"].pop("active_device"), "an omitted (not null) field")
must_fail("server", "error.version_conflict", lambda m: m.pop("version"), "version_conflict without version")
must_fail("client", "command.volume", lambda m: m["args"].update(percent=101), "volume 101")
must_fail("client", "command.seek", lambda m: m["args"].update(position_ms="60"), "a string position")
must_fail("client", "hello", lambda m: m["device"].update(id="bad id!"), "an invalid device id")
must_fail("client", "hello.remote", lambda m: m.update(role="controller"), "an unknown role")
must_fail("client", "command.pause", lambda m: m.update(op="explode"), "an unknown op")

for path in schemas:
    if path.parent.name in ("client", "server") and path not in covered:
        failures.append(f"{path.relative_to(root)}: no example")

asyncapi = yaml.safe_load((root / "asyncapi.yaml").read_text())
if not str(asyncapi.get("asyncapi", "")).startswith("3."):
    failures.append("asyncapi.yaml: not an AsyncAPI 3 document")
referenced = {m["payload"]["$ref"] for m in asyncapi["components"]["messages"].values()}
for path in schemas:
    if path.parent.name in ("client", "server"):
        relative = "./" + str(path.relative_to(root))
        if relative not in referenced:
            failures.append(f"asyncapi.yaml: message {relative} is not described")

for failure in failures:
    print("protocol check:", failure, file=sys.stderr)
examples = len(list((root / "examples").rglob("*.json")))
print(f"protocol check: {examples} examples against {len(schemas)} schemas: "
      f"{'ok' if not failures else f'{len(failures)} failures'}")
sys.exit(1 if failures else 0)
