#!/usr/bin/env bash
# The nested Linux rig: ember-vmm boots Debian's stock cloud kernel on a real KVM.
#
# This host's /dev/kvm cannot run a stock Linux kernel, so the rig boots an L1 Linux under
# QEMU's software emulation (TCG, `-cpu max`: AMD SVM with nested paging), loads kvm-amd
# there, and runs ember-vmm in L1 to boot the same Debian kernel as L2 with an initramfs
# whose init loads the virtio modules and reports what it found.
#
# Everything comes from Debian packages (qemu-system-x86, linux-image-cloud-amd64,
# busybox-static, cpio, kmod); downloads and artifacts are cached under target/rig/.
# ember-vmm is built static (glibc, crt-static) in release mode.
#
# Usage: scripts/linux-rig.sh            prints one JSON summary line last ("passed", the
#                                        names of "failed" checks, stage times, devices);
#                                        exits non-zero when a check failed: L2 reached
#                                        userspace, its init finished, Linux's drivers bound
#                                        virtio blk/net/vsock/rng, ext4 read-write and
#                                        read-only disks, a ping over virtio-net, rtc_cmos,
#                                        the VM generation id in ACPI with its GED bound
#                                        (and, with RIG_SNAPSHOT=1, the GED interrupted
#                                        by the restore), every module loaded, ember-vmm
#                                        exited 0.
# Env:   RIG_DIR (default target/rig), RIG_TIMEOUT (seconds for the QEMU run, default 300),
#        RIG_L2_VCPUS (default 2), RIG_L2_MEM_MIB (default 512), RIG_KERNEL_FORMAT
#        (bzimage | vmlinux: how L2's kernel is given to ember-vmm; default bzimage),
#        RIG_L2_GAPS=1 (L2 prints the kernel log lines that follow a gap of more than 0.3 s:
#        where its boot time goes).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RIG="${RIG_DIR:-$ROOT/target/rig}"
TIMEOUT="${RIG_TIMEOUT:-300}"
L2_VCPUS="${RIG_L2_VCPUS:-2}"
L2_MEM="${RIG_L2_MEM_MIB:-512}"
KERNEL_FORMAT="${RIG_KERNEL_FORMAT:-bzimage}"
L2_GAPS="${RIG_L2_GAPS:-0}"
SNAPSHOT="${RIG_SNAPSHOT:-0}"
T_START=$EPOCHREALTIME
mkdir -p "$RIG"

. "$ROOT/scripts/rig-common.sh"

# --- 3. ember-vmm, static ---------------------------------------------------------------
log "building the static binaries (release; the daemon rig's set: one build for both rigs)"
T_BUILD0=$EPOCHREALTIME
build_static
VMM="$BIN/ember-vmm"
AGENT="$BIN/ember-agent"
AGENT_CALL="$BIN/ember-agent-call"
file "$AGENT" | grep -q "static" || fail_json "ember-agent is not statically linked"
# The API helper uses std only: rustc alone builds it (cargo would build the crate's
# dev-dependencies for an example, the probe guest among them).
API_CALL="$RIG/api_call"
rustc --edition 2021 -O -C target-feature=+crt-static --target x86_64-unknown-linux-gnu \
    -o "$API_CALL" "$ROOT/crates/ember-vmm/examples/api_call.rs" >&2
file "$VMM" | grep -q "static" || fail_json "ember-vmm is not statically linked"
T_BUILD=$EPOCHREALTIME

# --- 4. L2 initramfs: busybox, virtio modules, a reporting init -------------------------
L2ROOT="$RIG/l2root"
mk_busybox_root "$L2ROOT"
# ember-agent serves the agent protocol on vsock port 52; root's account for its HOME.
strip -o "$L2ROOT/bin/ember-agent" "$AGENT" 2>/dev/null || cp "$AGENT" "$L2ROOT/bin/ember-agent"
mkdir -p "$L2ROOT/etc" "$L2ROOT/root"
echo "root:x:0:0:root:/root:/bin/sh" >"$L2ROOT/etc/passwd"
echo "root:x:0:" >"$L2ROOT/etc/group"
modules_for virtio_mmio virtio_blk virtio_net vmw_vsock_virtio_transport virtio-rng
L2_MODULES=""
for f in "${ORDERED[@]}"; do
    cp "$f" "$L2ROOT/lib/modules/"
    L2_MODULES+=" $(basename "$f")"
