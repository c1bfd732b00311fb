#!/usr/bin/env python3
"""Derives standalone, strict JSON schemas from a Kubernetes OpenAPI v2 spec.

Usage: k8s-json-schemas.py SWAGGER_JSON OUT_DIR

For every definition that names a group/version/kind, writes one schema with
every $ref inlined, in the file name kubeconform looks up
(<kind>-<group's first label>-<version>.json, or <kind>-<version>.json for the
core group). "Strict" means what kubeconform's -strict expects of its schemas:
an object that lists its properties admits no others, so a misspelt or
misplaced field in a manifest is an error instead of being ignored.

The two spec types whose JSON form is not what their declared type says are
rewritten: IntOrString (a string or an integer) and Quantity (a string or a
number, as `cpu: 1` is).
"""

import json
import os
import sys

INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
# Annotations that only carry server-side semantics; dropping them keeps the
# schemas readable and changes nothing a validator checks.
DROP_KEYS = {"x-kubernetes-patch-strategy", "x-kubernetes-patch-merge-key"}


def main(spec_path, out_dir):
    with open(spec_path, encoding="utf-8") as f:
        definitions = json.load(f)["definitions"]

    def special(name):
        if name == INT_OR_STRING:
            return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
        if name == QUANTITY:
            return {"oneOf": [{"type": "string"}, {"type": "number"}]}
        return None

    def inline(node, stack):
        if isinstance(node, list):
            return [inline(v, stack) for v in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            rewritten = special(name)
            if rewritten is not None:
                return rewritten
            if name in stack:
                # Only the CRD schema type (JSONSchemaProps) refers to itself;
                # below the first level it admits anything, as the API server does.
                return {}
            out = inline(definitions[name], stack | {name})
            if "description" in node:
                out = dict(out, description=node["description"])
            return out
        out = {}
        for key, value in node.items():
            if key in DROP_KEYS:
                continue
            if key in ("properties", "patternProperties"):
                out[key] = {k: inline(v, stack) for k, v in value.items()}
            else:
                out[key] = inline(value, stack)
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out

    os.makedirs(out_dir, exist_ok=True)
    written = 0
    for name, definition in sorted(definitions.items()):
        gvks = definition.get("x-kubernetes-group-version-kind")
        if not gvks:
            continue
        schema = inline(definition, {name})
        for gvk in gvks:
            group, version, kind = gvk["group"], gvk["version"], gvk["kind"]
            api_version = f"{group}/{version}" if group else version
            one = json.loads(json.dumps(schema))
            one["$schema"] = "http://json-schema.org/draft-07/schema#"
            props = one.setdefault("properties", {})
            if "apiVersion" in props:
                props["apiVersion"] = dict(props["apiVersion"], enum=[api_version])
            if "kind" in props:
                props["kind"] = dict(props["kind"], enum=[kind])
            suffix = f"{group.split('.')[0]}-{version}" if group else version
            path = os.path.join(out_dir, f"{kind.lower()}-{suffix.lower()}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(one, f, separators=(",", ":"), sort_keys=True)
            written += 1
    if written < 100:
        sys.exit(f"k8s-json-schemas: only {written} schemas derived from {spec_path}; is it a Kubernetes spec?")
    print(f"k8s-json-schemas: {written} schemas in {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
