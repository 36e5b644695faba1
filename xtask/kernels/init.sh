#!/bin/busybox sh
# PID 1 of a `cargo xtask kernels` guest (busybox, from the generated initramfs).
# Loads the modules listed in /modules.order (the 9p/virtio closure that is not built in),
# mounts the host's root file system read-only over virtio-9p at /host, gives it fresh
# proc/sys/dev/cgroup2 mounts and writable tmpfs on /tmp and /run, then runs the smoke test
# (/smoke.sh) chrooted into it with the host's own bash, python3, curl and agent binary.
# Everything it reports goes to the serial console; it always powers the guest off.
/bin/busybox mkdir -p /bin /proc /sys /dev /host
/bin/busybox --install -s /bin
export PATH=/bin

say() { echo "SMOKE-INIT: $*"; }
off() {
    sync
    echo o > /proc/sysrq-trigger
    sleep 5
    poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /modules.order); do
    insmod "/lib/modules/$m" || say "insmod $m failed"
done
opts=trans=virtio,version=9p2000.L,msize=512000,ro
if ! mount -t 9p -o "$opts,cache=loose" hostroot /host && ! mount -t 9p -o "$opts" hostroot /host; then
    say "mounting the host root over 9p failed"
    echo "SMOKE kernel=$(uname -r) loaded=no load_s=- degraded=- server_spans=0 client_spans=0 result=fail reason=no-9p"
    off
fi
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mount -t devpts devpts /host/dev/pts 2>/dev/null
mount -t tmpfs tmpfs /host/tmp
mount -t tmpfs tmpfs /host/run
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup || say "mounting cgroup2 failed"
ip link set lo up
cp /smoke.sh /host/tmp/smoke.sh
. /smoke.env
chroot /host /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp \
    TERM=dumb /bin/bash /tmp/smoke.sh "$SOCKTRACE_BIN" "$SOCKTRACE_LOAD_TIMEOUT" \
    "$SOCKTRACE_VERIFIER"
say "smoke script exited with $?"
off