done
cat >"$L2ROOT/init" <<EOF
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "EMBER-L2-USERSPACE uptime=\$(cut -d' ' -f1 /proc/uptime)"
for m in $L2_MODULES; do insmod /lib/modules/\$m || echo "EMBER-L2-INSMOD-FAILED \$m"; done
echo "EMBER-L2-MODULES uptime=\$(cut -d' ' -f1 /proc/uptime)"
/bin/ember-agent --listen vsock:52 >/dev/null 2>/tmp/agent.log &
echo "EMBER-L2-AGENT started"
grep -m1 'model name' /proc/cpuinfo | sed 's/^/EMBER-L2-CPU /'
echo "EMBER-L2-NCPUS \$(grep -c ^processor /proc/cpuinfo)"
echo "EMBER-L2-KERNEL \$(uname -r)"
for d in /sys/bus/virtio/devices/*; do
    [ -e "\$d" ] || continue
    drv=\$(basename "\$(readlink "\$d/driver" 2>/dev/null)" 2>/dev/null)
    echo "EMBER-L2-VIRTIO \$(basename "\$d") device=\$(cat "\$d/device") driver=\${drv:-none}"
done
# virtio-blk: an ext4 disk read-write (write, drop caches, read back) and one read-only.
mkdir -p /mnt/rw /mnt/ro
if mount -t ext4 /dev/vda /mnt/rw 2>/dev/null; then
    echo "written-by-l2" >/mnt/rw/written && sync && umount /mnt/rw
    echo 3 >/proc/sys/vm/drop_caches
    mount -t ext4 /dev/vda /mnt/rw && echo "EMBER-L2-EXT4-RW \$(cat /mnt/rw/marker)/\$(cat /mnt/rw/written)"
fi
if mount -t ext4 -o ro /dev/vdb /mnt/ro 2>/dev/null; then
    ro="\$(cat /sys/block/vdb/ro)"
    touch /mnt/ro/x 2>/dev/null && ro="\$ro-but-writable"
    echo "EMBER-L2-EXT4-RO \$(cat /mnt/ro/marker) device_ro=\$ro"
fi
[ -e /dev/hwrng ] && echo "EMBER-L2-RNG \$(dd if=/dev/hwrng bs=8 count=1 2>/dev/null | od -An -tx1 | tr -d ' ')"
[ -e /dev/vsock ] && echo "EMBER-L2-VSOCK present"
if ifconfig eth0 172.16.0.2 netmask 255.255.255.0 up 2>/dev/null; then
    if ping -c 1 -W 5 172.16.0.1 >/dev/null 2>&1; then echo "EMBER-L2-NET ping-ok"; else echo "EMBER-L2-NET ping-failed"; fi
fi
echo "EMBER-L2-RTC \$(cat /sys/class/rtc/rtc0/name 2>/dev/null || echo none)"
# The VM generation id as ACPI enumerated it (Debian's cloud kernel has no vmgenid driver,
# so nothing binds it), and whether the Generic Event Device that notifies it is bound.
ged=\$(basename "\$(readlink /sys/bus/platform/devices/ACPI0013:00/driver 2>/dev/null)" 2>/dev/null)
echo "EMBER-L2-VMGENID \$(cat /sys/bus/acpi/devices/VMGENCTR:00/modalias 2>/dev/null || echo none) ged_driver=\${ged:-none}"
echo "EMBER-L2-DATE \$(date -u +%s)"
if [ "$L2_GAPS" = 1 ]; then
    dmesg | awk '{ t = substr(\$0, 2, 12) + 0; if (t - p > 0.3) { print "EMBER-L2-GAP " prev; print "EMBER-L2-GAP " \$0 } p = t; prev = \$0 }'
fi
echo "EMBER-L2-DONE uptime=\$(cut -d' ' -f1 /proc/uptime)"
if grep -q ember.rig_agent=1 /proc/cmdline; then
    # L1 drives the agent and ends with a reboot through it; this is the fallback.
    sleep 120
    echo "EMBER-L2-AGENT-NEVER-REBOOTED"
    sed 's/^/EMBER-L2-AGENT-LOG /' /tmp/agent.log
fi
if grep -q ember.rig_snapshot=1 /proc/cmdline; then
    i=0
    while true; do
        i=\$((i + 1))
        # ged_irqs: interrupts the GED took (a restore raises one to renew the generation id).
        ged_irqs=\$(awk '/ACPI:Ged/ { for (i = 2; i <= NF && \$i ~ /^[0-9]+\$/; i++) s += \$i } END { print s + 0 }' /proc/interrupts)
        echo "EMBER-L2-TICK \$i uptime=\$(cut -d' ' -f1 /proc/uptime) date=\$(date -u +%s) ged_irqs=\$ged_irqs"
        sleep 1
    done
fi
reboot -f
EOF
chmod +x "$L2ROOT/init"
(cd "$L2ROOT" && find . | cpio -o -H newc --quiet) >"$RIG/l2-initramfs.cpio"

# --- 5. L1 initramfs: kvm-amd, ember-vmm, the L2 kernel and initramfs -------------------
L1ROOT="$RIG/l1root"
mk_busybox_root "$L1ROOT"
modules_for kvm-amd tun
L1_MODULES=""
for f in "${ORDERED[@]}"; do
    cp "$f" "$L1ROOT/lib/modules/"
    L1_MODULES+=" $(basename "$f")"
done
mkdir -p "$L1ROOT/rig"
# Stripped: a smaller L1 initramfs loads and unpacks faster under TCG.
strip -o "$L1ROOT/rig/ember-vmm" "$VMM" 2>/dev/null || cp "$VMM" "$L1ROOT/rig/ember-vmm"
strip -o "$L1ROOT/rig/api_call" "$API_CALL" 2>/dev/null || cp "$API_CALL" "$L1ROOT/rig/api_call"
strip -o "$L1ROOT/rig/agent_call" "$AGENT_CALL" 2>/dev/null || cp "$AGENT_CALL" "$L1ROOT/rig/agent_call"
cp "$RIG/l2-initramfs.cpio" "$L1ROOT/rig/initramfs"
case "$KERNEL_FORMAT" in
    bzimage) cp "$VMLINUZ" "$L1ROOT/rig/kernel" ;;
    vmlinux)
        # Debian's payload is LZ4 (legacy frame): offset and length at 0x248/0x24c of the
        # setup header, relative to the end of the setup sectors.
        command -v lz4 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lz4 >&2
        setup_sects=$(od -An -tu1 -j 0x1f1 -N1 "$VMLINUZ" | tr -d ' ')
        off=$(od -An -tu4 -j 0x248 -N4 "$VMLINUZ" | tr -d ' ')
        len=$(od -An -tu4 -j 0x24c -N4 "$VMLINUZ" | tr -d ' ')
        start=$(((setup_sects + 1) * 512 + off))
        tail -c +$((start + 1)) "$VMLINUZ" | head -c "$len" | lz4 -dc >"$L1ROOT/rig/kernel" 2>/dev/null || true
        head -c4 "$L1ROOT/rig/kernel" | grep -q ELF || fail_json "could not extract vmlinux"
        ;;
    *) fail_json "RIG_KERNEL_FORMAT must be bzimage or vmlinux" ;;
esac
# Two small ext4 disks for L2's virtio-blk, each with a marker file: one read-write, one
# read-only.
for d in rw ro; do
    rm -rf "$RIG/disk-$d" && mkdir -p "$RIG/disk-$d"
    echo "disk-$d" >"$RIG/disk-$d/marker"
    rm -f "$L1ROOT/rig/$d.ext4"
    mkfs.ext4 -q -F -d "$RIG/disk-$d" -L "$d" "$L1ROOT/rig/$d.ext4" 4M >&2
done
cat >"$L1ROOT/rig/vm.json" <<EOF
{
  "boot-source": {
    "kernel_image_path": "/rig/kernel",
    "initrd_path": "/rig/initramfs",
    "boot_args": "console=ttyS0 reboot=k panic=-1 pci=off quiet loglevel=4 ember.rig_snapshot=$SNAPSHOT ember.rig_agent=$((1 - SNAPSHOT))"
  },
  "machine-config": { "vcpu_count": $L2_VCPUS, "mem_size_mib": $L2_MEM },
  "drives": [
    { "drive_id": "rw", "path_on_host": "/rig/rw.ext4", "is_root_device": false, "is_read_only": false },
    { "drive_id": "ro", "path_on_host": "/rig/ro.ext4", "is_root_device": false, "is_read_only": true }
  ],
  "network-interfaces": [
    { "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02" }
  ],
  "vsock": { "guest_cid": 3, "uds_path": "/run/vsock.sock" },
  "entropy": {}
}
EOF
cat >"$L1ROOT/init" <<EOF
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "RIG-L1-INIT uptime=\$(cut -d' ' -f1 /proc/uptime)"
for m in $L1_MODULES; do insmod /lib/modules/\$m || echo "RIG-L1-INSMOD-FAILED \$m"; done
if [ -e /dev/kvm ]; then echo "RIG-L1-KVM-READY uptime=\$(cut -d' ' -f1 /proc/uptime)"; else echo "RIG-L1-NO-KVM"; fi
# L2's network: a TAP in L1 (ember-vmm opens an existing one), 172.16.0.1/24.
tunctl -t tap0 >/dev/null && ifconfig tap0 172.16.0.1 netmask 255.255.255.0 up || echo "RIG-L1-NO-TAP"
echo "RIG-L1-HOST-CPU \$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
echo "RIG-L1-DATE \$(date -u +%s)"
echo "RIG-L1-EMBER-START uptime=\$(cut -d' ' -f1 /proc/uptime)"
# wait_for FILE PATTERN COUNT SECONDS
wait_for() {
    n=0
    while :; do
        c=\$(grep -c "\$2" "\$1" 2>/dev/null)
        [ "\${c:-0}" -ge "\$3" ] && return 0
        n=\$((n + 1)); [ \$n -gt \$((\$4 * 5)) ] && return 1; sleep 0.2
    done
}
# mem_touched: KiB of the snapshot's memory file the running ember-vmm has mapped in (Rss) and
# written (Private_Dirty: copied on write), from its smaps.
mem_touched() {
    awk '/l2\\.mem/ { m = 1; next } /^[0-9a-f]+-[0-9a-f]+ / { m = 0 } m && /^Rss:/ { r += \$2 } m && /^Private_Dirty:/ { d += \$2 } END { print "rss_kib=" r + 0, "dirty_kib=" d + 0 }' /proc/\$(pidof ember-vmm)/smaps
}
# agent NAME [OPTIONS] -- ARGV...: one command through ember-agent in L2; its output and exit code.
agent() {
    name=\$1; shift
    out=\$(/rig/agent_call --uds /run/vsock.sock --port 52 "\$@" 2>/run/agent_call.err)
    rc=\$?
    echo "RIG-L1-AGENT-\$name rc=\$rc out=\$(echo "\$out" | head -1)"
    [ -s /run/agent_call.err ] && sed "s/^/RIG-L1-AGENT-\$name-ERR /" /run/agent_call.err
}
if [ "$SNAPSHOT" != 1 ]; then
    (NO_COLOR=1 /rig/ember-vmm --api-sock /run/api.sock --config-file /rig/vm.json --log-level info 2>/run/vmm.log; echo "RIG-L1-EMBER-EXIT rc=\$? uptime=\$(cut -d' ' -f1 /proc/uptime)") | tee /run/l2a.log &
    if wait_for /run/l2a.log EMBER-L2-DONE 1 240; then
        echo "RIG-L1-AGENT-START uptime=\$(cut -d' ' -f1 /proc/uptime)"
        agent UNAME -- uname -a
        echo "RIG-L1-AGENT-FIRST-REPLY uptime=\$(cut -d' ' -f1 /proc/uptime)"
        agent HOME -- sh -c 'echo \$HOME'
        agent EXIT -- sh -c 'echo failing; exit 7'
        agent SIGNAL -- sh -c 'kill -9 \$\$'
        agent MISSING -- /no/such/program
        agent TIMEOUT --timeout-ms 1000 -- sleep 30
        # 10 MiB through the file API, byte for byte both ways.
        head -c 10485760 /dev/urandom >/run/big
        agent BIGPUT --put /run/big:/tmp/big --get /tmp/big:/run/big.back -- sha256sum /tmp/big
        echo "RIG-L1-BIG-SHA \$(sha256sum /run/big | cut -d' ' -f1) back=\$(cmp -s /run/big /run/big.back && echo same || echo differs)"
        agent REBOOT -- reboot -f
    fi
    wait_for /run/l2a.log RIG-L1-EMBER-EXIT 1 60 || { kill -TERM \$(pidof ember-vmm); wait_for /run/l2a.log RIG-L1-EMBER-EXIT 1 30; }
    sed 's/^/RIG-L1-VMM /' /run/vmm.log
    dmesg | grep 'type=1326' | sed 's/^/RIG-L1-SECCOMP /'
else
    (NO_COLOR=1 /rig/ember-vmm --api-sock /run/api.sock --config-file /rig/vm.json --log-level info 2>/run/vmm.log; echo "RIG-L1-EMBER-EXIT rc=\$?") | tee /run/l2a.log &
    wait_for /run/l2a.log EMBER-L2-TICK 2 240 || echo "RIG-L1-NO-TICKS"
    echo "RIG-L1-PAUSE uptime=\$(cut -d' ' -f1 /proc/uptime)"
    /rig/api_call /run/api.sock PATCH /vm '{"state": "Paused"}'
    /rig/api_call /run/api.sock PUT /snapshot/create '{"snapshot_type": "Full", "snapshot_path": "/run/l2.snap", "mem_file_path": "/run/l2.mem"}'
    echo "RIG-L1-SNAPSHOT-DONE uptime=\$(cut -d' ' -f1 /proc/uptime) mem_kib=\$(du -k /run/l2.mem | cut -f1)"
    kill -TERM \$(pidof ember-vmm)
    wait_for /run/l2a.log RIG-L1-EMBER-EXIT 1 30
    sleep 3
    (NO_COLOR=1 /rig/ember-vmm --api-sock /run/api2.sock --log-level info 2>/run/vmm2.log; echo "RIG-L1-EMBER2-EXIT rc=\$?") | tee /run/l2b.log &
    n=0; while [ ! -S /run/api2.sock ] && [ \$n -lt 100 ]; do n=\$((n + 1)); sleep 0.1; done
    echo "RIG-L1-RESTORE-START uptime=\$(cut -d' ' -f1 /proc/uptime)"
    /rig/api_call /run/api2.sock PUT /snapshot/load '{"snapshot_path": "/run/l2.snap", "mem_backend": {"backend_type": "File", "backend_path": "/run/l2.mem"}, "resume_vm": true}'
    echo "RIG-L1-RESTORED uptime=\$(cut -d' ' -f1 /proc/uptime)"
    wait_for /run/l2b.log EMBER-L2-TICK 3 120 || echo "RIG-L1-NO-TICKS-AFTER-RESTORE"
    # A clone at handover: Reseed (host entropy, host wall clock), then what it draws and its clock.
    agent R1 --reseed 1 -- sh -c 'echo \$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n") \$(date +%s)'
    echo "RIG-L1-CLOCK-R1 \$(date +%s)"
    kill -TERM \$(pidof ember-vmm)
    wait_for /run/l2b.log RIG-L1-EMBER2-EXIT 1 30
    # A second clone of the same snapshot.
    (NO_COLOR=1 /rig/ember-vmm --api-sock /run/api3.sock --log-level info 2>/run/vmm3.log; echo "RIG-L1-EMBER3-EXIT rc=\$?") | tee /run/l2c.log &
    n=0; while [ ! -S /run/api3.sock ] && [ \$n -lt 100 ]; do n=\$((n + 1)); sleep 0.1; done
    /rig/api_call /run/api3.sock PUT /snapshot/load '{"snapshot_path": "/run/l2.snap", "mem_backend": {"backend_type": "File", "backend_path": "/run/l2.mem"}, "resume_vm": true}'
    echo "RIG-L1-RESTORED-2 uptime=\$(cut -d' ' -f1 /proc/uptime)"
    echo "RIG-L1-MEM-AT-RESTORE \$(mem_touched)"
    agent R2 --reseed 2 -- sh -c 'echo \$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n") \$(date +%s)'
    echo "RIG-L1-CLOCK-R2 \$(date +%s)"
    echo "RIG-L1-MEM-AFTER-EXEC \$(mem_touched)"
    kill -TERM \$(pidof ember-vmm)
    wait_for /run/l2c.log RIG-L1-EMBER3-EXIT 1 30
    sed 's/^/RIG-L1-VMM /' /run/vmm.log /run/vmm2.log
    dmesg | grep 'type=1326' | sed 's/^/RIG-L1-SECCOMP /'
fi
echo "RIG-L1-END uptime=\$(cut -d' ' -f1 /proc/uptime)"
echo o >/proc/sysrq-trigger
poweroff -f
EOF
chmod +x "$L1ROOT/init"
(cd "$L1ROOT" && find . | cpio -o -H newc --quiet) >"$RIG/l1-initramfs.cpio"
T_PREP=$EPOCHREALTIME

# --- 6. run L1 under TCG; stamp each console line with host time -------------------------
LOG="$RIG/console.log"
log "booting L1 under QEMU TCG (log: $LOG)"
T_QEMU=$EPOCHREALTIME
set +e
timeout "$TIMEOUT" qemu-system-x86_64 -M q35 -accel "$L1_ACCEL" -cpu "$L1_CPU" -smp 2 -m 2048 \
    -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -kernel "$VMLINUZ" -initrd "$RIG/l1-initramfs.cpio" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3" </dev/null 2>&1 |
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "${line//$'\r'/}"; done >"$LOG"
QEMU_RC=${PIPESTATUS[0]}
set -e
T_END=$EPOCHREALTIME

# --- 7. summary --------------------------------------------------------------------------
# Each helper prints nothing (and succeeds) when its marker is missing.
at() { { grep -m1 "$1\( \|\$\)" "$LOG" || true; } | cut -d' ' -f1; }
# A marker's value: what follows "MARKER " on its line. L1's and L2's consoles share the serial
# line, so a marker may come glued to the end of an L2 line (`...date=1796507069RIG-L1-AGENT-R2
# rc=0 ...`): match it anywhere, not only after a space.
field() { { grep -m1 -o "$1 .*" "$LOG" || true; } | cut -d' ' -f2- | sed 's/"/\\"/g' | sed 's/^ *//'; }
since() { # seconds between two markers' host stamps, or null
    local a b
    a=$(at "$1")
    b=$(at "$2")
    if [ -n "$a" ] && [ -n "$b" ]; then elapsed "$a" "$b"; else printf null; fi
}
booted=false
grep -q " EMBER-L2-USERSPACE" "$LOG" && booted=true
devices=$({ grep " EMBER-L2-VIRTIO " "$LOG" || true; } | cut -d' ' -f3- |
    awk '{ split($2, d, "="); split($3, r, "="); printf "%s{\"name\": \"%s\", \"device_id\": %d, \"driver\": \"%s\"}", (NR > 1 ? ", " : ""), $1, d[2], r[2] }')
