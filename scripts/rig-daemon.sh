#!/usr/bin/env bash
# The daemon rig: emberd serving Linux sandboxes inside the nested rig, driven from this host
# through its API, its CLI and the unmodified `e2b` SDK.
#
# This host's /dev/kvm cannot run a stock Linux kernel, so (as in scripts/linux-rig.sh) an L1
# Debian cloud kernel boots under QEMU's TCG with kvm-amd loaded. Here L1 runs the real
# daemon: static emberd, ember-jailer and ember-vmm from a read-only data disk, its state on
# L1's tmpfs, its API, E2B API and envd ports forwarded to this host's loopback by QEMU. The
# Linux guest is an image from `ember image build` (Debian bookworm, bash, coreutils, python3,
# ember-agent as PID 1, a read-only ext4 root under an in-memory overlay).
#
# From the host, with the `ember` CLI: build the template (boot, agent Health, pause,
# snapshot), give it a warm pool, create a sandbox (a warm handoff of a restored clone), run
# commands in it (uname, python3, bash -l, a failing command), move a file in and out; then the
# E2B SDK script crates/emberd/tests/e2b/sdk_linux.py when RIG_E2B is not 0 (commands, files,
# pause/resume, a `python3 -m http.server` reached through E2b-Sandbox-Port forwarding,
# concurrent clients). As a reference
# figure, QEMU's own boot of the same image under TCG (no nesting) to its agent, first.
#
# Usage: scripts/rig-daemon.sh      prints one JSON summary line last ("passed", "failed"
#                                   checks, stage seconds) and exits non-zero if a check failed.
# Env:   RIG_DIR (default target/rig), RIG_TIMEOUT (seconds for the whole QEMU run, default
#        1200), RIG_L2_MEM_MIB (guest memory, default 256), RIG_POOL_DEPTH (default 2),
#        RIG_E2B (run the SDK script; default 1), RIG_E2B_CLIENTS (its concurrent clients,
#        default 4), RIG_IMAGE_PACKAGES (default: the image
#        builder's own), RIG_IMAGE_DIR (use this built image instead), RIG_KEEP=1 (leave QEMU running at the end, for poking at it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RIG="${RIG_DIR:-$ROOT/target/rig}"
TIMEOUT="${RIG_TIMEOUT:-1200}"
L2_MEM="${RIG_L2_MEM_MIB:-256}"
POOL_DEPTH="${RIG_POOL_DEPTH:-2}"
RUN_E2B="${RIG_E2B:-1}"
# SDK clients at once: each L2 vCPU is emulated by TCG in L1 on the host's 2 CPUs, so 16 Linux
# guests resuming at once outrun the agents' time limits here, and 4 did once in CI (an agent's
# Hello took over 10 s); 2 (the pool's depth: both creates warm) hold. The host's e2b_sdk test
# runs 16 clients on probe guests.
E2B_CLIENTS="${RIG_E2B_CLIENTS:-2}"
T_START=$EPOCHREALTIME
mkdir -p "$RIG"
RIG_EXTRA_PACKAGES="debootstrap"
. "$ROOT/scripts/rig-common.sh"

# --- 3. static binaries for L1 (and the CLI for this host) ------------------------------
log "building ember-vmm, ember-jailer, emberd, ember-agent and ember (release, static)"
T_BUILD0=$EPOCHREALTIME
build_static
for b in ember-vmm ember-jailer emberd ember-agent; do
    file "$BIN/$b" | grep -q "static" || fail_json "$b is not statically linked"
done
EMBER="$BIN/ember"
T_BUILD=$EPOCHREALTIME

# --- 4. the Linux image ------------------------------------------------------------------
log "building the Linux image (ember image build; cached by content hash)"
image_args=(--agent "$BIN/ember-agent" --cache-dir "$RIG/images")
[ -n "${RIG_IMAGE_PACKAGES:-}" ] && image_args+=(--packages "$RIG_IMAGE_PACKAGES")
if [ -n "${RIG_IMAGE_DIR:-}" ]; then
    cp "$RIG_IMAGE_DIR/image.json" "$RIG/image.json"
