#!/bin/sh
# ember image initramfs /init: load the virtio modules, mount the read-only root disk with a
# RAM overlay over it, configure eth0 from the command line, then hand over to ember-agent as
# PID 1. Any failure prints one EMBER-INITRD-ERROR line on the console and powers off.
export PATH=/bin
fail() {
    echo "EMBER-INITRD-ERROR $*"
    echo "EMBER-INITRD-ERROR $*" >/dev/kmsg 2>/dev/null
    sleep 1
    poweroff -f
    exit 1
}
/bin/busybox --install -s /bin || {
    /bin/busybox echo "EMBER-INITRD-ERROR busybox --install failed"
    /bin/busybox poweroff -f
}
mkdir -p /proc /sys /dev /lower /upper /newroot
mount -t proc proc /proc || fail "mount proc on /proc"
mount -t sysfs sysfs /sys || fail "mount sysfs on /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount devtmpfs on /dev"
CMDLINE=$(cat /proc/cmdline)
# arg NAME: the value of NAME=VALUE on the kernel command line.
arg() {
    for a in $CMDLINE; do
        case "$a" in "$1="*) echo "${a#*=}"; return ;; esac
    done
}
# params MODULE: its MODULE.param=value arguments (insmod does not read the command line).
params() {
    for a in $CMDLINE; do
        case "$a" in "$1."*=*) printf '%s ' "${a#"$1".}" ;; esac
    done
}
while read -r m; do
    [ -n "$m" ] || continue
    name=${m%%.ko*}
    name=${name//-/_}
    # shellcheck disable=SC2046
    insmod "/lib/modules/$m" $(params "$name") || fail "insmod $m"
done </etc/ember-modules
i=0
while [ ! -b /dev/vda ]; do
    i=$((i + 1))
    [ "$i" -le 1000 ] || fail "no /dev/vda (the root disk) after 10 s"
    sleep 0.01
done
mount -t ext4 -o ro /dev/vda /lower || fail "mount /dev/vda (ext4, read-only) on /lower"
size=$(arg ember.overlay_size)
size=${size:-50%}
mount -t tmpfs -o "size=$size,mode=0755" tmpfs /upper || fail "mount tmpfs (size=$size) on /upper"
mkdir -p /upper/upper /upper/work || fail "mkdir /upper/upper /upper/work"
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/upper,workdir=/upper/work /newroot \
    || fail "mount overlay (lower /dev/vda, upper tmpfs) on /newroot"
ip=$(arg ember.ip)
gw=$(arg ember.gw)
dns=$(arg ember.dns)
if [ -n "$ip" ] && [ -n "$gw" ] && [ -e /sys/class/net/eth0 ]; then
    ip link set lo up
    ip addr add "$ip" dev eth0 || fail "ip addr add $ip dev eth0"
    ip link set eth0 up || fail "ip link set eth0 up"
    ip route add default via "$gw" || fail "ip route add default via $gw"
fi
if [ -n "$dns" ]; then
    rm -f /newroot/etc/resolv.conf
    echo "nameserver $dns" >/newroot/etc/resolv.conf || fail "writing /etc/resolv.conf"
fi
[ -x /newroot/usr/local/bin/ember-agent ] || fail "no /usr/local/bin/ember-agent in the root filesystem"
mkdir -p /newroot/dev /newroot/proc /newroot/sys
mount --move /dev /newroot/dev || fail "mount --move /dev /newroot/dev"
mount --move /sys /newroot/sys || fail "mount --move /sys /newroot/sys"
mount --move /proc /newroot/proc || fail "mount --move /proc /newroot/proc"
exec switch_root /newroot /usr/local/bin/ember-agent --listen vsock:52
fail "switch_root to /newroot failed"
