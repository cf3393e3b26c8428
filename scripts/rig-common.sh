# Shared by the rig scripts (scripts/linux-rig.sh, scripts/rig-daemon.sh): sourced, not run.
#
# Expects ROOT (the repository) and RIG (the cache and work dir) set, and `set -euo pipefail`.
# Installs the host packages the rigs need (RIG_EXTRA_PACKAGES adds more), downloads and unpacks
# Debian's cloud kernel (VMLINUZ, KVER, MODDIR), and offers: log, elapsed, fail_json,
# modules_for (module files with their dependencies first, in ORDERED), mk_busybox_root,
# add_dynamic_binary, build_static and l1_dump (where a silent L1's CPUs are).

log() { printf 'rig: %s\n' "$*" >&2; }
# L1's CPU: QEMU's `max` model (AMD SVM with nested paging) without virtual GIF. With vGIF,
# QEMU 7.2's TCG let L1 take a timer interrupt on the instruction after its VMRUN returned,
# while GIF should still hold it off and GS still had the L2 guest's value: the handler's
# per-CPU access faulted, recursively, until L1's kernel overflowed its stack ("BUG: TASK stack
# guard page was hit" in svm_vcpu_enter_exit): the daemon rig lost L1 so in 4 of 8 runs on
# 2026-12-06, none in the 6 runs since without vGIF, where L1's kvm-amd tracks L2's GIF itself.
L1_CPU="max,vgif=off"
# QEMU's accelerator for L1 (RIG_L1_ACCEL). "tcg,thread=single" (both L1 vCPUs on one host
# thread, to rule out MTTCG races under the faults above) made L1 too slow to use: emberd took
# 60 s to answer instead of 6 and the template's boot did not finish in 300 s.
L1_ACCEL="${RIG_L1_ACCEL:-tcg}"
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
fail_json() {
    printf '{"booted": false, "error": "%s"}\n' "$1"
    exit 1
}

# --- 1. host packages --------------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q "statically linked" \
    || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v modinfo >/dev/null || need+=(kmod)
command -v file >/dev/null || need+=(file)
command -v strip >/dev/null || need+=(binutils)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
for p in ${RIG_EXTRA_PACKAGES:-}; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
BUSYBOX=/bin/busybox
file -L "$BUSYBOX" | grep -q "statically linked" || fail_json "busybox is not static"

# --- 2. the Debian cloud kernel (not installed: downloaded and unpacked) ------------------
KDIR="$RIG/kernel"
if ! ls "$KDIR"/boot/vmlinuz-* >/dev/null 2>&1; then
    log "downloading linux-image-cloud-amd64"
    mkdir -p "$RIG/deb" && rm -rf "$KDIR"
    (cd "$RIG/deb" && apt-get download linux-image-cloud-amd64 >&2)
    meta=$(ls -t "$RIG"/deb/linux-image-cloud-amd64_*.deb | head -1)
    real=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | grep -o 'linux-image-[0-9][^ ]*' | head -1)
    [ -n "$real" ] || fail_json "cannot find the kernel package linux-image-cloud-amd64 depends on"
    (cd "$RIG/deb" && apt-get download "$real" >&2)
    dpkg -x "$(ls -t "$RIG"/deb/"$real"_*.deb | head -1)" "$KDIR"
