#!/bin/sh
# PID 1 of the VM test guest that `cargo xtask vm-test` boots (xtask/src/vm_test.rs); busybox sh runs it.
#
# xtask writes the run's settings next to it, in /etc/ztna-vm/:
#   env        sourced: the environment of the tests (exported variables) and ZTNA_VM_WORKDIR
#   modules    kernel modules to insert, one path a line, dependencies first
#   tests      test executables, one `name path` a line
#   test-args  extra arguments for every test executable, one a line
#
# The console is the only channel back to xtask. Its last word is a marker line, `ZTNA-VM-RESULT: PASS` or
# `ZTNA-VM-RESULT: FAIL <names>`; a guest that stops without printing one (panic, hang, init dying) fails too.

# Debian's busybox-static prefers its own applets to PATH, so `ip` in this script is busybox's; the tests exec the
# real `ip` and `ping` that xtask copied in, through PATH.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo "ztna-vm: init started on kernel $(uname -r)"

finish() {
    echo
    echo "ZTNA-VM-RESULT: $*"
    if grep -qw ztna.shell /proc/cmdline 2>/dev/null; then
        echo "ztna-vm: ztna.shell is on the kernel command line: a shell on the console; leave it to power off"
        setsid cttyhack sh
    fi
    poweroff -f
}

setup() {
    "$@" || finish "FAIL setup ($*)"
}

setup mount -t proc proc /proc
setup mount -t sysfs sysfs /sys
setup mount -t devtmpfs devtmpfs /dev
# The agent pins its maps and links under /sys/fs/bpf/ztna.
setup mount -t bpf bpf /sys/fs/bpf
# A workspace under /tmp (or /run) is staged at its host path: the initramfs's own directory, already writable,
# stays then, instead of a tmpfs that would hide the test executables.
for dir in /run /tmp; do
    if [ -z "$(ls -A "$dir")" ]; then
        setup mount -t tmpfs tmpfs "$dir"
    fi
done
# `ip netns add` bind-mounts the namespaces it names under /run/netns (/var/run is a link to /run).
setup mkdir -p /run/netns
setup ip link set lo up
while read -r module; do
    [ -n "$module" ] && setup insmod "$module"
done </etc/ztna-vm/modules
hostname ztna-vm

. /etc/ztna-vm/env
set --
while IFS= read -r arg; do
    set -- "$@" "$arg"
done </etc/ztna-vm/test-args

failed=""
count=0
while read -r name path; do
    [ -n "$name" ] || continue
    count=$((count + 1))
    echo "ztna-vm: running $name"
    start=$(date +%s)
    # One test at a time: the namespace tests share /run/netns and /sys/fs/bpf/ztna.
    (cd "$ZTNA_VM_WORKDIR" && "$path" --test-threads=1 "$@" </dev/null)
    status=$?
    seconds=$(($(date +%s) - start))
    if [ "$status" -eq 0 ]; then
        echo "ztna-vm: $name passed in ${seconds}s"
    else
        echo "ztna-vm: $name FAILED (exit status $status) after ${seconds}s"
        failed="$failed $name"
    fi
done </etc/ztna-vm/tests

if [ "$count" -eq 0 ]; then
    finish "FAIL no-tests"
elif [ -n "$failed" ]; then
    # Kernel warnings (a verifier splat, an oops) explain more than the test's own message.
    echo "ztna-vm: last kernel messages:"
    dmesg | tail -n 40
    finish "FAIL$failed"
else
    finish "PASS"
fi