l2_uptime=$({ grep -m1 " EMBER-L2-USERSPACE" "$LOG" || true; } | sed -n 's/.*uptime=\([0-9.]*\).*/\1/p')
l2_date=$(field EMBER-L2-DATE)
date_skew=null
if [ -n "$l2_date" ]; then
    date_skew=$(awk -v g="$l2_date" -v h="$(at EMBER-L2-DATE)" 'BEGIN { printf "%.1f", g - h }')
fi
l1_skew=null
l1_date=$(field RIG-L1-DATE)
if [ -n "$l1_date" ]; then
    l1_skew=$(awk -v g="$l1_date" -v h="$(at RIG-L1-DATE)" 'BEGIN { printf "%.1f", g - h }')
fi
# What must hold for the run to pass; the names of those that do not go in "failed".
failed=()
# L1 gone before its script's end marker: its kernel panicked, or QEMU stopped by itself (L1
# reset: a triple fault, a fault of the emulation stack below ember) — not a timeout, which
# may be ember hanging. .ci/run repeats a run that failed this way.
if ! grep -q " RIG-L1-END" "$LOG"; then
    if grep -q "Kernel panic" "$LOG"; then
        failed+=(l1_kernel_panic)
    elif [ "$QEMU_RC" = 0 ]; then
        failed+=(l1_reset)
    else
        failed+=(l1_no_end)
    fi
