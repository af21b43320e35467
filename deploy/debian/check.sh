#!/usr/bin/env bash
# Installs the packages built by build.sh, checks what they put where, runs check-config on the
# installed example configs (with certificates made by the installed hub), then purges them.
# Needs root (CI runs it); leaves the machine as it found it, but for /var/lib/holdfast.
set -euo pipefail
cd "$(dirname "$0")/../.."
agent=$(ls target/debian/holdfast-agent_*.deb)
hub=$(ls target/debian/holdfast-hub_*.deb)
fail() { echo "package check: $*" >&2; exit 1; }
dpkg -i "$agent" "$hub" >/dev/null
getent passwd holdfast >/dev/null || fail "no holdfast user"
[ "$(stat -c %U /var/lib/holdfast)" = holdfast ] || fail "/var/lib/holdfast is not the holdfast user's"
for p in holdfast-agent holdfast-hub; do
  [ -x /usr/bin/$p ] || fail "/usr/bin/$p missing"
  [ -f /lib/systemd/system/$p.service ] || fail "$p.service missing"
  [ -f /usr/lib/sysctl.d/60-$p.conf ] || fail "the sysctl drop-in of $p missing"
done
dpkg-query -W -f='${Conffiles}\n' holdfast-agent | grep -q '/etc/holdfast/agent.toml' || fail "agent.toml is not a conffile"
dpkg-query -W -f='${Conffiles}\n' holdfast-hub | grep -q '/etc/holdfast/hub.toml' || fail "hub.toml is not a conffile"
[ "$(stat -c %a /etc/holdfast/agent.toml)" = 640 ] || fail "agent.toml is not 0640"
holdfast-hub certs init --dir /etc/holdfast/certs --hub-name localhost >/dev/null
holdfast-hub certs issue --dir /etc/holdfast/certs --plant plant-a >/dev/null
holdfast-agent check-config --config /etc/holdfast/agent.toml
holdfast-hub check-config --config /etc/holdfast/hub.toml
dpkg --purge holdfast-agent holdfast-hub >/dev/null
rm -rf /etc/holdfast/certs
rmdir /etc/holdfast 2>/dev/null || true
for p in holdfast-agent holdfast-hub; do
  [ ! -e /usr/bin/$p ] || fail "/usr/bin/$p left after purge"
  [ ! -e /etc/holdfast/${p#holdfast-}.toml ] || fail "the conffile of $p left after purge"
done
echo "packages: installed, checked, purged"
