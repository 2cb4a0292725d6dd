#!/usr/bin/env python3
"""The JSON Schemas of coffer's --json documents (docs/schemas/), for tests/json_schemas.rs.

    json_schema.py validate SCHEMA_DIR SAMPLE_DIR   # every SAMPLE_DIR/NAME[.N].json against NAME.schema.json
    json_schema.py infer SCHEMA_DIR SAMPLE_DIR      # write a schema per NAME from its samples (after a deliberate change)

Several samples of one document (NAME.json, NAME.2.json...) show its variants: a
field present in only some of them is optional, and its types are all those seen.

A schema pins the document's top-level fields (all required, no others: a renamed or
added field fails the test until docs/JSON.md and the schema say so) and their types;
objects and arrays below the top level are typed one level deep. Fields that may be
null list both types; `infer` learns that from NULLABLE below, not from one sample.
"""

import json
import os
import sys

# Fields that are null in some runs (a first backup has no parent, a restore without
# changes no safety snapshot...).
NULLABLE = {
    "parent", "safety_snapshot_id", "eta_seconds", "error", "rolled_back", "locked_until",
    "snapshot_id", "replaced_by_snapshot_id", "object_lock", "scratch_dir", "schedule", "drill",
    "repository", "finished", "bytes", "next_step", "profile", "compression_ratio", "dedup_ratio",
    "link_target", "user", "group", "sha256", "prune", "notes", "unit", "pack_bytes",
}
# Fields present only in some runs.
OPTIONAL = {"unit", "prune", "path_hex", "link_target_hex", "pg_dumps", "outputs"}


def type_of(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def property_schema(name, value, depth):
    kind = type_of(value)
    types = {kind}
    if kind == "integer":
        types = {"integer"}
    if kind == "number":
        types = {"number"}
    if name in NULLABLE or kind == "null":
        types.add("null")
    if kind == "null":
        # Seen only as null: what it holds otherwise is not known from this sample.
        return {}
    schema = {"type": sorted(types) if len(types) > 1 else kind}
    if kind == "object" and depth < 1:
        schema["properties"] = {k: property_schema(k, v, depth + 1) for k, v in sorted(value.items())}
    if kind == "array" and value and depth < 1 and isinstance(value[0], dict):
        keys = sorted(set().union(*(item.keys() for item in value if isinstance(item, dict))))
        schema["items"] = {"type": "object", "required": [k for k in keys if all(k in i for i in value)]}
    return schema


def merge(a, b):
    """One property schema that admits what either admits."""
    if not a or not b:
        return {}
    types = set(a["type"] if isinstance(a["type"], list) else [a["type"]])
    types |= set(b["type"] if isinstance(b["type"], list) else [b["type"]])
    if "integer" in types and "number" in types:
        types.discard("integer")
    merged = dict(a)
    merged["type"] = sorted(types) if len(types) > 1 else types.pop()
    if "items" in a and "items" in b:
        merged["items"] = {"type": "object", "required": sorted(set(a["items"]["required"]) & set(b["items"]["required"]))}
    elif "items" in b:
        merged["items"] = b["items"]
    if "properties" in a and "properties" in b:
        keys = set(a["properties"]) | set(b["properties"])
        merged["properties"] = {
            k: merge(a["properties"][k], b["properties"][k]) if k in a["properties"] and k in b["properties"]
            else a["properties"].get(k, b["properties"].get(k))
            for k in sorted(keys)
        }
    return merged


def infer(documents, name):
    properties = {}
    for document in documents:
        for key, value in document.items():
            seen = property_schema(key, value, 0)
            properties[key] = merge(properties[key], seen) if key in properties else seen
    properties["schema_version"] = {"const": 1}
    everywhere = set.intersection(*(set(d) for d in documents))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://coffer.invalid/schemas/{name}.schema.json",
        "title": f"coffer {name.replace('_', ' ')} --json",
        "type": "object",
        "required": sorted(k for k in everywhere if k not in OPTIONAL),
        "properties": dict(sorted(properties.items())),
        "additionalProperties": False,
    }


def main():
    action, schemas, samples = sys.argv[1:4]
    files = sorted(n[:-5] for n in os.listdir(samples) if n.endswith(".json"))
    names = sorted({f.split(".")[0] for f in files})
    if action == "infer":
        os.makedirs(schemas, exist_ok=True)
        for name in names:
            documents = [json.load(open(os.path.join(samples, f + ".json"))) for f in files if f.split(".")[0] == name]
            with open(os.path.join(schemas, name + ".schema.json"), "w") as out:
                json.dump(infer(documents, name), out, indent=2, sort_keys=True)
                out.write("\n")
        print(f"wrote {len(names)} schemas")
        return
    import jsonschema

    failures = []
    for sample in files:
        name = sample.split(".")[0]
        path = os.path.join(schemas, name + ".schema.json")
        if not os.path.exists(path):
            failures.append(f"{name}: no schema {path}")
            continue
        schema = json.load(open(path))
        jsonschema.Draft202012Validator.check_schema(schema)
        document = json.load(open(os.path.join(samples, sample + ".json")))
        for error in jsonschema.Draft202012Validator(schema).iter_errors(document):
            where = "/".join(str(p) for p in error.absolute_path) or "(top)"
            failures.append(f"{sample}: {where}: {error.message}")
    for failure in failures:
        print(failure)
    print(f"validated {len(files)} documents against {len(names)} schemas, {len(failures)} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
