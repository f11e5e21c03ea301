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
import fcntl
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_env import MIB, Env, QMP, check, need_tools, run, say, skip  # noqa: E402

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


def cache_dir():
    return os.environ.get("LAZYRAM_QEMU_CACHE", "/var/cache/lazyram")


def debian_kernel():
    """Path of a Debian cloud kernel (vmlinuz), downloaded once into the cache."""
    root = os.path.join(cache_dir(), "kernel")
    os.makedirs(cache_dir(), exist_ok=True)
    with open(os.path.join(cache_dir(), ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = [f for f in os.listdir(os.path.join(root, "boot"))
                 if f.startswith("vmlinuz-")] if os.path.isdir(os.path.join(root, "boot")) else []
        if found:
            return os.path.join(root, "boot", sorted(found)[-1])
        for tool in ("apt-cache", "apt-get", "dpkg"):
            if not shutil.which(tool):
                skip(f"{tool} is not available (a Debian system is needed to fetch the kernel)")
        pkg = None
        for attempt in range(2):
            r = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"],
                               capture_output=True, text=True)
            m = re.search(r"Depends: (linux-image-\d\S*-cloud-amd64)", r.stdout)
            if m:
                pkg = m.group(1)
                break
            if attempt == 0:
                say("apt does not know linux-image-cloud-amd64 yet: apt-get update")
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        if not pkg:
            skip("cannot resolve linux-image-cloud-amd64 with apt-cache (no Debian package lists?)")
        say(f"downloading {pkg} into {cache_dir()} (once)")
        tmp = tempfile.mkdtemp(dir=cache_dir(), prefix=".download.")
        try:
            r = subprocess.run(["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root", pkg],
                               cwd=tmp, capture_output=True, text=True, timeout=600)
            debs = [f for f in os.listdir(tmp) if f.endswith(".deb")]
            if r.returncode != 0 or not debs:
                skip(f"apt-get download {pkg} failed (no network?): {r.stderr.strip()[-300:]}")
            x = os.path.join(tmp, "x")
            subprocess.run(["dpkg", "-x", os.path.join(tmp, debs[0]), x], check=True)
            shutil.rmtree(root, ignore_errors=True)
            os.rename(x, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        found = [f for f in os.listdir(os.path.join(root, "boot")) if f.startswith("vmlinuz-")]
        check(found, f"no vmlinuz in {pkg}")
        return os.path.join(root, "boot", found[0])


def static_busybox():
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            elf = f.read(1 << 16)
        if elf[:4] != b"\x7fELF" or elf[4] != 2:
            continue
        phoff, = struct.unpack_from("<Q", elf, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
        types = [struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)]
        if 3 not in types:  # no PT_INTERP: static
            return path
    skip("no static busybox (Debian package busybox-static; tools/setup installs it)")


def newc_initramfs(path, busybox):
    """A cpio 'newc' archive: /init, /bin/busybox, /dev/console, a few dirs."""
    entries = [("dev", 0o40755, b""), ("proc", 0o40755, b""), ("sys", 0o40755, b""),
               ("mnt", 0o40755, b""), ("bin", 0o40755, b""), ("tmp", 0o41777, b""),
               ("dev/console", 0o20600, b""), ("init", 0o100755, INIT.encode())]
    with open(busybox, "rb") as f:
        entries.append(("bin/busybox", 0o100755, f.read()))
    entries.append(("TRAILER!!!", 0, b""))
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries, 1):
        rdev = (5, 1) if name == "dev/console" else (0, 0)
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        out += b"070701" + b"".join(b"%08x" % v for v in fields) + name.encode() + b"\0"
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    with open(path, "wb") as f:
        f.write(out)


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
    newc_initramfs(initrd, busybox)
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