fi
$booted || failed+=(l2_userspace)
grep -q " EMBER-L2-DONE" "$LOG" || failed+=(l2_init_finished)
for drv in virtio_blk virtio_net vmw_vsock_virtio_transport virtio_rng; do
    grep -q " EMBER-L2-VIRTIO .* driver=$drv\$" "$LOG" || failed+=("bound_$drv")
done
grep -q " EMBER-L2-EXT4-RW disk-rw/written-by-l2" "$LOG" || failed+=(ext4_rw)
grep -q " EMBER-L2-EXT4-RO disk-ro device_ro=1\$" "$LOG" || failed+=(ext4_ro)
grep -q " EMBER-L2-NET ping-ok" "$LOG" || failed+=(net_ping)
grep -q " EMBER-L2-RTC rtc_cmos" "$LOG" || failed+=(rtc)
grep -q " EMBER-L2-VMGENID acpi:VMGENCTR:.* ged_driver=acpi-ged" "$LOG" || failed+=(vmgenid_acpi)
grep -q " EMBER-L2-INSMOD-FAILED" "$LOG" && failed+=(insmod)
grep -q " RIG-L1-EMBER-EXIT rc=0" "$LOG" || failed+=(vmm_exit_0)
grep -q " RIG-L1-SECCOMP" "$LOG" && failed+=(seccomp_kill)
if [ "$SNAPSHOT" != 1 ]; then
    # ember-agent in L2, reached from L1 through ember-vmm's hybrid vsock socket.
    grep -q " RIG-L1-AGENT-UNAME rc=0 out=Linux " "$LOG" || failed+=(agent_uname)
    grep -q " RIG-L1-AGENT-HOME rc=0 out=/root\$" "$LOG" || failed+=(agent_home)
    grep -q " RIG-L1-AGENT-EXIT rc=7 out=failing\$" "$LOG" || failed+=(agent_exit_code)
    grep -q " RIG-L1-AGENT-SIGNAL rc=137 " "$LOG" || failed+=(agent_signal)
    grep -q " RIG-L1-AGENT-MISSING-ERR .*command not found" "$LOG" || failed+=(agent_not_found)
    grep -q " RIG-L1-AGENT-TIMEOUT-ERR .*longer than its 1000 ms limit" "$LOG" || failed+=(agent_timeout_kill)
    sha=$(field RIG-L1-BIG-SHA | awk '{ print $1 }')
    [ -n "$sha" ] && grep -q " RIG-L1-AGENT-BIGPUT rc=0 out=$sha " "$LOG" &&
        grep -q " RIG-L1-BIG-SHA $sha back=same" "$LOG" || failed+=(agent_10mib_file)
