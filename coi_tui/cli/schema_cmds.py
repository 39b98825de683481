"""`coi schema profile` (the JSON Schema of a profile's config.toml, generated from the one key
table in config/schema.py) and `coi validate profile [NAME...]`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

# How each key kind of config/schema.py looks in JSON Schema.
KIND_SCHEMAS: dict[str, dict[str, Any]] = {
    "bool": {"type": "boolean"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "str": {"type": "string"},
    "enum": {"type": "string"},
    "tool": {"type": "string"},
    "list": {"type": "array", "items": {"type": "string"}},
    "int_list": {"type": "array", "items": {"type": "integer"}},
    "env_names": {
        "type": "array",
        "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
    },
    "memory": {"type": "string"},
    "swap": {"type": ["string", "boolean"]},
    "disk_rate": {"type": "string"},
    "size": {"type": "string"},
    "duration": {"type": "string"},
    "cpuset": {"type": ["string", "integer"]},
    "allowance": {"type": "string"},
    "permission_mode": {"type": "string"},
    "cpu_count": {"type": ["string", "integer"]},
    "domains": {"type": "array", "items": {"type": "string", "pattern": "^[^*]+$"}},
    "ipv4_list": {"type": "array", "items": {"type": "string", "format": "ipv4"}},
    "name": {"type": "string", "pattern": "^([A-Za-z0-9][A-Za-z0-9._-]*)?$"},
    "agents": {"type": "array", "items": {"type": "string"}},
    "token": {"type": "string", "pattern": "^([A-Za-z0-9][A-Za-z0-9._:/@-]*)?$"},
    "alias": {"type": "string", "pattern": "^([A-Za-z][A-Za-z0-9_-]{0,63})?$"},
    "sockets": {"type": "array", "items": {"type": "object"}},
    "credentials": {"type": "array", "items": {"type": "object"}},
    "port_maps": {"type": "array", "items": {"type": "object"}},
    "hosts": {"type": "array", "items": {"type": "object"}},
    "prompts": {
        "type": "object",
        "additionalProperties": {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "object",
                    "properties": {"file": {"type": "string"}},
                    "required": ["file"],
                    "additionalProperties": False,
                },
            ]
        },
    },
    "env_map": {"type": "object", "additionalProperties": {"type": "string"}},
}
# Sections whose shape is not one key per line in the table.
FREEFORM = {
    "environment": {"type": "object", "additionalProperties": {"type": "string"}},
    "mounts": {"type": ["array", "object"]},  # [[mounts]] or [[mounts.default]]
    # a profile's root spellings of [defaults] keys, and the 0.7-era shape (deprecated)
    "env_commands": {"type": "object", "additionalProperties": {"type": "string"}},
    "env_command_timeout": {"type": "string"},
    "image": {"type": "string", "deprecated": True},
    "build": {"type": "object", "deprecated": True},
    "remotes": {"type": "array", "items": {"type": "object"}},
    "tui": {"type": "object"},
}


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    schema = sub.add_parser("schema", help="print the JSON Schema of profile configs")
    ssub = schema.add_subparsers(dest="what", metavar="WHAT", required=True)
    p = ssub.add_parser("profile", help="JSON Schema of a profile's config.toml")
    p.set_defaults(handler=cmd_schema)

    validate = sub.add_parser("validate", help="validate profiles against the schema")
    vsub = validate.add_subparsers(dest="what", metavar="WHAT", required=True)
    p = vsub.add_parser(
        "profile",
        help="check profiles (default: every profile coi finds)",
        description="Loads each profile with its inheritance chain and reports unknown keys, "
        "wrong types and bad values with file:line. Exit 1 when any is invalid.",
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(handler=cmd_validate)


def profile_schema() -> dict[str, Any]:
    from coi_tui.config.schema import KEYS

    root: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
    for key in KEYS:
        node = root
        parts = key.path.split(".")
        for part in parts[:-1]:
            props = node.setdefault("properties", {})
            node = props.setdefault(
                part, {"type": "object", "properties": {}, "additionalProperties": False}
            )
        leaf = dict(KIND_SCHEMAS.get(key.kind, {}))
        if key.choices:
            leaf["enum"] = list(key.choices)
        if key.refusal:
            leaf["const"] = key.default
            leaf["description"] = f"fixed in this coi: {key.refusal}"
        if key.minimum is not None:
            leaf["minimum"] = key.minimum
        if key.maximum is not None:
            leaf["maximum"] = key.maximum
        if key.default not in (None, "", [], (), {}):
            leaf["default"] = list(key.default) if isinstance(key.default, tuple) else key.default
        node.setdefault("properties", {})[parts[-1]] = leaf
    props = root["properties"]
    props["inherits"] = {"type": "string", "description": "parent profile"}
    props["context"] = {"type": "string", "description": "markdown file added to the context"}
    props["forward_env"] = KIND_SCHEMAS["env_names"]
    for name, shape in FREEFORM.items():
        props.setdefault(name, shape)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "coi profile config.toml",
        **root,
    }


def cmd_schema(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    print(json.dumps(profile_schema(), indent=2))
    return 0


def cmd_validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.config.profiles import ProfileSet
    from coi_tui.core.errors import CoiError

    profiles = ProfileSet.discover(Path.cwd(), dict(os.environ))
    names = args.names or profiles.names()
    results = []
    for name in names:
        try:
            resolved = profiles.resolve(name)
            source = str(resolved.profiles[0].config) if resolved.profiles else "(built-in)"
            results.append({"name": name, "valid": True, "source": source, "error": ""})
        except CoiError as exc:
            results.append({"name": name, "valid": False, "source": "", "error": str(exc)})
    if args.json:
        print(json.dumps(results, indent=2))
    elif not results:
        print(f"no profiles found (looked in {profiles.looked_in()})")
    else:
        for row in results:
            if row["valid"]:
                print(f"✓ {row['name']} ({row['source']})")
            else:
                print(f"✗ {row['name']}: {row['error']}")
    return 0 if all(row["valid"] for row in results) else 1
