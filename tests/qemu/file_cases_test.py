#!/usr/bin/env python3
"""The mem-path file cases a real QEMU hits on a lazyram mount.

1. A mem-path that does not exist yet on a mount without a source: QEMU
   creates it (O_CREAT|O_EXCL), ftruncates it to size= and runs on it; the
   mount file then holds what the guest (SeaBIOS) wrote.
2. A region larger than size=: QEMU accepts it. The source VM's backend is
   size=64M on a 128 MiB file, so the page server's region is 128 MiB; the
   script migrates it and the destination sees the source's 64 MiB of RAM.
3. A region smaller than size=: the destination command line asks for more
   than the region has; QEMU refuses, and its own error line shows in the
   script's output; the script exits non-zero, unmounts, stops its page
   server and resumes the source VM.
"""
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_env import (MIB, Env, QMP, check, first_difference, mount_device,  # noqa: E402
                      need_tools, pattern_image, run, say)


def wait_for_bios(path, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and b"No bootable device" in open(path, "rb").read():
            return
        time.sleep(0.1)
    raise AssertionError(f"SeaBIOS did not finish ({path})")


def missing_file_on_empty_mount(env):
    say("case 1: a mem-path that does not exist yet, on a mount without a source")
    mnt, ctl = env.mount("empty")
    path = os.path.join(mnt, "fresh")
    check(not os.path.exists(path), "mount not empty")
    qmp_path = env.path("fresh.qmp")
    q = env.start_qemu(env.qemu_argv(path, 64 * MIB, qmp_path, debugcon=env.path("fresh.bios")),
                       "fresh.log")
    wait_for_bios(env.path("fresh.bios"))
    check(os.stat(path).st_size == 64 * MIB, f"{path} is {os.stat(path).st_size} bytes")
    regions = env.status(ctl)["regions"]
    check([(r["name"], r["size"]) for r in regions] == [("fresh", 64 * MIB)], f"regions {regions}")
    qmp = QMP(qmp_path)
    qmp.cmd("stop")
    seen = qmp.pmemsave(env.path("fresh.dump"), 0, 64 * MIB)
    with open(path, "rb") as f:
        content = f.read()
    check(any(content), "SeaBIOS wrote nothing into the new file")
    diffs = first_difference(content, seen)
    check(not diffs, f"file and guest memory differ at {[hex(d) for d in diffs]}")
    env.quit_qemu(qmp, q.pid)
    check(env.unmount(mnt, ctl), "unmount of the empty mount failed")
    say("case 1: QEMU created, sized and used the file; it reads back as guest memory")


def larger_region(env):
    say("case 2: a region larger than size= (a 128 MiB file behind a size=64M backend)")
    ram = env.path("big.ram")
    pattern_image(ram, 128 * MIB, seed=5)
    src_qmp = env.path("big-src.qmp")
    src = env.start_qemu(env.qemu_argv(ram, 64 * MIB, src_qmp, debugcon=env.path("big.bios")),
                         "big-src.log")
    wait_for_bios(env.path("big.bios"))
    mnt, ctl = env.path("big"), env.path("big.sock")
    env.add_mount(mnt, ctl)
    dest_qmp = env.path("big-dest.qmp")
    _, result, _ = env.migrate("migrate", "--qmp", src_qmp, "--mount", mnt, "--control", ctl,
                               "--paused", "--json", "--no-progress", "--",
                               *env.qemu_argv("/placeholder", 64 * MIB, dest_qmp))
    check(src.wait(timeout=60) == 0, "source QEMU did not quit cleanly")
    check(os.stat(os.path.join(mnt, "mem0")).st_size == 128 * MIB, "region is not 128 MiB")
    dest = QMP(dest_qmp)
    seen = dest.pmemsave(env.path("big.dump"), 0, 64 * MIB)
    with open(ram, "rb") as f:
        at_stop = f.read(64 * MIB)
    diffs = first_difference(at_stop, seen)
    check(not diffs, f"guest memory differs from the source at {[hex(d) for d in diffs]}")
    dest.cmd("cont")
    check(dest.cmd("query-status")["running"], "destination does not run")
    env.quit_qemu(dest, result["dest_pid"])
    check(env.unmount(mnt, ctl), "unmount failed")
    say("case 2: accepted; the destination's 64 MiB equal the source's")


def smaller_region(env):
    say("case 3: a region smaller than size= (64 MiB region, destination asks for 128M)")
    ram = env.path("small.ram")
    pattern_image(ram, 64 * MIB, seed=7)
    src_qmp = env.path("small-src.qmp")
    src = env.start_qemu(env.qemu_argv(ram, 64 * MIB, src_qmp, debugcon=env.path("small.bios")),
                         "small-src.log")
    wait_for_bios(env.path("small.bios"))
    mnt, ctl = env.path("small"), env.path("small.sock")
    env.add_mount(mnt, ctl)
    code, _, err = env.migrate("migrate", "--qmp", src_qmp, "--mount", mnt, "--control", ctl,
                               "--no-progress", "--",
                               *env.qemu_argv("/placeholder", 128 * MIB,
                                              env.path("small-dest.qmp")),
                               expect_ok=False)
    check(code == 1, f"script exit {code}, wanted 1")
    check("destination QEMU exited with status 1" in err, "no line saying the destination failed")
    check("backing store size 0x4000000 does not match 'size' option 0x8000000" in err,
          "QEMU's own error is not in the script's output")
    check("source VM resumed" in err, "the script did not resume the source")
    check(not mount_device(mnt), "the mount is still there after the failure")
    qmp = QMP(src_qmp)
    check(qmp.cmd("query-status")["status"] == "running", "the source VM is not running again")
    left = [(p, n) for p, n in env.running_descendants() if p != src.pid]
    check(not left, f"left running after the failure: {left}")
    env.quit_qemu(qmp, src.pid)
    say("case 3: refused with QEMU's message; nothing left behind; source running again")


def main():
    need_tools()
    env = Env("file_cases")
    missing_file_on_empty_mount(env)
    larger_region(env)
    smaller_region(env)


if __name__ == "__main__":
    run(main)
