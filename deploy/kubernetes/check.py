#!/usr/bin/env python3
"""Validates the hub's Kubernetes manifests offline; any warning fails.

- Core objects (every *.yaml here) against Kubernetes' own schemas with kubernetes-validate
  --strict (unknown fields refused; a kind it has no schema for is a warning, so a failure).
- Traefik's resources (traefik/*.yaml but values.yaml) against the JSON schemas kept in
  traefik/schemas/, with jsonschema.
- What ties them together: the routes name the hub's Service and its ports with the right
  protocols, the UDP route's entry points are UDP entry points in traefik/values.yaml, and
  Traefik's UDP session timeout there is above the hub's sync.idle_timeout (hub-config.yaml),
  so Traefik never forgets a live QUIC connection.

Usage: check.py [DIR]   (DIR defaults to this file's folder; replicated/ is the variant of
several replicas on PostgreSQL). Exit 0 when everything holds.
"""

import json
import pathlib
import re
import subprocess
import sys
import tomllib

import jsonschema
import yaml

SCHEMAS = {
    "IngressRoute": "ingressroute.schema.json",
    "IngressRouteUDP": "ingressrouteudp.schema.json",
    "ServersTransport": "serverstransport.schema.json",
}


def seconds(text):
    """A duration as Traefik and the hub write it ("60s", "5m", "1h30m") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def name(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def core(root, problems):
    files = sorted(root.glob("*.yaml"))
    out = subprocess.run(
        ["kubernetes-validate", "--strict", *[str(f) for f in files]], capture_output=True, text=True
    )
    lines = (out.stdout + out.stderr).splitlines()
    for line in lines:
        if not line.startswith("INFO "):
            problems.append(line)
    if out.returncode != 0 and not problems:
        problems.append(f"kubernetes-validate exited {out.returncode}")
    return sum(1 for line in lines if line.startswith("INFO "))


def traefik(root, problems):
    # The schemas are kept once, beside this file (the replicated variant's folder uses them too).
    here = pathlib.Path(__file__).resolve().parent
    schemas = {kind: json.loads((here / "traefik" / "schemas" / file).read_text()) for kind, file in SCHEMAS.items()}
    resources = []
    for path in sorted((root / "traefik").glob("*.yaml")):
        if path.name == "values.yaml":
            continue
        for doc in docs(path):
            where = f"{path.relative_to(root)}: {name(doc)}"
            schema = schemas.get(doc.get("kind"))
            if schema is None:
                problems.append(f"{where}: no schema for this kind (known: {', '.join(sorted(SCHEMAS))})")
                continue
            validator = jsonschema.Draft202012Validator(schema)
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                at = "/".join(str(p) for p in e.absolute_path) or "(root)"
                problems.append(f"{where}: {at}: {e.message}")
            resources.append((where, doc))
    return resources


def coherence(root, resources, problems):
    services = {}
    pods_of = {}
    replicas = None
    hub_toml = None
    for path in sorted(root.glob("*.yaml")):
        for doc in docs(path):
            if doc.get("kind") == "Service":
                ports = {p["port"]: p.get("protocol", "TCP") for p in doc["spec"].get("ports", [])}
                services[doc["metadata"]["name"]] = ports
                pods_of[doc["metadata"]["name"]] = (doc["spec"].get("selector") or {}).get(
                    "statefulset.kubernetes.io/pod-name"
                )
            if doc.get("kind") == "StatefulSet":
                replicas = doc["spec"].get("replicas", 1)
            if doc.get("kind") == "ConfigMap" and "hub.toml" in doc.get("data", {}):
                hub_toml = tomllib.loads(doc["data"]["hub.toml"])
    values = yaml.safe_load((root / "traefik" / "values.yaml").read_text())
    entry = {k: v.get("protocol", "TCP") for k, v in (values.get("ports") or {}).items()}
    timeouts = {}
    for arg in values.get("additionalArguments") or []:
        m = re.fullmatch(r"--entryPoints\.([^.]+)\.udp\.timeout=(.+)", arg)
        if m:
            timeouts[m.group(1)] = seconds(m.group(2))
    if hub_toml is None:
        problems.append("no ConfigMap holds hub.toml")
        return
    idle = seconds(hub_toml["sync"].get("idle_timeout", "30s"))
    # One writer on SQLite; with PostgreSQL, every replica reachable for sync on a route of its own.
    store = hub_toml.get("store", {})
    if "path" in store and replicas != 1:
        problems.append(f"the StatefulSet has {replicas} replicas on a SQLite store (store.path): one writer only")
    if "postgres" in store:
        routed = set()
        for _, doc in resources:
            if doc["kind"] == "IngressRouteUDP":
                for route in doc["spec"].get("routes", []):
                    for svc in route.get("services", []):
                        routed.add(pods_of.get(svc["name"]))
        for i in range(replicas or 0):
            if f"holdfast-hub-{i}" not in routed:
                problems.append(
                    f"replica holdfast-hub-{i} has no UDP route of its own (an IngressRouteUDP to a Service "
                    "selecting its pod): QUIC datagrams must reach the replica holding the connection"
                )
        if "{name}" not in hub_toml.get("cluster", {}).get("advertise", "{name}"):
            problems.append("cluster.advertise: every replica reads this file; give {name} so each advertises its own address")
    for where, doc in resources:
        udp = doc["kind"] == "IngressRouteUDP"
        if doc["kind"] == "ServersTransport":
            continue
        for ep in doc["spec"].get("entryPoints", []):
            want = "UDP" if udp else "TCP"
            if entry.get(ep) != want:
                problems.append(f"{where}: entry point {ep!r} is not a {want} port in traefik/values.yaml")
            if udp:
                t = timeouts.get(ep, 3)  # Traefik's default
                if t <= idle:
                    problems.append(
                        f"traefik/values.yaml: entry point {ep!r}: the UDP session timeout ({t:g} s) must be "
                        f"above the hub's sync.idle_timeout ({idle:g} s), or Traefik drops live QUIC connections"
                    )
        for route in doc["spec"].get("routes", []):
            for svc in route.get("services", []):
                ports = services.get(svc["name"])
                want = "UDP" if udp else "TCP"
                if ports is None:
                    problems.append(f"{where}: no Service {svc['name']!r} among the manifests")
                elif ports.get(svc["port"]) != want:
                    problems.append(f"{where}: Service {svc['name']!r} has no {want} port {svc['port']}")


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent)
    problems = []
    objects = core(root, problems)
    resources = traefik(root, problems)
    if not problems:
        coherence(root, resources, problems)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"ok: {objects} core objects, {len(resources)} Traefik resources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