fi
restore_json=null
if [ "$SNAPSHOT" = 1 ]; then
    # Ticks after the restore, and how far the guest's wall clock was from the host's on
    # each. ember-vmm restores kvmclock as saved (no KVM_CLOCK_REALTIME advance), so the
    # guest's monotonic time goes on from the snapshot and its wall clock lags by the
    # downtime until something steps it (the agent's Reseed): the checks are that it ticks
    # on and that its uptime did not jump.
    after=$(awk '/RIG-L1-RESTORED( |$)/ { r = 1; next } r && ($2 == "EMBER-L2-TICK" && $6 ~ /^ged_irqs=[0-9]+$/) { split($5, d, "="); printf "%s%.1f", (n++ ? "," : ""), d[2] - $1 }' "$LOG")
    last_before=$(awk '/RIG-L1-PAUSE( |$)/ { exit } ($2 == "EMBER-L2-TICK" && $6 ~ /^ged_irqs=[0-9]+$/) { t = $3 } END { print t + 0 }' "$LOG")
    first_after=$(awk '/RIG-L1-RESTORED( |$)/ { r = 1; next } r && ($2 == "EMBER-L2-TICK" && $6 ~ /^ged_irqs=[0-9]+$/) { print $3; exit }' "$LOG")
    # Guest uptime between the last tick before the pause and the first after the restore,
    # and how much of it is not explained by the time the guest really ran (host time from
    # that tick to the pause, and from the restore to that tick): about 0 when kvmclock
    # goes on from the snapshot, about the downtime if it had jumped.
    read -r uptime_gap uptime_jump < <(awk '
        /RIG-L1-PAUSE( |$)/ { p = 1; tp = $1 }
        !p && ($2 == "EMBER-L2-TICK" && $6 ~ /^ged_irqs=[0-9]+$/) { split($4, u, "="); b = u[2]; tb = $1 }
        /RIG-L1-RESTORED( |$)/ { r = 1; tr = $1; next }
        r && ($2 == "EMBER-L2-TICK" && $6 ~ /^ged_irqs=[0-9]+$/) { split($4, u, "="); g = u[2] - b; printf "%.2f %.2f\n", g, g - ((tp - tb) + ($1 - tr)); exit }' "$LOG") || true
    [ -n "$after" ] || failed+=(ticks_after_restore)
    # The restore renews the VM generation id and raises the GED's interrupt: the guest
    # took one more of them by its first tick after the restore.
    ged_before=$(awk '/RIG-L1-PAUSE( |$)/ { exit } ($2 == "EMBER-L2-TICK" && $6 ~ /^ged_irqs=[0-9]+$/) { t = $6 } END { sub("ged_irqs=", "", t); print t + 0 }' "$LOG")
    ged_after=$(awk '/RIG-L1-RESTORED( |$)/ { r = 1; next } r && ($2 == "EMBER-L2-TICK" && $6 ~ /^ged_irqs=[0-9]+$/) { sub("ged_irqs=", "", $6); print $6 + 0; exit }' "$LOG")
    awk -v a="${ged_after:-0}" -v b="${ged_before:-0}" 'BEGIN { exit !(a > b) }' || failed+=(vmgenid_notified)
    # Two clones of one snapshot, each reseeded at handover: both answer, draw different
    # random bytes, and read a wall clock within 1 s of L1's.
    r1=$(field RIG-L1-AGENT-R1)
    r2=$(field RIG-L1-AGENT-R2)
    case "$r1" in "rc=0 out="?*) ;; *) failed+=(clone1_exec) ;; esac
    case "$r2" in "rc=0 out="?*) ;; *) failed+=(clone2_exec) ;; esac
    bytes1=$(echo "$r1" | awk '{ print $2 }')
    bytes2=$(echo "$r2" | awk '{ print $2 }')
    [ -n "$bytes1" ] && [ "$bytes1" != "$bytes2" ] || failed+=(clones_draw_different_bytes)
    for n in 1 2; do
        g=$(field "RIG-L1-AGENT-R$n" | awk '{ print $3 }')
        h=$(field "RIG-L1-CLOCK-R$n")
        awk -v g="${g:-0}" -v h="${h:-99}" 'BEGIN { d = g - h; exit !(d <= 1 && d >= -1) }' || failed+=("clone${n}_clock")
    done
    awk -v j="${uptime_jump:-99}" 'BEGIN { exit !(j < 2 && j > -2) }' || failed+=(uptime_continues)
    # Guest memory touched: the second clone's mapping of the memory file right after its
    # restore, and after its Reseed and first command (Rss: pages read in; dirty: copied).
    kib() { field "$1" | sed -n "s/.*$2=\([0-9]*\).*/\1/p"; }
    mem_json=$(printf '{"guest_mem_kib": %s, "at_restore": {"rss_kib": %s, "dirty_kib": %s}, "after_first_exec": {"rss_kib": %s, "dirty_kib": %s}}' \
        "$(field RIG-L1-SNAPSHOT-DONE | sed -n 's/.*mem_kib=\([0-9]*\).*/\1/p' | grep . || echo null)" \
        "$(kib RIG-L1-MEM-AT-RESTORE rss_kib | grep . || echo null)" "$(kib RIG-L1-MEM-AT-RESTORE dirty_kib | grep . || echo null)" \
        "$(kib RIG-L1-MEM-AFTER-EXEC rss_kib | grep . || echo null)" "$(kib RIG-L1-MEM-AFTER-EXEC dirty_kib | grep . || echo null)")
    restore_json=$(printf '{"seconds": {"pause_to_snapshot_done": %s, "stop_to_restored": %s, "restore_request": %s, "restored_to_first_exec_reply": %s}, "guest_memory_touched": %s, "last_tick_before": %s, "first_tick_after": %s, "uptime_gap_s": %s, "uptime_jump_s": %s, "clock_minus_host_after_s": [%s], "ged_irqs_before": %s, "ged_irqs_after": %s}' \
        "$(since RIG-L1-PAUSE RIG-L1-SNAPSHOT-DONE)" "$(since RIG-L1-SNAPSHOT-DONE RIG-L1-RESTORED)" \
        "$(since RIG-L1-RESTORE-START RIG-L1-RESTORED)" "$(since RIG-L1-RESTORED-2 RIG-L1-AGENT-R2)" "$mem_json" \
        "${last_before:-null}" "${first_after:-null}" "${uptime_gap:-null}" "${uptime_jump:-null}" "$after" \
        "${ged_before:-null}" "${ged_after:-null}")
