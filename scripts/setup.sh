#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test ember. Idempotent.
set -euo pipefail

# Rust components and the probe guest's bare-metal target.
rustup component add rustfmt clippy >/dev/null
rustup target add x86_64-unknown-none >/dev/null

# Debian packages the tests use (only when missing, so re-runs are quick):
# iproute2 (`ip netns`, TAP devices for the net device tests), util-linux (`unshare` for the
# no-KVM test; `setpriv`, which starts Firecracker-flavor VMMs with a parent-death signal).
packages=(iproute2 util-linux)
need=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
