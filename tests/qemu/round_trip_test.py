#!/usr/bin/env python3
"""Memory round trip through a real QEMU, no guest OS (SeaBIOS only).

A 256 MiB VM's RAM file is pre-filled with a known random pattern with zero
stretches; SeaBIOS runs on the source (and writes its tables into RAM). The
VM is moved with qemu-lazy-migrate onto a lazyram mount with a directory
store, left paused; the page server listens on every interface with a shared
key (--auth-key-file), as between two hosts. QEMU's own view of guest memory
(QMP pmemsave of all RAM: with 256 MiB on pc every byte is below 4 GiB and
guest-physical address == RAM file offset) must equal the source RAM file as
it was at stop time, byte for byte. Then the destination runs, bytes are written into guest memory
through QEMU's gdbstub (QEMU 7.2's HMP has no memory write command), the
destination quits, the mount is unmounted, and the store file must hold the
written bytes (and otherwise the source's RAM).
"""
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_env import (MIB, PAGE, Env, GdbStub, QMP, check, first_difference, need_tools,  # noqa: E402
                       pattern_image, run, say)

SIZE = 256 * MIB
# SeaBIOS's timer interrupt keeps counting in the BIOS data area while the
# destination runs (ticks since midnight at 0x46c, overflow flag at 0x470).
BDA_TIMER = (0x46C, 0x471)


def wait_for_bios(path, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                if b"No bootable device" in f.read():
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("SeaBIOS did not finish on the source")


def main():
    need_tools()
    env = Env("round_trip")
    ram = env.path("guest.ram")
    say("filling a 256 MiB RAM file with a seeded pattern")
    pattern_image(ram, SIZE, seed=3)
    src_qmp = env.path("src.qmp")
    src = env.start_qemu(env.qemu_argv(ram, SIZE, src_qmp, debugcon=env.path("bios.log")),
                         "src.log")
    wait_for_bios(env.path("bios.log"))
    say("SeaBIOS finished on the source")

    dest_qmp = env.path("dest.qmp")
    store = env.path("store")
    os.mkdir(store)
    mnt, ctl = env.path("mnt"), env.path("mnt.sock")
    env.add_mount(mnt, ctl)
    # The two-host set-up: the page server on every interface, which it
    # allows only with a shared key, and the mount proving the same key.
    key = env.path("auth.key")
    with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    code, result, _ = env.migrate(
        "migrate", "--qmp", src_qmp, "--mount", mnt, "--control", ctl, "--store", store,
        "--listen", "0.0.0.0:0", "--auth-key-file", key,
        "--paused", "--json", "--no-progress", "--",
        *env.qemu_argv("/placeholder", SIZE, dest_qmp))
    say(f"times: {result}")
    check(result["complete"], "not every page local after the script returned")
    check(src.wait(timeout=60) == 0, "source QEMU did not quit cleanly")
    status = env.status(ctl)
    check(status["source"] == "detached", f"source state {status['source']}")
    check([r["name"] for r in status["regions"]] == ["mem0"], f"regions {status['regions']}")
    check(status["regions"][0]["size"] == SIZE, "region size")

    with open(ram, "rb") as f:
        at_stop = f.read()
    dest = QMP(dest_qmp)
    check(dest.cmd("query-status")["status"] == "paused", "destination not paused")
    seen = dest.pmemsave(env.path("dump"), 0, SIZE)
    diffs = first_difference(at_stop, seen)
    check(not diffs, f"guest memory differs from the source RAM file at {[hex(d) for d in diffs]}")
    say("pmemsave of all 256 MiB equals the source RAM file at stop time")

    dest.cmd("cont")
    check(dest.cmd("query-status")["status"] == "running", "destination not running after cont")
    time.sleep(0.5)
    writes = {
        0x123458: b"lazyram round trip",                  # in random data
        3 * MIB + 0x1000: b"\x5a" * PAGE,                 # a whole page in a hole
        6 * MIB + 0x2FF8: bytes(range(16)),               # across a page, in explicit zeros
        200 * MIB + 0x777: os.urandom(3 * PAGE + 5),      # several pages, unaligned
        SIZE - 8: b"LASTBYTE",                            # the last bytes of RAM
    }
    gdb = GdbStub(dest, env.path("gdb.sock"))
    for addr, data in writes.items():
        gdb.write(addr, data)
        check(gdb.read(addr, len(data)) == data, f"gdbstub read-back at {addr:#x}")
    gdb.detach()
    say(f"wrote {len(writes)} ranges into guest memory through the gdbstub")
    time.sleep(0.5)
    dirty = env.status(ctl)["regions"][0]["pages_dirty"]
    say(f"pages dirty before quit: {dirty}")

    pid = result["dest_pid"]
    env.quit_qemu(dest, pid)
    check(env.unmount(mnt, ctl), "lazyramctl unmount failed")
    with open(os.path.join(store, "mem0"), "rb") as f:
        stored = f.read()
    check(len(stored) == SIZE, f"store file is {len(stored)} bytes")
    for addr, data in writes.items():
        check(stored[addr:addr + len(data)] == data, f"written bytes at {addr:#x} not in the store")
    expected = bytearray(at_stop)
    for addr, data in writes.items():
        expected[addr:addr + len(data)] = data
    diffs = first_difference(bytes(expected), stored, ignore=[BDA_TIMER])
    check(not diffs, f"store differs from source + writes at {[hex(d) for d in diffs]}")
    say("the store holds the source RAM plus every written byte")


if __name__ == "__main__":
    run(main)
