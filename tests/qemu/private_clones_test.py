#!/usr/bin/env python3
"""One source image, two private clones (share=off) at once.

A stopped 128 MiB SeaBIOS VM is saved and served once (qemu-lazy-migrate
source), then started twice from it (qemu-lazy-migrate dest --share off) on
two mounts: two destination QEMUs map the same source RAM MAP_PRIVATE and
run side by side. Each writes into its guest
memory (through QEMU's gdbstub); each must see the source content plus its
own writes only, and neither mount nor the source RAM file may change.
"""
import json
import os
import signal
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_env import (MIB, PAGE, Env, GdbStub, QMP, check, first_difference,  # noqa: E402
                      need_tools, pattern_image, run, say)

SIZE = 128 * MIB
BDA_TIMER = (0x46C, 0x471)  # SeaBIOS's tick counter runs while a clone runs


def wait_for_bios(path, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and b"No bootable device" in open(path, "rb").read():
            return
        time.sleep(0.1)
    raise AssertionError("SeaBIOS did not finish on the source")


def main():
    need_tools()
    env = Env("clones")
    ram = env.path("guest.ram")
    pattern_image(ram, SIZE, seed=11)
    src_qmp = env.path("src.qmp")
    src = env.start_qemu(env.qemu_argv(ram, SIZE, src_qmp, debugcon=env.path("bios.log")),
                         "src.log")
    wait_for_bios(env.path("bios.log"))

    # QEMU 7.2 refuses a second migration of a VM paused by a previous one,
    # so this uses the two-host form on one host: one `source` (state file +
    # page server), two `dest` runs from it.
    state = env.path("vm.state")
    source = env.popen_script("source", "--qmp", src_qmp, "--state", state,
                              "--listen", "127.0.0.1:0", "--keep-source", "--json")
    line = source.stdout.readline()
    check(line.strip(), f"qemu-lazy-migrate source printed nothing (exit {source.poll()})")
    address = json.loads(line)["address"]
    say(f"source: page server on {address}, state in {state}")
    clones = {}
    for name in ("a", "b"):
        mnt, ctl, qmp = env.path(name), env.path(f"{name}.sock"), env.path(f"{name}.qmp")
        env.add_mount(mnt, ctl)
        _, result, _ = env.migrate(
            "dest", "--connect", address, "--state", state, "--mount", mnt, "--control", ctl,
            "--share", "off", "--json", "--no-progress", "--",
            *env.qemu_argv("/placeholder", SIZE, qmp))
        check(result["complete"], f"clone {name}: not every page local")
        clones[name] = {"mnt": mnt, "ctl": ctl, "qmp": QMP(qmp), "pid": result["dest_pid"]}
        check("share=off" in open(f"/proc/{result['dest_pid']}/cmdline").read().replace("\0", " "),
              "the destination was not started with share=off")
    source.send_signal(signal.SIGTERM)
    check(source.wait(timeout=60) == 0, "qemu-lazy-migrate source did not exit 0 on SIGTERM")
    check(src.poll() is None, "--keep-source: the source QEMU is gone")
    with open(ram, "rb") as f:
        at_stop = f.read()
    for c in clones.values():
        check(c["qmp"].cmd("query-status")["running"], "a clone is not running")

    # Same address in both, different bytes; plus one address only in b.
    shared_addr, only_b = 40 * MIB + 0x10, 100 * MIB + 3 * PAGE
    writes = {
        "a": {shared_addr: b"A" * 64, 5 * MIB: b"clone a was here"},
        "b": {shared_addr: b"B" * 64, only_b: b"clone b" * 100},
    }
    for name, c in clones.items():
        gdb = GdbStub(c["qmp"], env.path(f"{name}.gdb"))
        for addr, data in writes[name].items():
            gdb.write(addr, data)
        gdb.detach()
    say("each clone wrote into its guest memory")

    for name, c in clones.items():
        c["qmp"].cmd("stop")
        seen = c["qmp"].pmemsave(env.path(f"{name}.dump"), 0, SIZE)
        expected = bytearray(at_stop)
        for addr, data in writes[name].items():
            expected[addr:addr + len(data)] = data
        diffs = first_difference(bytes(expected), seen, ignore=[BDA_TIMER])
        check(not diffs, f"clone {name}: guest memory differs from source + its own writes at "
                         f"{[hex(d) for d in diffs]}")
        with open(os.path.join(c["mnt"], "mem0"), "rb") as f:
            diffs = first_difference(at_stop, f.read())
        check(not diffs, f"clone {name}: the mount file changed at {[hex(d) for d in diffs]}")
        region = env.status(c["ctl"])["regions"][0]
        check(region["pages_dirty"] == 0, f"clone {name}: {region['pages_dirty']} dirty pages")
        say(f"clone {name}: source content plus its own writes only; its mount is unchanged")
    with open(ram, "rb") as f:
        check(f.read() == at_stop, "the source RAM file changed")

    for c in clones.values():
        env.quit_qemu(c["qmp"], c["pid"])
        check(env.unmount(c["mnt"], c["ctl"]), "unmount failed")
    env.quit_qemu(QMP(src_qmp), src.pid)


if __name__ == "__main__":
    run(main)