else
    "$EMBER" --json image build "${image_args[@]}" >"$RIG/image.json" ||
        fail_json "ember image build failed"
fi
IMAGE_DIR=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dir"])' "$RIG/image.json")
[ -f "$IMAGE_DIR/rootfs.ext4" ] || fail_json "the image has no rootfs.ext4"
T_IMAGE=$EPOCHREALTIME

# --- 4b. a reference: QEMU's own boot of the same image under TCG (no nesting), to the agent --
# (`-M microvm` describes its virtio-mmio devices in ACPI, as ember-vmm does; the kernel needs
# its TSC frequency given under TCG.) Seconds from QEMU's start to "ember-agent serving".
log "reference: QEMU (TCG, -M microvm) boots the image to its agent"
QEMU_REF=null
ref_t0=$EPOCHREALTIME
while IFS= read -r line; do
    case "$line" in *"ember-agent serving"*)
        QEMU_REF=$(elapsed "$ref_t0" "$EPOCHREALTIME")
        pkill -f "microvm,acpi=on.*$IMAGE_DIR" || true
        break ;;
    esac
done < <(timeout 120 qemu-system-x86_64 -M microvm,acpi=on -accel tcg -cpu max -m "$L2_MEM" -smp 1 \
    -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -kernel "$IMAGE_DIR/vmlinuz" -initrd "$IMAGE_DIR/initrd.img" \
    -drive "id=root,file=$IMAGE_DIR/rootfs.ext4,format=raw,if=none,readonly=on" \
    -device virtio-blk-device,drive=root \
    -append "console=ttyS0 reboot=k panic=-1 quiet loglevel=3 tsc_early_khz=2000000 lpj=4000000 no_timer_check" \
    </dev/null 2>&1)
log "QEMU reference boot to agent: ${QEMU_REF} s"

# --- 5. L1's data disk (binaries, the image, credentials) and its initramfs ----------------
DATA="$RIG/l1-data"
rm -rf "$DATA" && mkdir -p "$DATA/image"
for b in ember-vmm ember-jailer emberd; do
    strip -o "$DATA/$b" "$BIN/$b" 2>/dev/null || cp "$BIN/$b" "$DATA/$b"
done
for f in vmlinuz initrd.img rootfs.ext4; do cp "$IMAGE_DIR/$f" "$DATA/image/$f"; done
TOKEN="rig-token-$$-$RANDOM"
E2B_KEY="e2b_rig_$$_$RANDOM"
echo "$TOKEN" >"$DATA/token"
echo "$E2B_KEY" >"$DATA/e2b-keys"
chmod 600 "$DATA/token" "$DATA/e2b-keys"
data_mib=$(($(du -sm "$DATA" | cut -f1) + 64))
rm -f "$RIG/l1-data.ext4"
mkfs.ext4 -q -F -d "$DATA" -L rigdata "$RIG/l1-data.ext4" "${data_mib}M" >&2

L1ROOT="$RIG/l1d-root"
mk_busybox_root "$L1ROOT"
modules_for kvm-amd tun virtio_pci virtio_blk virtio_net
L1_MODULES=""
for f in "${ORDERED[@]}"; do
    cp "$f" "$L1ROOT/lib/modules/"
    L1_MODULES+=" $(basename "$f")"
done
cat >"$L1ROOT/init" <<EOF
#!/bin/sh
# The jailer's pivot_root cannot leave the initial ramfs (EINVAL): like a host booted from
# disk, L1 first moves into a tmpfs root.
if [ ! -e /.in-tmpfs ]; then
    /bin/busybox mkdir -p /newroot
    /bin/busybox mount -t tmpfs -o mode=0755 root /newroot
    /bin/busybox cp -a /bin /lib /init /newroot/
    /bin/busybox mkdir -p /newroot/dev /newroot/proc /newroot/sys /newroot/tmp /newroot/run
    /bin/busybox touch /newroot/.in-tmpfs
    exec /bin/busybox switch_root /newroot /init
