#!/usr/bin/env python3
"""Checks that Cairn's crate dependencies point the way STYLE.md section 2 says.

Reads `cargo metadata` (normal and build dependencies; dev-dependencies may reach further, as
tests do) and fails with one line per broken rule.
"""
import json
import subprocess
import sys

# (crate, crates it must never depend on, why)
RULES = [
    ("cairn-common", {"*"}, "common is the bottom of the graph"),
    ("cairn-gateway-s3", {"cairn-storage-node", "cairn-metadata"}, "gateways reach the cluster through client"),
    ("cairn-gateway-iscsi", {"cairn-storage-node", "cairn-metadata"}, "gateways reach the cluster through client"),
    ("cairn-gateway-nfs", {"cairn-storage-node", "cairn-metadata"}, "gateways reach the cluster through client"),
    ("cairn-client", {"cairn-storage-node", "cairn-metadata"}, "the client speaks to the cluster in common messages"),
    ("cairn-storage-node", {"cairn-metadata"}, "storage-node and metadata talk in common messages"),
    ("cairn-metadata", {"cairn-storage-node"}, "storage-node and metadata talk in common messages"),
]
# Nothing but themselves may depend on these.
LEAVES = {"cairn-chaos", "cairn-benches"}


def main() -> int:
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
        check=True, capture_output=True, text=True,
    ).stdout
    packages = {p["name"]: p for p in json.loads(out)["packages"]}
    ours = set(packages)
    deps = {
        name: {d["name"] for d in p["dependencies"] if d["name"] in ours and d.get("kind") != "dev"}
        for name, p in packages.items()
    }
    errors = []
    for crate, banned, why in RULES:
        if crate not in deps:
            errors.append(f"{crate}: not in the workspace (rule list out of date)")
            continue
        bad = deps[crate] if "*" in banned else deps[crate] & banned
        errors += [f"{crate} depends on {d}: {why}" for d in sorted(bad)]
    for crate, uses in deps.items():
        errors += [f"{crate} depends on {d}: nothing may depend on {d}" for d in sorted(uses & LEAVES)]
    for error in errors:
        print(f"crate graph: {error}", file=sys.stderr)
    if not errors:
        print(f"crate graph: {len(deps)} crates, dependencies point one way")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
