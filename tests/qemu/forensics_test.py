#!/usr/bin/env python3
"""Memory forensics against a real QEMU (no guest OS; SeaBIOS at most).

1. Views vs QEMU's own dump (pc and q35): a stopped (-S) VM of 4 GiB, so RAM
   crosses the 4 GiB hole (pc: 3 GiB + 1 GiB, q35: 2 GiB + 2 GiB), whose RAM
   file is sparse with marker pages at the layout's edges and random MiBs.
   QEMU writes `dump-guest-memory` (ELF); lazyram mounts the RAM file
   read-only with --machine. vmcore.elf must have one PT_LOAD per RAM range
   and both vmcore.elf and physmem.raw must equal QEMU's dump byte for byte
   wherever QEMU's PT_LOADs show RAM (everything but the legacy ROM window
   0xc0000-0xfffff, which QEMU fills from its ROMs and lazyram from RAM).
   For pc the same VM is also migrated to a stream (exec:cat) and mounted
   as qemu-stream:// without --machine: its views must match the dump too
   (the layout comes from the stream), mem0 must hash like the RAM file and
   pc.bios must equal SeaBIOS's image.
2. A running SeaBIOS VM migrated to a stream at a low bandwidth, so pages
   are sent more than once: mem0 equals the RAM file as the VM left it
   (the last copy of each page wins). The stream cut short, cut inside its
   device description, or with a bad magic: one-line mount errors.
3. Measurement: a 4 GiB VM whose every page holds data, migrated to a 4 GiB
   stream; prints the time to mount it (indexing included), then hashes
   mem0 through the mount and compares with the RAM file.
"""
import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_env import MIB, PAGE, Env, QMP, check, fail, need_tools, pattern_image, run, say  # noqa: E402

GIB = 1 << 30
ROM_WINDOW = (0xC0000, 0x100000)
SEABIOS = "/usr/share/seabios/bios-256k.bin"


