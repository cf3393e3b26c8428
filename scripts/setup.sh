#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test ember. Idempotent.
set -euo pipefail

# Rust components and the probe guest's bare-metal target.
rustup component add rustfmt clippy >/dev/null
rustup target add x86_64-unknown-none >/dev/null
# The probe guest is its own cargo workspace, built --offline by crates/ember-probe-image's
# build script: fetch its dependencies (smoltcp) here, where the network may be used.
(cd "$(dirname "$0")/../guest/ember-probe" && cargo fetch --locked -q)

# Debian packages the tests use (only when missing, so re-runs are quick):
# iproute2 (`ip netns`, TAP devices for the net device tests), util-linux (`unshare` for the
# no-KVM test; `setpriv`, which starts Firecracker-flavor VMMs with a parent-death signal).
# python3-venv: the e2b SDK's venv below. procps (`sysctl`): the net tests' and the virtio_net
# fuzz target's network namespaces. nftables (`nft`): ember-net's sandbox networks (NAT, egress
# policy, host isolation). iputils-ping: the probe guest's network tests ping it.
# debootstrap, e2fsprogs (mkfs.ext4, debugfs), busybox-static, cpio, kmod (depmod): `ember image
# build` and its tests (crates/ember-host/tests/image.rs).
packages=(iproute2 util-linux python3-venv procps nftables iputils-ping
  debootstrap e2fsprogs busybox-static cpio kmod)
need=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi

# The e2b SDK from PyPI, for the E2B-compatibility tests (crates/emberd/tests/e2b_sdk.rs).
venv=target/e2b-venv
e2b_version=2.63.0
if ! "$venv/bin/python" -c "import e2b, importlib.metadata as m; assert m.version('e2b') == '$e2b_version'" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "e2b==$e2b_version"
fi
