#!/usr/bin/env bash
# Builds both Debian packages into target/debian/ (needs cargo-deb: cargo install cargo-deb).
# PROFILE=dev NO_BUILD=1 packages the debug binaries already built (CI: the ones the tests just
# used, so nothing is built twice); a release build otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/debian/configs.sh
rm -f target/debian/holdfast-*.deb
for p in holdfast-agent holdfast-hub; do
  cargo deb --locked -p "$p" --profile "${PROFILE:-release}" ${NO_BUILD:+--no-build}
done
ls -l target/debian/*.deb