fi
VMLINUZ=$(ls "$KDIR"/boot/vmlinuz-* | head -1)
KVER=${VMLINUZ##*/vmlinuz-}
MODDIR="$KDIR/lib/modules/$KVER/kernel"
T_KERNEL=$EPOCHREALTIME

# Module files with their dependencies first (the package has no modules.dep).
modpath() { find "$MODDIR" -name "$1.ko" -print -quit; }
declare -A SEEN=()
ORDERED=()
add_module() {
    local name="${1//-/_}" f dep
    [ -n "${SEEN[$name]:-}" ] && return 0
    SEEN[$name]=1
    f=$(modpath "$1")
    [ -n "$f" ] || f=$(modpath "${1//_/-}")
    [ -n "$f" ] || fail_json "module $1 not found in $KVER"
    for dep in $(modinfo -F depends "$f" | tr ',' ' '); do add_module "$dep"; done
    ORDERED+=("$f")
}
modules_for() {
    SEEN=()
    ORDERED=()
    for m in "$@"; do add_module "$m"; done
}


# mk_busybox_root DIR: a fresh root with the host's static busybox as /bin/sh.
mk_busybox_root() {
    local dir=$1
    rm -rf "$dir"
    mkdir -p "$dir"/{bin,dev,proc,sys,tmp,run,lib/modules}
    cp "$BUSYBOX" "$dir/bin/busybox"
    ln -s busybox "$dir/bin/sh"
}

# add_dynamic_binary DIR PROGRAM: copies this host's PROGRAM (a dynamically linked executable)
# into the root DIR at the same path, with every library `ldd` resolves and the ELF interpreter at
# their own paths, so it runs there as it does here (L1 has no package manager, and Debian's
# tools such as nft have no static build).
add_dynamic_binary() {
    local dir=$1 prog f
    prog=$(command -v "$2") || fail_json "$2 is not installed on this host"
    prog=$(readlink -f "$prog")
    mkdir -p "$dir$(dirname "$prog")"
    cp "$prog" "$dir$prog"
    # ldd prints "name => /path (addr)" for libraries and "/path (addr)" for the interpreter.
    for f in $(ldd "$prog" | grep -o '/[^ ]*'); do
        mkdir -p "$dir$(dirname "$f")"
        cp -L "$f" "$dir$f"
    done
}

# build_static: every static binary either rig needs, in one cargo invocation (the same package
# selection in both rigs, so features unify alike and the second rig's build is a no-op; with
# different selections cargo would build ember-vmm and ember-agent twice). Sets BIN.
build_static() {
    local target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
    (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release -p ember-vmm -p ember-jailer -p emberd -p ember-agent -p ember \
        --bin ember-vmm --bin ember-jailer --bin emberd --bin ember-agent --bin ember-agent-call \
        --bin ember --target x86_64-unknown-linux-gnu >&2)
    BIN="$target_dir/x86_64-unknown-linux-gnu/release"
}

# l1_dump SOCK OUT: asks L1's QEMU, through its human monitor on the Unix socket SOCK, where its
# CPUs are (`info cpus`, `info registers -a`) and writes the answers to OUT, each CPU's RIP
# followed by the nearest symbol of the L1 kernel's System.map (L1 boots with `nokaslr`, so
# the addresses are the map's). For a rig whose L1 went silent: a guest spinning somewhere
# shows where; a QEMU that does not answer within 10 s says the emulator itself hung.
l1_dump() {
    local sock=$1 out=$2
    local map
    map=$(ls "$KDIR"/boot/System.map-* 2>/dev/null | head -1)
    timeout 20 python3 - "$sock" "$map" >"$out" 2>&1 <<'PY' || echo "rig: the L1 monitor did not answer (QEMU hung?)" >>"$out"
import bisect, re, socket, sys
sock_path, map_path = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sock_path)
def until_prompt():
    buf = b""
    while not buf.endswith(b"(qemu) "):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace")
until_prompt()
text = ""
for cmd in ("info cpus", "info registers -a"):
    s.sendall(cmd.encode() + b"\n")
    # (the monitor echoes what it is sent with terminal escapes: those lines go)
    answer = "\n".join(l for l in until_prompt().splitlines() if "\x1b" not in l)
    text += f"### {cmd}\n{answer}\n"
print(text)
syms = []
if map_path:
    for line in open(map_path):
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            syms.append((int(parts[0], 16), parts[2]))
    syms.sort()
addrs = [a for a, _ in syms]
for rip in re.findall(r"RIP=([0-9a-f]{16})", text):
    r = int(rip, 16)
    i = bisect.bisect_right(addrs, r) - 1
    where = f"{syms[i][1]}+{r - syms[i][0]:#x}" if i >= 0 and syms else "?"
    print(f"L1 CPU RIP {rip} {where}")
PY
}
