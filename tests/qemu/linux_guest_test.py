#!/usr/bin/env python3
"""A live Linux guest migrated lazily keeps running on the destination.

Debian's cloud kernel (linux-image-*-cloud-amd64, fetched once with
`apt-get download` + `dpkg -x` into a cache: $LAZYRAM_QEMU_CACHE, default
/var/cache/lazyram) boots a busybox-static initramfs built here. The guest
fills a 64 MiB tmpfs file with random data and prints, every second on the
serial port, `tick N MD5`. The VM is moved with qemu-lazy-migrate (TCG, the
source quits); the destination must keep printing the same md5 with tick
numbers that carry on from the source's, also after every page is local and
the page server is gone.
"""
import os
import re
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_env import MIB, Env, QMP, check, need_tools, run, say  # noqa: E402
from linux_guest import debian_kernel, newc_initramfs, static_busybox  # noqa: E402

RAM = 512 * MIB
TICK = re.compile(r"^tick (\d+) ([0-9a-f]{32})\r?$", re.M)
BOOT_TIMEOUT = 600   # TCG on a loaded 2-core machine can be very slow
TICK_TIMEOUT = 300

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=128m tmpfs /mnt
dd if=/dev/urandom of=/mnt/data bs=1M count=64 2>/dev/null
echo "data ready"
i=0
while :; do
  set -- $(md5sum /mnt/data)
  echo "tick $i $1"
  i=$((i + 1))
  sleep 1
done
"""


def ticks(path):
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    return [(int(n), md5) for n, md5 in TICK.findall(text)]


def wait_ticks(path, count, after, timeout, what):
    """Waits for `count` complete tick lines numbered above `after`."""
    deadline = time.monotonic() + timeout
    while True:
        got = [t for t in ticks(path) if t[0] > after]
        if len(got) >= count:
            return got
        if time.monotonic() > deadline:
            with open(path, errors="replace") as f:
                tail = f.read()[-2000:]
            raise AssertionError(f"{what}: {len(got)} ticks after {after} within {timeout} s; "
                                 f"serial output ends with:\n{tail}")
        time.sleep(0.5)


def main():
    need_tools()
    busybox = static_busybox()
    kernel = debian_kernel()
    env = Env("linux")
    initrd = env.path("initrd.cpio")
    newc_initramfs(initrd, busybox, INIT)
    say(f"kernel {kernel}; initramfs {os.path.getsize(initrd)} bytes")

    ram = env.path("guest.ram")
    with open(ram, "wb") as f:
        f.truncate(RAM)

    def argv(mem_path, qmp, serial):
        return env.qemu_argv(mem_path, RAM, qmp, "-kernel", kernel, "-initrd", initrd,
                             "-append", "console=ttyS0 panic=-1 quiet", "-no-reboot",
                             "-serial", f"file:{serial}")

    src_qmp, src_serial = env.path("src.qmp"), env.path("src.serial")
    t0 = time.monotonic()
    src = env.start_qemu(argv(ram, src_qmp, src_serial), "src.log")
    first = wait_ticks(src_serial, 3, -1, BOOT_TIMEOUT, "source boot")
    md5 = first[0][1]
    say(f"source booted and ticking after {time.monotonic() - t0:.1f} s: md5 {md5}")
    check(all(m == md5 for _, m in first), f"source md5 changes by itself: {first}")

    mnt, ctl = env.path("mnt"), env.path("mnt.sock")
    dest_qmp, dest_serial = env.path("dest.qmp"), env.path("dest.serial")
    env.add_mount(mnt, ctl)
    _, result, _ = env.migrate("migrate", "--qmp", src_qmp, "--mount", mnt, "--control", ctl,
                               "--json", "--no-progress", "--",
                               *argv("/placeholder", dest_qmp, dest_serial))
    say(f"times: stop->running {result['stop_to_running_s']:.3f} s, running->local "
        f"{result['running_to_local_s']:.3f} s, {result['demand_fetches']} demand fetches")
    check(src.wait(timeout=60) == 0, "source QEMU did not quit cleanly")
    last_src = max(n for n, _ in ticks(src_serial))
    src_md5 = {m for _, m in ticks(src_serial)}
    check(src_md5 == {md5}, f"source printed several md5s: {src_md5}")

    status = env.status(ctl)
    check(status["complete"] and status["source"] == "detached",
          f"mount not complete/detached: {status['source']}")
    got = wait_ticks(dest_serial, 3, last_src, TICK_TIMEOUT, "destination")
    say(f"destination ticks {got[0][0]}..{got[-1][0]} (source stopped at tick {last_src})")
    numbers = [n for n, _ in ticks(dest_serial)]
    check(numbers == sorted(set(numbers)), f"destination ticks not increasing: {numbers}")
    check(numbers[0] > last_src, f"destination restarted counting: {numbers[0]} <= {last_src}")
    bad = [(n, m) for n, m in ticks(dest_serial) if m != md5]
    check(not bad, f"destination md5 differs from the source's {md5}: {bad[:3]}")
    dest = QMP(dest_qmp)
    check(dest.cmd("query-status")["running"], "destination not running")
    env.quit_qemu(dest, result["dest_pid"])
    check(env.unmount(mnt, ctl), "unmount failed")
    say("the guest kept its data and its clock across the lazy migration")


if __name__ == "__main__":
    run(main)