def marker(off):
    return (b"%015x\0" % off) * (PAGE // 16)


def sparse_ram(path, size, seed):
    """A sparse RAM file: marker pages at the layout edges, random MiBs."""
    marks = [0, 0x9F000, 0xA0000, 0xC0000, 0x100000, 2 * GIB - PAGE, 2 * GIB, 3 * GIB - PAGE,
             3 * GIB, size - PAGE]
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in marks:
            f.seek(off)
            f.write(marker(off))
        for _ in range(24):
            f.seek(rng.randrange(0, size // MIB) * MIB)
            f.write(rng.randbytes(MIB))


def elf_loads(path):
    """[(p_paddr, p_offset, p_filesz)] of an ELF64 file's PT_LOADs, and its PT_NOTE count."""
    with open(path, "rb") as f:
        eh = f.read(64)
        check(eh[:4] == b"\x7fELF" and eh[4] == 2, f"{path}: not ELF64")
        e_type, = struct.unpack_from("<H", eh, 16)
        check(e_type == 4, f"{path}: not ET_CORE ({e_type})")
        phoff, = struct.unpack_from("<Q", eh, 32)
        phentsize, phnum = struct.unpack_from("<HH", eh, 54)
        f.seek(phoff)
        loads, notes = [], 0
        for _ in range(phnum):
            p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, _memsz, _align = struct.unpack(
                "<IIQQQQQQ", f.read(phentsize)[:56])
            if p_type == 1:
                loads.append((p_paddr, p_offset, p_filesz))
            elif p_type == 4:
                notes += 1
    return loads, notes


def compare(a, a_off, b, b_off, length, what):
    step = 64 * MIB
    with open(a, "rb") as fa, open(b, "rb") as fb:
        done = 0
        while done < length:
            n = min(step, length - done)
            x = os.pread(fa.fileno(), n, a_off + done)
            y = os.pread(fb.fileno(), n, b_off + done)
            if x != y:
                i = next((k for k in range(min(len(x), len(y))) if x[k] != y[k]), min(len(x), len(y)))
                fail(f"{what}: differs at +{done + i:#x} (read {len(x)} / {len(y)} bytes)")
            done += n


def subtract(ranges, hole):
    out = []
    for lo, hi in ranges:
        for a, b in ((lo, min(hi, hole[0])), (max(lo, hole[1]), hi)):
            if a < b:
                out.append((a, b))
    return out


def check_against_dump(views, dump, below, size):
    """views/vmcore.elf and views/physmem.raw vs QEMU's dump-guest-memory ELF."""
    ours, notes = elf_loads(os.path.join(views, "vmcore.elf"))
    check(notes == 1, f"vmcore.elf has {notes} PT_NOTEs")
    want = [(0, below)] + ([(4 * GIB, size - below)] if size > below else [])
    check([(p, n) for p, _, n in ours] == want, f"vmcore.elf PT_LOADs {ours}, wanted {want}")
    theirs, _ = elf_loads(dump)
    say("QEMU's PT_LOADs: " + ", ".join(f"[{p:#x}, {p + n:#x})" for p, _, n in theirs))
    covered = 0
    for q_paddr, q_off, q_size in theirs:
        for o_paddr, o_off, o_size in ours:
            lo, hi = max(q_paddr, o_paddr), min(q_paddr + q_size, o_paddr + o_size)
            for a, b in subtract([(lo, hi)] if lo < hi else [], ROM_WINDOW):
                say(f"  comparing guest-physical [{a:#x}, {b:#x})")
                compare(dump, q_off + a - q_paddr, os.path.join(views, "vmcore.elf"),
                        o_off + a - o_paddr, b - a, f"vmcore.elf at {a:#x}")
                compare(dump, q_off + a - q_paddr, os.path.join(views, "physmem.raw"), a, b - a,
                        f"physmem.raw at {a:#x}")
                covered += b - a
    rom = ROM_WINDOW[1] - ROM_WINDOW[0]
    check(covered == size - rom, f"QEMU's dump shows {covered:#x} bytes of RAM, we {size - rom:#x}")
    with open(os.path.join(views, "physmem.raw"), "rb") as f:
        fd = f.fileno()
        check(os.lseek(fd, 0, os.SEEK_HOLE) == below, "SEEK_HOLE from 0")
        if size > below:
            check(os.lseek(fd, below, os.SEEK_DATA) == 4 * GIB, "SEEK_DATA in the hole")
        check(os.fstat(fd).st_size == (4 * GIB + size - below if size > below else size),
              "physmem.raw size")


class Case:
    def __init__(self, env, big):
        self.env, self.big = env, big
        self.n = 0

    def qemu(self, machine, ram, size, *extra, stopped=True):
        self.n += 1
        qmp_path = self.env.path(f"q{self.n}.qmp")
        argv = ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-accel", "tcg",
                "-machine", f"{machine},memory-backend=mem0", "-m", f"{size // MIB}M",
                "-object", f"memory-backend-file,id=mem0,mem-path={ram},share=on,size={size // MIB}M",
                "-qmp", f"unix:{qmp_path},server=on,wait=off", *extra]
        if stopped:
            argv.append("-S")
        p = self.env.start_qemu(argv, f"q{self.n}.log")
        return p, QMP(qmp_path, timeout=900)

    def mount(self, source, *flags):
        self.n += 1
        mnt, ctl = self.env.path(f"mnt{self.n}"), self.env.path(f"mnt{self.n}.sock")
        os.makedirs(mnt)
        argv = [self.env.lazyramd, "mount", mnt, "--source", source, "--control", ctl,
                "--log", ctl + ".log", *flags]
        self.env.add_mount(mnt, ctl)
        start = time.monotonic()
        r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        elapsed = time.monotonic() - start
        check(r.returncode == 0, f"lazyramd mount {source}: {r.stderr.strip()}")
        return mnt, ctl, elapsed

    def mount_fails(self, source, mention):
        mnt = self.env.path(f"bad{self.n}")
        os.makedirs(mnt, exist_ok=True)
        r = subprocess.run([self.env.lazyramd, "mount", mnt, "--source", source, "--control",
                            mnt + ".sock"], capture_output=True, text=True, timeout=600)
        check(r.returncode != 0, f"mounting {source} succeeded")
        check(r.stderr.count("\n") == 1 and mention in r.stderr,
              f"mounting {source}: wanted one line naming {mention!r}, got {r.stderr!r}")
        say(f"  refused: {r.stderr.strip()}")

    def migrate(self, qmp, path, bandwidth=None):
        if bandwidth:
            qmp.cmd("migrate-set-parameters", **{"max-bandwidth": bandwidth})
        else:
            qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        qmp.cmd("migrate", uri=f"exec:cat > {path}")
        while True:
            info = qmp.cmd("query-migrate")
            if info.get("status") == "completed":
                return info
            if info.get("status") in ("failed", "cancelled"):
                fail(f"migration failed: {info}")
            time.sleep(0.05)

    def hash_region(self, ctl, name):
        r = self.env.ctl(ctl, "hash", name, timeout=1200)
        check(r.returncode == 0, f"lazyramctl hash {name}: {r.stderr.strip()}")
        return r.stdout.split()[0]


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * MIB):
            h.update(chunk)
    return h.hexdigest()


def views_vs_dump(case, machine):
    size, below = 4 * GIB, (3 * GIB if machine == "pc" else 2 * GIB)
    say(f"case 1 ({machine}): a stopped 4 GiB VM; views vs QEMU's dump-guest-memory")
    ram = case.env.path(f"{machine}.ram")
    sparse_ram(ram, size, seed=len(machine))
    p, qmp = case.qemu(machine, ram, size)
    dump = os.path.join(case.big, f"{machine}.dump.elf")
    start = time.monotonic()
    qmp.cmd("dump-guest-memory", paging=False, protocol=f"file:{dump}")
    say(f"  QEMU's dump took {time.monotonic() - start:.1f} s")
    mnt, ctl, _ = case.mount(f"file://{ram}", "--read-only", "--machine", machine)
    check_against_dump(os.path.join(mnt, "views"), dump, below, size)
    check(case.env.unmount(mnt, ctl), "unmount")
    if machine == "pc":
        stream = os.path.join(case.big, "pc.stream")
        case.migrate(qmp, stream)
        say(f"  migrated to a {os.path.getsize(stream)} byte stream")
        mnt, ctl, _ = case.mount(f"qemu-stream://{stream}", "--read-only")
        check_against_dump(os.path.join(mnt, "views"), dump, below, size)
        check(case.hash_region(ctl, "mem0") == file_sha256(ram), "mem0 from the stream != RAM file")
        if os.path.exists(SEABIOS):
            check(case.hash_region(ctl, "pc.bios") == file_sha256(SEABIOS),
                  "pc.bios from the stream != SeaBIOS's image")
        check(case.env.unmount(mnt, ctl), "unmount")
        os.unlink(stream)
    case.env.quit_qemu(qmp, p.pid)
    os.unlink(dump)
    os.unlink(ram)


def running_vm_stream(case):
    say("case 2: a running SeaBIOS VM migrated slowly: the last copy of each page wins")
    size = 256 * MIB
    ram = case.env.path("run.ram")
    pattern_image(ram, size, seed=5)
    p, qmp = case.qemu("pc", ram, size, stopped=False)
    time.sleep(1)  # SeaBIOS is busy writing its tables into RAM
    stream = os.path.join(case.big, "run.stream")
    info = case.migrate(qmp, stream, bandwidth=64 * MIB)
    say(f"  {info['ram']['dirty-sync-count']} passes, {info['ram']['normal']} pages sent")
    mnt, ctl, _ = case.mount(f"qemu-stream://{stream}", "--read-only")
    # The VM stopped when the migration completed: the shared RAM file holds
    # what the stream's last copies must reproduce.
    compare(ram, 0, os.path.join(mnt, "mem0"), 0, size, "mem0 from a running VM's stream")
    with open(ctl + ".log") as f:
        say("  " + next(l.strip() for l in f if "indexed" in l))
    check(case.env.unmount(mnt, ctl), "unmount")
    case.env.quit_qemu(qmp, p.pid)

    say("case 2b: damaged streams are refused with one line")
    data = open(stream, "rb").read()
    bad = os.path.join(case.big, "bad.stream")
    for name, body, mention in (("cut in RAM", data[:len(data) // 2], "truncated"),
                                ("cut in its device description", data[:-100], "truncated"),
                                ("bad magic", b"XEVM" + data[4:], "not a QEMU migration stream")):
        with open(bad, "wb") as f:
            f.write(body)
        say(f"  {name}")
        case.mount_fails(f"qemu-stream://{bad}", mention)
    os.unlink(bad)
    os.unlink(stream)


def full_stream_timing(case):
    say("case 3: a 4 GiB VM whose every page holds data -> a 4 GiB stream; time to mount it")
    size = 4 * GIB
    ram = os.path.join(case.big, "full.ram")
    block = bytearray(random.Random(9).randbytes(16 * MIB))
    with open(ram, "wb") as f:
        for i in range(size // len(block)):
            for k in range(0, len(block), 64 * PAGE):  # every page differs from its neighbours
                struct.pack_into("<Q", block, k, i * len(block) + k)
            f.write(block)
    p, qmp = case.qemu("pc", ram, size)
    stream = os.path.join(case.big, "full.stream")
    start = time.monotonic()
    case.migrate(qmp, stream)
    say(f"  QEMU wrote {os.path.getsize(stream)} bytes in {time.monotonic() - start:.1f} s")
    case.env.quit_qemu(qmp, p.pid)
    mnt, ctl, elapsed = case.mount(f"qemu-stream://{stream}", "--read-only")
    with open(ctl + ".log") as f:
        indexed = next(l.strip() for l in f if "indexed" in l)
    say(f"  MEASURE mount of a {os.path.getsize(stream) / GIB:.2f} GiB stream: {elapsed:.2f} s "
        f"(page cache warm); {indexed.split('info: ')[-1]}")
    start = time.monotonic()
    ours = case.hash_region(ctl, "mem0")
    say(f"  MEASURE lazyramctl hash mem0 (4 GiB through the stream): {time.monotonic() - start:.1f} s")
    check(ours == file_sha256(ram), "mem0 from a 4 GiB stream != RAM file")
    check(case.env.unmount(mnt, ctl), "unmount")
    os.unlink(stream)
    os.unlink(ram)


def main():
    need_tools()
    env = Env("forensics")
    big = tempfile.mkdtemp(prefix="lazyram-forensics.", dir="/var/tmp")
    try:
        case = Case(env, big)
        views_vs_dump(case, "pc")
        views_vs_dump(case, "q35")
        running_vm_stream(case)
        full_stream_timing(case)
    finally:
        env.cleanup()
        shutil.rmtree(big, ignore_errors=True)


if __name__ == "__main__":
    run(main)