fi
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "RIG-L1-INIT uptime=\$(cut -d' ' -f1 /proc/uptime)"
for m in $L1_MODULES; do insmod /lib/modules/\$m || echo "RIG-L1-INSMOD-FAILED \$m"; done
[ -e /dev/kvm ] && echo "RIG-L1-KVM-READY" || echo "RIG-L1-NO-KVM"
mkdir -p /data /sys/fs/cgroup /run/ember
mount -t ext4 -o ro /dev/vda /data || echo "RIG-L1-NO-DATA"
# cgroup v2, as modern hosts mount it: the jailer puts each VMM in its own group.
mount -t cgroup2 none /sys/fs/cgroup || echo "RIG-L1-NO-CGROUP2"
echo "+cpu +memory +pids" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
ifconfig lo 127.0.0.1 up
ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up && route add default gw 10.0.2.2
echo "RIG-L1-HOST-CPU \$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
echo "RIG-L1-EMBERD-START uptime=\$(cut -d' ' -f1 /proc/uptime)"
/data/emberd --socket /run/ember/ember.sock --listen 0.0.0.0:7070 --token-file /data/token \\
    --state-dir /run/ember/state --runtime-dir /run/ember/vms \\
    --vmm /data/ember-vmm --jailer /data/ember-jailer --spares 2 \\
    --e2b-api 0.0.0.0:3000 --e2b-api-key-file /data/e2b-keys --e2b-envd 0.0.0.0:49983 \\
    --log-level warn 2>&1 | sed 's/^/RIG-L1-EMBERD /' &
while :; do sleep 3600; done
EOF
chmod +x "$L1ROOT/init"
(cd "$L1ROOT" && find . | cpio -o -H newc --quiet) >"$RIG/l1d-initramfs.cpio"
T_PREP=$EPOCHREALTIME

# --- 6. L1 under TCG, its daemon's ports on this host's loopback -------------------------
read -r P_API P_E2B P_ENVD < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
LOG="$RIG/daemon-console.log"
log "booting L1 under QEMU TCG (log: $LOG; API on 127.0.0.1:$P_API)"
T_QEMU=$EPOCHREALTIME
timeout "$TIMEOUT" qemu-system-x86_64 -M q35 -accel tcg -cpu max -smp 2 -m 4096 \
    -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -kernel "$VMLINUZ" -initrd "$RIG/l1d-initramfs.cpio" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3" \
    -drive "file=$RIG/l1-data.ext4,if=virtio,format=raw,readonly=on" \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$P_API-:7070,hostfwd=tcp:127.0.0.1:$P_E2B-:3000,hostfwd=tcp:127.0.0.1:$P_ENVD-:49983" \
    -device virtio-net-pci,netdev=n0 </dev/null 2>&1 |
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "${line//$'\r'/}"; done >"$LOG" &
QEMU_PID=$!
stop_qemu() {
    [ "${RIG_KEEP:-0}" = 1 ] && return 0
    pkill -f "l1d-initramfs.cpio" 2>/dev/null || true
    wait "$QEMU_PID" 2>/dev/null || true
}
trap stop_qemu EXIT

export EMBER_HOST="http://127.0.0.1:$P_API"
export EMBER_TOKEN_FILE="$DATA/token"
RESULTS="$RIG/daemon-results"
rm -rf "$RESULTS" && mkdir -p "$RESULTS"
# step NAME TIMEOUT CMD...: runs CMD, keeps its stdout, stderr, exit code and seconds.
step() {
    local name=$1 limit=$2 t0 rc
    shift 2
    t0=$EPOCHREALTIME
    set +e
    timeout "$limit" "$@" >"$RESULTS/$name.out" 2>"$RESULTS/$name.err"
    rc=$?
    set -e
    echo "$rc" >"$RESULTS/$name.rc"
    elapsed "$t0" "$EPOCHREALTIME" >"$RESULTS/$name.s"
    log "$name: rc=$rc ($(cat "$RESULTS/$name.s") s) $(head -c 200 "$RESULTS/$name.out" | tr '\n' ' ')"
    return 0
}
out() { cat "$RESULTS/$1.out" 2>/dev/null; }
rc() { cat "$RESULTS/$1.rc" 2>/dev/null || echo none; }
secs() { cat "$RESULTS/$1.s" 2>/dev/null || echo null; }

