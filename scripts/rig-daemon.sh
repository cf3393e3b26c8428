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
# Sandbox networks (RIG_NET, default 1): emberd runs with --sandbox-network (Debian's dynamic
# `nft` and its libraries copied into L1, the netfilter modules loaded), and a second template
# `linuxnet` (the same image, built with --network) serves sandboxes that use real tools (curl,
# ping) against a test host: this host as L1 sees it through QEMU's user network (10.0.2.2),
# two small HTTP servers on this host's loopback, one a policy allows and one it does not.
# Checked: a sandbox reaches the test host and pings it; another sandbox's address and L1's own
# services (emberd's API) are out of reach; `--egress deny --allow HOST:PORT/tcp` reaches that
# port only, `--egress deny` nothing; a policy changed at runtime (`ember network ID ...`) takes
# effect on the next connection, both ways.
#
# Usage: scripts/rig-daemon.sh      prints one JSON summary line last ("passed", "failed"
#                                   checks, stage seconds) and exits non-zero if a check failed.
# Env:   RIG_DIR (default target/rig), RIG_TIMEOUT (seconds for the whole QEMU run, default
#        1200), RIG_L2_MEM_MIB (guest memory, default 256), RIG_POOL_DEPTH (default 2),
#        RIG_E2B (run the SDK script; default 1), RIG_E2B_CLIENTS (its concurrent clients,
#        default 8; 16 Linux guests resuming at once outrun even a 60 s agent wait under TCG),
#        RIG_IMAGE_PACKAGES (default: the image builder's own plus curl and
#        iputils-ping), RIG_NET (the sandbox network checks; default 1), RIG_IMAGE_DIR (use this built image instead), RIG_KEEP=1 (leave QEMU running at the end, for poking at it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RIG="${RIG_DIR:-$ROOT/target/rig}"
TIMEOUT="${RIG_TIMEOUT:-1200}"
L2_MEM="${RIG_L2_MEM_MIB:-256}"
POOL_DEPTH="${RIG_POOL_DEPTH:-2}"
RUN_E2B="${RIG_E2B:-1}"
RUN_NET="${RIG_NET:-1}"
# The image builder's packages (bash, coreutils, python3) plus real network tools for the
# network checks.
IMAGE_PACKAGES="${RIG_IMAGE_PACKAGES:-bash,coreutils,python3,curl,iputils-ping}"
# SDK clients at once: each L2 vCPU is emulated by TCG in L1 on the host's 2 CPUs, so 16 Linux
# guests resuming at once outrun the agents' time limits here, and 4 did once in CI (an agent's
# Hello took over 10 s); 2 (the pool's depth: both creates warm) hold. The host's e2b_sdk test
# runs 16 clients on probe guests.
E2B_CLIENTS="${RIG_E2B_CLIENTS:-8}"
T_START=$EPOCHREALTIME
mkdir -p "$RIG"
# nftables: its `nft` (and libraries) go into L1, where ember-net runs it.
RIG_EXTRA_PACKAGES="debootstrap nftables"
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
image_args=(--agent "$BIN/ember-agent" --cache-dir "$RIG/images" --packages "$IMAGE_PACKAGES")
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
# Fixed-length secrets: emberd refuses a token or key under 16 characters ("$$-$RANDOM" made
# a 15-character key once).
secret() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
TOKEN="rig-token-$(secret)"
E2B_KEY="e2b_rig_$(secret)"
echo "$TOKEN" >"$DATA/token"
echo "$E2B_KEY" >"$DATA/e2b-keys"
chmod 600 "$DATA/token" "$DATA/e2b-keys"
data_mib=$(($(du -sm "$DATA" | cut -f1) + 64))
rm -f "$RIG/l1-data.ext4"
mkfs.ext4 -q -F -d "$DATA" -L rigdata "$RIG/l1-data.ext4" "${data_mib}M" >&2

