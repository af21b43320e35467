#!/usr/bin/env bash
# Makes the packages' example configs from deploy/config/*.example.toml (one source for both):
# absolute paths under /var/lib/holdfast (the services' state directory) and /etc/holdfast.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/deb-assets
mkdir -p "$out"
header="# Installed by the Debian package as an example: edit it (plant, hub address, Odoo), then
# systemctl enable --now the service. Kept across upgrades (a conffile).
"
{ printf '%s' "$header"; sed -e 's|^path = "journal-plant-a.db"|path = "/var/lib/holdfast/journal.db"|' \
    -e 's|"certs/|"/etc/holdfast/certs/|' deploy/config/agent.example.toml; } > "$out/agent.toml"
{ printf '%s' "$header"; sed -e 's|^path = "hub.db"|path = "/var/lib/holdfast/hub.db"|' \
    -e 's|"certs/|"/etc/holdfast/certs/|' deploy/config/hub.example.toml; } > "$out/hub.toml"
grep -q '^path = "/var/lib/holdfast/journal.db"' "$out/agent.toml"
grep -q '^path = "/var/lib/holdfast/hub.db"' "$out/hub.toml"
! grep -q '"certs/' "$out/agent.toml" "$out/hub.toml"