# emberd answers once L1 booted, loaded kvm-amd and started it.
n=0
until "$EMBER" info >/dev/null 2>&1; do
    n=$((n + 1))
    [ $n -gt 600 ] && break
    kill -0 "$QEMU_PID" 2>/dev/null || break
    sleep 0.5
done
T_DAEMON=$EPOCHREALTIME
step info 30 "$EMBER" info
if [ "$(rc info)" != 0 ]; then
    grep "RIG-L1-" "$LOG" | tail -30 >&2 || true
    fail_json "emberd in L1 did not answer (see $LOG)"
fi

# The template: boot the image, wait for the agent, pause, snapshot.
boot_args=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["template"]["guest"]["boot_args"])' "$RIG/image.json")
step template 600 "$EMBER" --json template build linux --kernel /data/image/vmlinuz \
    --initrd /data/image/initrd.img --rootfs /data/image/rootfs.ext4 --rootfs-read-only \
    --guest-agent-port 52 --boot-timeout 300s --mem "$L2_MEM" --vcpus 1 --boot-args "$boot_args"
step pool 600 "$EMBER" pool set linux --min "$POOL_DEPTH"
step create 120 "$EMBER" run linux --label rig=daemon
SB=$(out create | tr -d '[:space:]')
step uname 120 "$EMBER" exec "$SB" -- uname -a
step python 120 "$EMBER" exec "$SB" -- python3 -c 'print(2+2)'
step bash_home 120 "$EMBER" exec "$SB" -- bash -lc 'echo $HOME'
step failing 120 "$EMBER" exec "$SB" -- sh -c 'echo oops >&2; exit 3'
head -c 1048576 /dev/urandom >"$RESULTS/blob"
step cp_in 120 "$EMBER" cp "$RESULTS/blob" "$SB:/tmp/blob"
step sha_guest 120 "$EMBER" exec "$SB" -- sha256sum /tmp/blob
step cp_out 120 "$EMBER" cp "$SB:/tmp/blob" "$RESULTS/blob.back"
step create2 120 "$EMBER" run linux --label rig=daemon
SB2=$(out create2 | tr -d '[:space:]')
step urandom1 120 "$EMBER" exec "$SB" -- sh -c 'head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n"'
step urandom2 120 "$EMBER" exec "$SB2" -- sh -c 'head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n"'
step clock 120 "$EMBER" exec "$SB2" -- date +%s
HOST_DATE=$(date +%s)
step pools 30 "$EMBER" --json pool ls
step kill 120 "$EMBER" rm "$SB" "$SB2"

# The unmodified e2b SDK against emberd's E2B API and envd, in the rig's Linux guests.
if [ "$RUN_E2B" != 0 ]; then
    PY="${EMBER_E2B_PYTHON:-$ROOT/target/e2b-venv/bin/python}"
    if [ -x "$PY" ]; then
        E2B_API_URL="http://127.0.0.1:$P_E2B" E2B_SANDBOX_URL="http://127.0.0.1:$P_ENVD" \
            E2B_API_KEY="$E2B_KEY" E2B_TEMPLATE=linux E2B_CONCURRENCY="$E2B_CLIENTS" \
            step e2b 900 "$PY" "$ROOT/crates/emberd/tests/e2b/sdk_linux.py"
    else
        echo "no python with the e2b SDK at $PY (scripts/setup.sh makes target/e2b-venv)" >"$RESULTS/e2b.err"
        echo 127 >"$RESULTS/e2b.rc"
    fi
fi
step left 30 "$EMBER" --json ls
T_END=$EPOCHREALTIME
stop_qemu