L1ROOT="$RIG/l1d-root"
mk_busybox_root "$L1ROOT"
l1_modules=(kvm-amd tun virtio_pci virtio_blk virtio_net)
EMBERD_NET_ARGS=""
if [ "$RUN_NET" != 0 ]; then
    # ember-net shells out to nft (links, namespaces and the TAP are netlink and syscalls); nft
    # resolves protocol names ("tcp") through /etc/protocols.
    add_dynamic_binary "$L1ROOT" nft
    mkdir -p "$L1ROOT/etc"
    cp /etc/protocols /etc/services "$L1ROOT/etc/"
    # What ember-net's rules use (nft.rs): nat chains with dnat/snat and masquerade, conntrack
    # state, reject (TCP reset, ICMP) in the ip family; and the veth to each namespace. L1's
    # busybox has no modprobe, so the kernel cannot load them on demand.
    l1_modules+=(veth nf_tables nft_chain_nat nft_nat nft_masq nft_ct nft_reject_ipv4)
    EMBERD_NET_ARGS="--sandbox-network"
fi
modules_for "${l1_modules[@]}"
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
    for d in /bin /lib /lib64 /usr /etc /init; do
        [ -e \$d ] && /bin/busybox cp -a \$d /newroot/
    done
    /bin/busybox mkdir -p /newroot/dev /newroot/proc /newroot/sys /newroot/tmp /newroot/run
    /bin/busybox touch /newroot/.in-tmpfs
    exec /bin/busybox switch_root /newroot /init