fi
if [ ${#failed[@]} -gt 0 ]; then
    # What CI shows of a failed run is its output: the VMM's exits and log, any seccomp kill
    # (the audit line names the syscall and the thread), and the console's last lines.
    {
        echo "rig: failed (${failed[*]}); what the console says (whole log: $LOG):"
        grep -E " (RIG-L1-EMBER[0-9]*-EXIT|RIG-L1-SECCOMP|RIG-L1-VMM|RIG-L1-NO-TICKS)" "$LOG" | tail -n 40 || true
        echo "rig: the console's last 30 lines:"
        tail -n 30 "$LOG"
    } >&2
fi
failed_json=$(printf '"%s", ' "${failed[@]}" | sed 's/, $//')
[ ${#failed[@]} -gt 0 ] || failed_json=""
printf '{"passed": %s, "failed": [%s], "booted": %s, "qemu_exit": %s, "seconds": {"total": %s, "kernel_download": %s, "build": %s, "initramfs": %s, "qemu_to_l1_init": %s, "l1_insmod_kvm": %s, "ember_start_to_l2_userspace": %s, "l2_kernel_uptime_at_userspace": %s, "l2_modules": %s, "l2_userspace_to_done": %s, "ember_start_to_exit": %s}, "l2_virtio_devices": [%s], "l2_cpu": "%s", "l2_vcpus": %s, "l2_kernel": "%s", "l2_rtc": "%s", "l2_vmgenid": "%s", "l2_clock_minus_host_s": %s, "l1_clock_minus_host_s": %s, "l2_ext4_rw": "%s", "l2_ext4_ro": "%s", "l2_net": "%s", "l2_insmod_failures": %s, "l1_cpu": "%s", "host_cpu": "%s", "host_kernel": "%s", "kernel_format": "%s", "snapshot_restore": %s, "agent": {"uname": "%s", "l2_done_to_first_reply_s": %s}, "log": "%s"}\n' \
    "$([ ${#failed[@]} -eq 0 ] && echo true || echo false)" "$failed_json" \
    "$booted" "$QEMU_RC" "$(elapsed "$T_START" "$T_END")" "$(elapsed "$T_START" "$T_KERNEL")" \
    "$(elapsed "$T_BUILD0" "$T_BUILD")" "$(elapsed "$T_BUILD" "$T_PREP")" \
    "$(a=$(at RIG-L1-INIT); [ -n "$a" ] && elapsed "$T_QEMU" "$a" || printf null)" \
    "$(since RIG-L1-INIT RIG-L1-KVM-READY)" \
    "$(since RIG-L1-EMBER-START EMBER-L2-USERSPACE)" "${l2_uptime:-null}" \
    "$(since EMBER-L2-USERSPACE EMBER-L2-MODULES)" "$(since EMBER-L2-USERSPACE EMBER-L2-DONE)" \
    "$(since RIG-L1-EMBER-START RIG-L1-EMBER-EXIT)" \
    "$devices" "$(field EMBER-L2-CPU | sed 's/^model name[[:space:]]*: //')" \
    "$(n=$(field EMBER-L2-NCPUS | tr -cd '0-9'); printf '%s' "${n:-null}")" "$(field EMBER-L2-KERNEL)" \
    "$(field EMBER-L2-RTC)" "$(field EMBER-L2-VMGENID)" "$date_skew" "$l1_skew" "$(field EMBER-L2-EXT4-RW)" "$(field EMBER-L2-EXT4-RO)" "$(field EMBER-L2-NET)" \
    "$(grep -c " EMBER-L2-INSMOD-FAILED" "$LOG" || true)" "$(field RIG-L1-HOST-CPU)" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" "$(uname -r)" \
    "$KERNEL_FORMAT" "$restore_json" \
    "$(field RIG-L1-AGENT-UNAME | sed 's/^rc=[0-9]* out=//')" "$(since EMBER-L2-DONE RIG-L1-AGENT-FIRST-REPLY)" "$LOG"
[ ${#failed[@]} -eq 0 ]