# --- 7. summary --------------------------------------------------------------------------
failed=()
[ "$(rc info)" = 0 ] || failed+=(daemon_up)
[ "$(rc template)" = 0 ] || failed+=(template_build)
[ "$(rc pool)" = 0 ] || failed+=(pool_filled)
[ "$(rc create)" = 0 ] && [ -n "$SB" ] || failed+=(sandbox_create)
[ "$(rc uname)" = 0 ] && out uname | grep -q "^Linux " || failed+=(exec_uname)
[ "$(rc python)" = 0 ] && [ "$(out python)" = 4 ] || failed+=(exec_python3)
[ "$(rc bash_home)" = 0 ] && [ "$(out bash_home)" = /root ] || failed+=(exec_bash_login)
[ "$(rc failing)" = 3 ] && grep -q oops "$RESULTS/failing.err" || failed+=(exec_exit_code)
sha=$(sha256sum "$RESULTS/blob" | cut -d' ' -f1)
[ "$(rc cp_in)" = 0 ] && out sha_guest | grep -q "^$sha " && cmp -s "$RESULTS/blob" "$RESULTS/blob.back" ||
    failed+=(file_round_trip)
[ "$(rc urandom1)" = 0 ] && [ "$(rc urandom2)" = 0 ] && [ -n "$(out urandom1)" ] &&
    [ "$(out urandom1)" != "$(out urandom2)" ] || failed+=(clones_draw_different_bytes)
guest_date=$(out clock | tr -cd '0-9')
awk -v g="${guest_date:-0}" -v h="$HOST_DATE" 'BEGIN { d = g - h; exit !(d <= 2 && d >= -2) }' ||
    failed+=(clone_clock)
[ "$(rc kill)" = 0 ] || failed+=(kill)
if [ "$RUN_E2B" != 0 ]; then [ "$(rc e2b)" = 0 ] || failed+=(e2b_sdk); fi
grep -q "RIG-L1-EMBERD .*panicked" "$LOG" && failed+=(daemon_panic)
grep -q "Kernel panic" "$LOG" && failed+=(l1_kernel_panic)
pool_json=$(out pools | tr -d '\n')
template_json=$(out template | tr -d '\n')
failed_json=$(printf '"%s", ' "${failed[@]}" | sed 's/, $//')
[ ${#failed[@]} -gt 0 ] || failed_json=""
e2b_json=$(tail -1 "$RESULTS/e2b.out" 2>/dev/null | grep '^{' || echo null)
printf '{"passed": %s, "failed": [%s], "seconds": {"total": %s, "build": %s, "image": %s, "prep": %s, "qemu_to_daemon_up": %s, "template_build": %s, "pool_fill": %s, "create": %s, "first_exec": %s, "python3": %s, "create2": %s, "e2b": %s, "qemu_tcg_boot_to_agent": %s, "template_boot_to_agent": %s}, "uname": "%s", "template": %s, "pools": %s, "e2b": %s, "host_cpu": "%s", "host_kernel": "%s", "log": "%s", "results": "%s"}\n' \
    "$([ ${#failed[@]} -eq 0 ] && echo true || echo false)" "$failed_json" \
    "$(elapsed "$T_START" "$T_END")" "$(elapsed "$T_BUILD0" "$T_BUILD")" "$(elapsed "$T_BUILD" "$T_IMAGE")" \
    "$(elapsed "$T_IMAGE" "$T_PREP")" "$(elapsed "$T_QEMU" "$T_DAEMON")" "$(secs template)" \
    "$(secs pool)" "$(secs create)" "$(secs uname)" "$(secs python)" "$(secs create2)" "$(secs e2b)" \
    "$QEMU_REF" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["build"]["boot_to_agent_ms"] / 1000)' "$RESULTS/template.out" 2>/dev/null || echo null)" \
    "$(out uname | head -1 | sed 's/"/\\"/g')" "${template_json:-null}" "${pool_json:-null}" "$e2b_json" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" "$(uname -r)" "$LOG" "$RESULTS"
if [ ${#failed[@]} -gt 0 ]; then
    for f in "$RESULTS"/*.err; do [ -s "$f" ] && sed "s|^|$(basename "$f" .err): |" "$f" | head -20 >&2; done
    grep "RIG-L1-EMBERD \|RIG-L1-.*FAILED\|RIG-L1-NO" "$LOG" | tail -40 >&2 || true
fi
[ ${#failed[@]} -eq 0 ]