fi
/bin/busybox --install -s /bin
# The kernel starts init without PATH; emberd finds nft through it.
export PATH=/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# devtmpfs has no /dev/std* links (udev makes them); ember-net feeds nft its rules on
# "-f -", which nft opens as /dev/stdin.
for i in 0:stdin 1:stdout 2:stderr; do ln -sf /proc/self/fd/\${i%%:*} /dev/\${i#*:}; done
ln -sf /proc/self/fd /dev/fd
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
    --vmm /data/ember-vmm --jailer /data/ember-jailer --spares 2 --agent-timeout-secs 60 \\
    --e2b-api 0.0.0.0:3000 --e2b-api-key-file /data/e2b-keys --e2b-envd 0.0.0.0:49983 \\
    --log-level warn $EMBERD_NET_ARGS 2>&1 | sed 's/^/RIG-L1-EMBERD /' &
# Watchdog, every 30 s from a minute after emberd's start: when emberd answers its API, a
# heartbeat line (RIG-L1-ALIVE); when it does not, what L1 is doing (processes by CPU,
# emberd's threads and where each waits in the kernel: RIG-L1-STUCK). A hang is then
# diagnosable from the console log alone: STUCK lines say emberd is stuck, and no line at all
# says L1 itself froze (the host side reports that as l1_frozen).
(
    sleep 60
    answered=0
    while :; do
        # (busybox nc: Debian's busybox wget crashes on --header.)
        if printf 'GET /healthz HTTP/1.0\\r\\nAuthorization: Bearer %s\\r\\n\\r\\n' "\$(cat /data/token)" |
            timeout 5 nc 127.0.0.1 7070 2>/dev/null | head -1 | grep -q " 200 "; then
            [ \$answered = 1 ] || echo "RIG-L1-EMBERD-ANSWERS uptime=\$(cut -d' ' -f1 /proc/uptime)"
            answered=1
            echo "RIG-L1-ALIVE uptime=\$(cut -d' ' -f1 /proc/uptime) load=\$(cut -d' ' -f1-3 /proc/loadavg)"
        else
            echo "RIG-L1-STUCK uptime=\$(cut -d' ' -f1 /proc/uptime) load=\$(cut -d' ' -f1-3 /proc/loadavg)"
            top -b -n 1 | head -20 | sed 's/^/RIG-L1-STUCK top /'
            for t in /proc/\$(pidof emberd)/task/*; do
                echo "RIG-L1-STUCK emberd \$(cat \$t/comm) \$(cat \$t/wchan 2>/dev/null) \$(head -3 \$t/stack 2>/dev/null | tr '\\n' ' ')"
            done
        fi
        sleep 30
    done
) &
while :; do sleep 3600; done
EOF
chmod +x "$L1ROOT/init"
(cd "$L1ROOT" && find . | cpio -o -H newc --quiet) >"$RIG/l1d-initramfs.cpio"
T_PREP=$EPOCHREALTIME

# --- 6. L1 under TCG, its daemon's ports on this host's loopback -------------------------
read -r P_API P_E2B P_ENVD P_ALLOWED P_DENIED < <(python3 -c '
import socket
s = [socket.socket() for _ in range(5)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
# The network checks' test host: this host, which L1 and its sandboxes reach as 10.0.2.2 (QEMU's
# user network forwards 10.0.2.2 to this host's loopback). Two HTTP servers serving the same
# page: a policy allows one port and not the other. Started before L1 boots.
TEST_HOST=10.0.2.2
TEST_MARKER="ember-rig-test-host-$$"
HTTP_PIDS=()
start_test_host() {
    local www="$RIG/www" port
    rm -rf "$www" && mkdir -p "$www"
    echo "$TEST_MARKER" >"$www/index.html"
    for port in "$P_ALLOWED" "$P_DENIED"; do
        python3 -m http.server --bind 127.0.0.1 --directory "$www" "$port" \
            >"$RIG/www-$port.log" 2>&1 &
        HTTP_PIDS+=($!)
    done
}
stop_test_host() {
    local pid
    for pid in "${HTTP_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    HTTP_PIDS=()
}
[ "$RUN_NET" != 0 ] && start_test_host
LOG="$RIG/daemon-console.log"
log "booting L1 under QEMU TCG (log: $LOG; API on 127.0.0.1:$P_API)"
T_QEMU=$EPOCHREALTIME
rm -f "$RIG/l1-monitor.sock" "$RIG/l1-cpus.txt"
timeout "$TIMEOUT" qemu-system-x86_64 -M q35 -accel "$L1_ACCEL" -cpu "$L1_CPU" -smp 2 -m 4096 \
    -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -kernel "$VMLINUZ" -initrd "$RIG/l1d-initramfs.cpio" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3 nokaslr" \
    -monitor "unix:$RIG/l1-monitor.sock,server=on,wait=off" \
    -drive "file=$RIG/l1-data.ext4,if=virtio,format=raw,readonly=on" \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$P_API-:7070,hostfwd=tcp:127.0.0.1:$P_E2B-:3000,hostfwd=tcp:127.0.0.1:$P_ENVD-:49983" \
    -device virtio-net-pci,netdev=n0 </dev/null 2>&1 |
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "${line//$'\r'/}"; done >"$LOG" &
QEMU_PID=$!
stop_qemu() {
    [ "${RIG_KEEP:-0}" = 1 ] && return 0
    stop_test_host
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
out() { cat "$RESULTS/$1.out" 2>/dev/null || true; }
rc() { cat "$RESULTS/$1.rc" 2>/dev/null || echo none; }
secs() { cat "$RESULTS/$1.s" 2>/dev/null || echo null; }

# emberd answers once L1 booted, loaded kvm-amd and started it (~20 s). QEMU's port forward
# accepts connections before anything listens in L1, so each try has its own time limit, and
# all of them together a deadline: a daemon that never answers fails the rig in minutes, with
# L1's watchdog lines (RIG-L1-STUCK, below) in the log, instead of holding CI until its limit.
daemon_deadline=$((SECONDS + ${RIG_DAEMON_UP_SECS:-300}))
until timeout 10 "$EMBER" info >/dev/null 2>&1; do
    [ $SECONDS -gt $daemon_deadline ] && break
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
# Sandbox networks, with real tools in the guests (see the header). curl exits 7 when the
# connection is refused (a policy's TCP reset), 28 when it times out (a drop).
if [ "$RUN_NET" != 0 ]; then
    # addr ID: the sandbox's unique address (its network record).
    addr() {
        "$EMBER" --json inspect "$1" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["network"]["address"])'
    }
    # fetch NAME SANDBOX URL: curl in the guest, at most 10 s.
    fetch() { step "$1" 60 "$EMBER" exec "$2" -- curl -sS -m 10 "$3"; }
    allowed_url="http://$TEST_HOST:$P_ALLOWED/"
    denied_url="http://$TEST_HOST:$P_DENIED/"
    step net_template 600 "$EMBER" --json template build linuxnet --network \
        --kernel /data/image/vmlinuz --initrd /data/image/initrd.img \
        --rootfs /data/image/rootfs.ext4 --rootfs-read-only --guest-agent-port 52 \
        --boot-timeout 300s --mem "$L2_MEM" --vcpus 1 --boot-args "$boot_args"
    # A serves HTTP on port 8080; B (the daemon's default egress: all but the host) probes.
    step net_create_a 120 "$EMBER" run linuxnet --label rig=net
    NA=$(out net_create_a | tr -d '[:space:]')
    step net_create_b 120 "$EMBER" run linuxnet --label rig=net
    NB=$(out net_create_b | tr -d '[:space:]')
    ADDR_A=$(addr "$NA" 2>/dev/null || true)
    ADDR_B=$(addr "$NB" 2>/dev/null || true)
    # setsid: the server outlives the exec (its own session, no inherited pipes).
    step net_a_serves 120 "$EMBER" exec "$NA" -- sh -c 'setsid -f python3 -m http.server 8080 \
        >/dev/null 2>&1 </dev/null; for i in $(seq 60); do
            curl -s -m 2 -o /dev/null http://127.0.0.1:8080/ && echo serving && exit 0
            sleep 0.5; done; exit 1'
    fetch net_b_host "$NB" "$allowed_url"
    step net_b_ping_host 60 "$EMBER" exec "$NB" -- ping -c 1 -W 10 "$TEST_HOST"
    fetch net_b_to_a "$NB" "http://$ADDR_A:8080/"
    step net_b_ping_a 60 "$EMBER" exec "$NB" -- ping -c 1 -W 5 "$ADDR_A"
    # L1's own services: emberd's API on L1's address and on the sandbox's gateway.
    fetch net_b_to_l1 "$NB" "http://10.0.2.15:7070/v1/info"
    fetch net_b_to_gateway "$NB" "http://172.30.0.1:7070/v1/info"
    step net_kill_ab 120 "$EMBER" rm "$NA" "$NB"
    # C may reach the allowed port only; D nothing.
    step net_create_c 120 "$EMBER" run linuxnet --label rig=net --egress deny \
        --allow "$TEST_HOST:$P_ALLOWED/tcp"
    NC=$(out net_create_c | tr -d '[:space:]')
    fetch net_c_allowed "$NC" "$allowed_url"
    fetch net_c_denied "$NC" "$denied_url"
    step net_create_d 120 "$EMBER" run linuxnet --label rig=net --egress deny
    ND=$(out net_create_d | tr -d '[:space:]')
    fetch net_d_allowed "$ND" "$allowed_url"
    step net_d_ping_host 60 "$EMBER" exec "$ND" -- ping -c 1 -W 5 "$TEST_HOST"
    # C's policy changed at runtime: deny all, then the allowed port again.
    step net_c_set_deny 60 "$EMBER" network "$NC" --egress deny
    fetch net_c_after_deny "$NC" "$allowed_url"
    step net_c_set_allow 60 "$EMBER" network "$NC" --egress deny --allow "$TEST_HOST:$P_ALLOWED/tcp"
    fetch net_c_after_allow "$NC" "$allowed_url"
    step net_kill_cd 120 "$EMBER" rm "$NC" "$ND"
fi
step left 30 "$EMBER" --json ls
T_END=$EPOCHREALTIME
# L1's watchdog has been silent for 2 minutes: before QEMU goes, ask it where L1's CPUs are.
last_sign=$(grep -a "RIG-L1-ALIVE\|RIG-L1-STUCK" "$LOG" | tail -1 | cut -d' ' -f1 || true)
L1_DUMP=""
if [ -n "$last_sign" ] && awk -v a="$last_sign" -v b="$T_END" 'BEGIN { exit !(b - a > 120) }'; then
    L1_DUMP="$RIG/l1-cpus.txt"
    l1_dump "$RIG/l1-monitor.sock" "$L1_DUMP"
fi
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
# reached NAME: curl got the test host's page. blocked NAME: curl's connection was refused (7)
# or timed out (28) — not any other failure (no sandbox, a broken exec). unanswered NAME: ping
# ran and got no reply.
reached() { [ "$(rc "$1")" = 0 ] && out "$1" | grep -q "$TEST_MARKER"; }
blocked() { [ "$(rc "$1")" = 7 ] || [ "$(rc "$1")" = 28 ]; }
unanswered() { [ "$(rc "$1")" = 1 ] && out "$1" | grep -q "packets transmitted"; }
# how NAME: what curl or ping saw, for the summary (ping exits 1 when no reply came: dropped,
# or refused with an ICMP error).
how() {
    case "$(rc "$1")" in
        0) echo ok ;; 7) echo refused ;; 28) echo timeout ;; 124) echo "step timed out" ;;
        1) case "$1" in
            *ping*) grep -q "filtered" "$RESULTS/$1.out" && echo "filtered" || echo "no reply" ;;
            *) echo "exit 1" ;;
        esac ;;
        *) echo "exit $(rc "$1"): $(head -c 80 "$RESULTS/$1.err" 2>/dev/null | tr -d '"\\\n')" ;;
    esac
}
net_json=null
if [ "$RUN_NET" != 0 ]; then
    [ "$(rc net_template)" = 0 ] || failed+=(net_template_build)
    [ "$(rc net_create_a)" = 0 ] && [ "$(rc net_create_b)" = 0 ] && [ -n "$ADDR_A" ] &&
        [ -n "$ADDR_B" ] && [ "$ADDR_A" != "$ADDR_B" ] || failed+=(net_sandbox_addresses)
    [ "$(rc net_a_serves)" = 0 ] && [ "$(out net_a_serves)" = serving ] || failed+=(net_a_serves_http)
    reached net_b_host || failed+=(net_reaches_test_host)
    [ "$(rc net_b_ping_host)" = 0 ] || failed+=(net_pings_test_host)
    blocked net_b_to_a || failed+=(net_isolated_from_sandbox)
    unanswered net_b_ping_a || failed+=(net_ping_isolated_from_sandbox)
    blocked net_b_to_l1 || failed+=(net_isolated_from_l1_services)
    blocked net_b_to_gateway || failed+=(net_isolated_from_gateway)
    [ "$(rc net_create_c)" = 0 ] && [ "$(rc net_create_d)" = 0 ] || failed+=(net_create_with_policy)
    reached net_c_allowed || failed+=(net_policy_allows)
    blocked net_c_denied || failed+=(net_policy_denies_other_port)
    blocked net_d_allowed || failed+=(net_deny_all)
    unanswered net_d_ping_host || failed+=(net_deny_all_ping)
    [ "$(rc net_c_set_deny)" = 0 ] && blocked net_c_after_deny || failed+=(net_runtime_deny)
    [ "$(rc net_c_set_allow)" = 0 ] && reached net_c_after_allow || failed+=(net_runtime_allow)
    [ "$(rc net_kill_ab)" = 0 ] && [ "$(rc net_kill_cd)" = 0 ] || failed+=(net_kill)
    net_json=$(printf '{"a": "%s", "b": "%s", "b_to_test_host": "%s", "b_ping_test_host": "%s", "b_to_a": "%s", "b_ping_a": "%s", "b_to_l1_api": "%s", "b_to_gateway_api": "%s", "c_allowed_port": "%s", "c_other_port": "%s", "d_deny_all": "%s", "d_ping_test_host": "%s", "c_after_runtime_deny": "%s", "c_after_runtime_allow": "%s", "seconds": {"template_build": %s, "create": %s, "first_curl": %s, "ping": %s, "set_policy": %s, "blocked_by_drop": %s}}' \
        "$ADDR_A" "$ADDR_B" "$(how net_b_host)" "$(how net_b_ping_host)" "$(how net_b_to_a)" \
        "$(how net_b_ping_a)" "$(how net_b_to_l1)" "$(how net_b_to_gateway)" \
        "$(how net_c_allowed)" "$(how net_c_denied)" "$(how net_d_allowed)" \
        "$(how net_d_ping_host)" "$(how net_c_after_deny)" "$(how net_c_after_allow)" \
        "$(secs net_template)" "$(secs net_create_a)" "$(secs net_b_host)" \
        "$(secs net_b_ping_host)" "$(secs net_c_set_deny)" "$(secs net_b_to_a)")
fi
grep -q "RIG-L1-EMBERD .*panicked" "$LOG" && failed+=(daemon_panic)
grep -q "Kernel panic" "$LOG" && failed+=(l1_kernel_panic)
# L1 froze: its watchdog printed nothing (neither ALIVE nor STUCK) in the last 2 minutes
# before QEMU was stopped — the emulation stack hung, not emberd (whose hang prints STUCK).
last_sign=$(grep -a "RIG-L1-ALIVE\|RIG-L1-STUCK" "$LOG" | tail -1 | cut -d' ' -f1 || true)
if [ -n "$last_sign" ] && [ ${#failed[@]} -gt 0 ] &&
    awk -v a="$last_sign" -v b="$T_END" 'BEGIN { exit !(b - a > 120) }'; then
    failed+=(l1_frozen)
fi
pool_json=$(out pools | tr -d '\n')
template_json=$(out template | tr -d '\n')
failed_json=$(printf '"%s", ' "${failed[@]}" | sed 's/, $//')
[ ${#failed[@]} -gt 0 ] || failed_json=""
e2b_json=$(tail -1 "$RESULTS/e2b.out" 2>/dev/null | grep '^{' || echo null)
printf '{"passed": %s, "failed": [%s], "seconds": {"total": %s, "build": %s, "image": %s, "prep": %s, "qemu_to_daemon_up": %s, "template_build": %s, "pool_fill": %s, "create": %s, "first_exec": %s, "python3": %s, "create2": %s, "e2b": %s, "qemu_tcg_boot_to_agent": %s, "template_boot_to_agent": %s}, "uname": "%s", "template": %s, "pools": %s, "e2b": %s, "net": %s, "host_cpu": "%s", "host_kernel": "%s", "log": "%s", "results": "%s"}\n' \
    "$([ ${#failed[@]} -eq 0 ] && echo true || echo false)" "$failed_json" \
    "$(elapsed "$T_START" "$T_END")" "$(elapsed "$T_BUILD0" "$T_BUILD")" "$(elapsed "$T_BUILD" "$T_IMAGE")" \
    "$(elapsed "$T_IMAGE" "$T_PREP")" "$(elapsed "$T_QEMU" "$T_DAEMON")" "$(secs template)" \
    "$(secs pool)" "$(secs create)" "$(secs uname)" "$(secs python)" "$(secs create2)" "$(secs e2b)" \
    "$QEMU_REF" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["build"]["boot_to_agent_ms"] / 1000)' "$RESULTS/template.out" 2>/dev/null || echo null)" \
    "$(out uname | head -1 | sed 's/"/\\"/g')" "${template_json:-null}" "${pool_json:-null}" "$e2b_json" "$net_json" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" "$(uname -r)" "$LOG" "$RESULTS"
if [ ${#failed[@]} -gt 0 ]; then
    # Each failed step's error output: its first lines and, for a long one (a Python
    # traceback ends with the exception), its last.
    for f in "$RESULTS"/*.err; do
        [ -s "$f" ] || continue
        if [ "$(wc -l <"$f")" -le 30 ]; then
            sed "s|^|$(basename "$f" .err): |" "$f" >&2
        else
            { head -n 8 "$f"; echo "[...]"; tail -n 20 "$f"; } | sed "s|^|$(basename "$f" .err): |" >&2
        fi
    done
    grep "RIG-L1-EMBERD \|RIG-L1-.*FAILED\|RIG-L1-NO\|RIG-L1-STUCK" "$LOG" | tail -40 >&2 || true
    if [ -n "$L1_DUMP" ]; then
        echo "rig: L1 was silent; where its CPUs were (all of it in $L1_DUMP):" >&2
        grep "^L1 CPU RIP\|did not answer\|^CPU #\|^\* CPU\|^  CPU" "$L1_DUMP" >&2 || true
    fi
fi
[ ${#failed[@]} -eq 0 ]
