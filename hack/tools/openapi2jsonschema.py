#!/usr/bin/env python3
"""Offline JSON schemas for kubeconform, in the layout its schema-location templates expect.

kubeconform normally downloads its schemas; this machine (and CI) has no internet, so they
are made here from sources we already have:

* ``k8s SWAGGER OUT``: the Kubernetes types, from the ``swagger.json`` shipped in the
  ``k8s.io/kubernetes`` module (what that release's apiserver serves at /openapi/v2).
  Writes ``OUT/standalone/<kind>-<group>-<version>.json`` and ``OUT/standalone-strict/...``;
  the strict set refuses fields a type does not declare, like ``kubectl --validate=strict``.
* ``crd OUT CRD.yaml...``: each CustomResourceDefinition's ``openAPIV3Schema``, as
  ``OUT/<group>/<kind>_<version>.json`` (strict: unknown fields refused unless the schema
  says ``x-kubernetes-preserve-unknown-fields``).

Only the standard library is needed for ``k8s``; ``crd`` needs PyYAML.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

Schema = dict[str, Any]

#: Types whose wire form is not what their swagger `type` says.
SPECIAL: dict[str, Schema] = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"type": ["string", "integer"]},
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"type": ["string", "number"]},
    # JSON (e.g. CRD `default`, `example`) is any JSON value.
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON": {},
}

#: Keys that only document; dropped so each file stays small.
DROP = frozenset({"description", "format", "x-kubernetes-group-version-kind"})


def kind_file(kind: str, group: str, version: str) -> str:
    """kubeconform's ``{{ .ResourceKind }}{{ .KindSuffix }}.json`` for a group/version/kind.

    KindSuffix is "-" + the first dot-separated label of the group (if any) + "-" + version.
    """
    suffix = f"-{group.split('.')[0].lower()}" if group else ""
    return f"{kind.lower()}{suffix}-{version.lower()}.json"


def _nullable(schema: Schema) -> Schema:
    """Let a field be null: YAML writes `key:` or `key: null` for empty optional values."""
    t = schema.get("type")
    if isinstance(t, str):
        return {**schema, "type": [t, "null"]}
    if isinstance(t, list) and "null" not in t:
        return {**schema, "type": [*t, "null"]}
    return schema


def _convert(node: Any, strict: bool, ref_prefix: str) -> Any:
    """Rewrite one swagger/OpenAPI v3 node into draft-07-ish JSON schema."""
    if isinstance(node, list):
        return [_convert(n, strict, ref_prefix) for n in node]
    if not isinstance(node, dict):
        return node
    out: Schema = {}
    for key, value in node.items():
        if key in DROP:
            continue
        if key == "$ref":
            out[key] = ref_prefix + value.rsplit("/", 1)[-1]
        elif key == "properties":
            out[key] = {
                name: _nullable(_convert(sub, strict, ref_prefix)) for name, sub in value.items()
            }
        else:
            out[key] = _convert(value, strict, ref_prefix)
    return _apply_extensions(out, strict)


def _apply_extensions(out: Schema, strict: bool) -> Schema:
    """Turn the x-kubernetes-* markers and `nullable` of a converted node into JSON schema."""
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["type"] = ["string", "integer"]
    if out.pop("nullable", False):
        out = _nullable(out)
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if (
        strict
        and not preserve
        and "properties" in out
        and "additionalProperties" not in out
        and out.get("type") in ("object", ["object", "null"], None)
    ):
        out["additionalProperties"] = False
    for key in [k for k in out if k.startswith("x-kubernetes-")]:
        del out[key]
    return out


def _reachable(defs: dict[str, Schema], root: str) -> set[str]:
    """Names of every definition `root` refers to, transitively (itself included)."""
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        stack: list[Any] = [defs[name]]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str):
                    todo.append(ref.rsplit("/", 1)[-1])
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    return seen


def k8s(swagger_path: Path, out: Path) -> int:
    """Write standalone (self-contained) schemas for every kind in `swagger_path`."""
    defs: dict[str, Schema] = json.loads(swagger_path.read_text())["definitions"]
    count = 0
    for strict, sub in ((False, "standalone"), (True, "standalone-strict")):
        folder = out / sub
        folder.mkdir(parents=True, exist_ok=True)
        converted = {
            name: SPECIAL[name] if name in SPECIAL else _convert(d, strict, "#/definitions/")
            for name, d in defs.items()
        }
        for name, d in defs.items():
            for gvk in d.get("x-kubernetes-group-version-kind", []):
                # Lists and the meta types (Status, WatchEvent...) are shared by many GVKs;
                # kubeconform only validates objects someone writes, so skip the shared ones.
                if len(d.get("x-kubernetes-group-version-kind", [])) > 1:
                    continue
                doc: Schema = {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    **converted[name],
                    "definitions": {n: converted[n] for n in sorted(_reachable(defs, name))},
                }
                target = folder / kind_file(gvk["kind"], gvk["group"], gvk["version"])
                target.write_text(json.dumps(doc, sort_keys=True))
                count += 1
    print(f"openapi2jsonschema: {count} schemas in {out}")
    return 0


def crd(out: Path, files: list[Path]) -> int:
    """Write one strict schema per served version of each CRD in `files`."""
    import yaml

    count = 0
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            group, kind = spec["group"], spec["names"]["kind"]
            for version in spec["versions"]:
                schema = (version.get("schema") or {}).get("openAPIV3Schema")
                if schema is None:
                    continue
                converted = _convert(schema, True, "#/definitions/")
                # The CRD schema rarely spells out metadata; the apiserver checks it anyway.
                props = converted.setdefault("properties", {})
                props.setdefault("apiVersion", {"type": "string"})
                props.setdefault("kind", {"type": "string"})
                props.setdefault("metadata", {"type": "object"})
                target = out / group / f"{kind.lower()}_{version['name']}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(converted, sort_keys=True))
                count += 1
    print(f"openapi2jsonschema: {count} CRD schemas in {out}")
    return 0


def main(argv: list[str]) -> int:
    """``k8s SWAGGER OUT`` or ``crd OUT CRD.yaml...``."""
    if len(argv) >= 3 and argv[0] == "k8s":
        return k8s(Path(argv[1]), Path(argv[2]))
    if len(argv) >= 3 and argv[0] == "crd":
        return crd(Path(argv[1]), [Path(a) for a in argv[2:]])
    sys.stderr.write("usage: openapi2jsonschema.py k8s SWAGGER OUT | crd OUT CRD.yaml...\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
