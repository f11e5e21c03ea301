#!/usr/bin/env python3
"""Kernel debuggers open views/vmcore.elf of a dead Linux guest.

Debian's cloud kernel (KASLR on, TCG, 512 MiB) boots a busybox initramfs
that starts processes with known names (lrknown-a, lrknown-b: shell
scripts, so their comm is the script's name), then panics (echo c >
/proc/sysrq-trigger; panic=0 keeps the VM up). The judges are Debian's
drgn (python3-drgn) and crash, with the kernel's vmlinux (from the
matching -dbg package, cached).
1. VM A, without -device vmcoreinfo. Its RAM file mounted read-only
   (file://, --machine pc): manifest.json names the release and KASLR
   offset lazyram found by scanning; drgn reads init_uts_ns.name.release
   and lists the tasks; crash shows the release and the panic (sys), the
   panicking task (ps) and the known names (in init_task's task list: see
   run_crash).
2. VM A stopped and saved as a migration stream (qemu-stream://, no
   --machine): the CPU notes come from the stream; drgn's stack trace of
   the crashed thread goes through panic and sysrq_handle_crash, and
   crash's bt starts at the same stack pointer.
3. VM B, with -device vmcoreinfo and the guest's qemu_fw_cfg module
   loaded: its stream's vmcoreinfo device names the note (found_by
   vmcoreinfo-device); drgn on lazyram's vmcore.elf and on QEMU's own
   dump-guest-memory (paging=true, the only kind drgn 0.0.22 opens) gives
   the same crashed thread, registers and stack trace.
Skipped (exit 77) when drgn, crash or the debug symbols cannot be had.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_env import MIB, Env, QMP, check, fail, need_tools, run, say, skip  # noqa: E402
from linux_guest import debian_kernel, debug_vmlinux, newc_initramfs, static_busybox  # noqa: E402

RAM = 512 * MIB
BOOT_TIMEOUT = 600
KNOWN = ("lrknown-a", "lrknown-b")

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
/bin/lrknown-a &
/bin/lrknown-b &
sleep 2
echo "known processes started"
echo "release $(uname -r)"
echo c > /proc/sysrq-trigger
"""
WORKER = "#!/bin/busybox sh\nwhile :; do sleep 1; done\n"

DRGN_BT_SCRIPT = """
t = prog.crashed_thread()
trace = t.stack_trace()
regs = trace[0].registers()
print("CRASHED", t.tid, "RIP", hex(regs["rip"]), "RSP", hex(regs["rsp"]))
print(trace)
"""

DRGN_SCRIPT = """
from drgn.helpers.linux.pid import for_each_task
print("RELEASE", prog["init_uts_ns"].name.release.string_().decode())
for t in for_each_task(prog):
    print("TASK", t.pid.value_(), t.comm.string_().decode())
"""


def need_debuggers():
    if not shutil.which("drgn"):
        skip("drgn is not installed (Debian package python3-drgn; tools/setup installs it)")
    if not shutil.which("crash"):
        skip("crash is not installed (Debian package crash; tools/setup installs it)")


def wait_serial(path, pattern, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
        m = re.search(pattern, text)
        if m:
            return m, text
        if time.monotonic() > deadline:
            fail(f"{what}: not seen within {timeout} s; serial output ends with:\n{text[-2000:]}")
        time.sleep(0.5)


def mount(env, name, source, *flags):
    mnt, ctl = env.path(name), env.path(name + ".sock")
    os.makedirs(mnt)
    env.add_mount(mnt, ctl)
    r = subprocess.run([env.lazyramd, "mount", mnt, "--source", source, "--control", ctl,
                        "--log", ctl + ".log", *flags], capture_output=True, text=True, timeout=600)
    check(r.returncode == 0, f"lazyramd mount {source}: {r.stderr.strip()}")
    return mnt, ctl


def read_manifest(mnt):
    with open(os.path.join(mnt, "views", "manifest.json")) as f:
        return json.load(f)


def manifest_kernel(mnt, release):
    """Reads vmcore.elf's header (which runs the guest kernel search) and
    returns manifest.json's kernel section, checked."""
    before = read_manifest(mnt)["kernel"]
    check(before == {"searched": False, "message": "searched when views/vmcore.elf is first read"},
          f"kernel searched before vmcore.elf was read: {before}")
    t0 = time.monotonic()
    with open(os.path.join(mnt, "views", "vmcore.elf"), "rb") as f:
        check(f.read(4)[:4] == b"\x7fELF", "vmcore.elf is not ELF")
    kernel = read_manifest(mnt)["kernel"]
    say(f"  vmcore.elf's first read took {time.monotonic() - t0:.2f} s; manifest.json kernel: "
        + json.dumps({k: v for k, v in kernel.items() if k != "virtual_loads"}))
    for m in kernel.get("virtual_loads", []):
        say(f"    PT_LOAD virtual {m['virtual']} -> guest-physical {m['guest_physical']} "
            f"({m['size'] // MIB} MiB)")
    check(kernel["found"], f"no guest kernel found: {kernel.get('message')}")
    check(kernel["release"] == release, f"manifest release {kernel['release']!r}, guest said {release!r}")
    check(kernel["page_offset_base_hex"], f"no direct map found: {kernel.get('message')}")
    return kernel


def run_drgn(env, vmcore, vmlinux, release, what):
    script = env.path("drgn_script.py")
    with open(script, "w") as f:
        f.write(DRGN_SCRIPT)
    argv = ["drgn", "-q", "-c", vmcore, "-s", vmlinux, "--no-default-symbols", script]
    say(f"  $ {' '.join(argv)}")
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    say(f"  drgn exited {r.returncode} after {time.monotonic() - t0:.1f} s")
    lines = r.stdout.splitlines()
    for line in lines[:3] + ["..."] + lines[-3:] if len(lines) > 8 else lines:
        say(f"  | {line}")
    if r.returncode != 0:
        fail(f"drgn on {what} failed: {r.stderr.strip()[-1500:]}")
    check(f"RELEASE {release}" in lines, f"drgn on {what}: release is not {release}")
    comms = {l.split()[2] for l in lines if l.startswith("TASK ") and len(l.split()) > 2}
    missing = [k for k in KNOWN if k not in comms]
    check(not missing, f"drgn on {what}: tasks {sorted(comms)} lack {missing}")
    say(f"  drgn on {what}: release {release}, {len(comms)} distinct comms including {KNOWN}")


def run_crash(env, vmcore, vmlinux, release, what):
    """crash in batch mode: sys, ps, and the task list walked with `list`.

    crash 8.0.2 (bookworm) finds only the active tasks of this kernel with
    ps ("active task ... not found in PID hash", TASKS: 2) on QEMU's own
    dump-guest-memory too (measured: paging=true and false, with
    -device vmcoreinfo); so the known names are checked in init_task's
    task list, which crash reads through the same memory."""
    cmds = env.path("crash_cmds")
    with open(cmds, "w") as f:
        f.write("sys\nps\nlist task_struct.tasks -s task_struct.comm,pid -h init_task\nquit\n")
    argv = ["crash", "-s", "-i", cmds, vmlinux, vmcore]
    say(f"  $ {' '.join(argv)}")
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    say(f"  crash exited {r.returncode} after {time.monotonic() - t0:.1f} s")
    out = r.stdout + r.stderr
    for line in out.splitlines():
        if re.search(r"RELEASE|PANIC|TASKS|CPUS|KERNEL|WARNING|error|match|lrknown|^>? +\d+ ", line):
            say(f"  | {line}")
    check("do not match" not in out, f"crash on {what}: vmlinux and dump do not match:\n{out[-3000:]}")
    check(re.search(r"RELEASE:\s+" + re.escape(release), out),
          f"crash on {what}: no RELEASE {release} in its output:\n{out[-3000:]}")
    check(re.search(r'PANIC:\s+"Kernel panic - not syncing: sysrq triggered crash"', out),
          f"crash on {what}: no PANIC line:\n{out[-3000:]}")
    check(re.search(r"^>\s+1\s+0\s+0\s+\S+\s+RU.*init$", out, re.M),
          f"crash on {what}: ps does not show init (pid 1) as the active task:\n{out[-3000:]}")
    comms = set(re.findall(r'comm = "([^"\\]*)', out))
    missing = [k for k in KNOWN if k not in comms]
    check(not missing, f"crash on {what}: task list {sorted(comms)} lacks {missing}")
    say(f"  crash on {what}: sys RELEASE {release}, PANIC; ps: init active; "
        f"task list ({len(comms)} comms) includes {KNOWN}")


def crash_backtrace(env, vmcore, vmlinux, rsp, what):
    """crash's bt of the panicking task starts at the stack pointer the CPU
    notes give (drgn's `rsp`) and goes through sysrq_handle_crash."""
    cmds = env.path("crash_bt")
    with open(cmds, "w") as f:
        f.write("bt\nquit\n")
    argv = ["crash", "-s", "-i", cmds, vmlinux, vmcore]
    say(f"  $ {' '.join(argv)}")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    out = r.stdout + r.stderr
    for line in out.splitlines()[:6]:
        say(f"  | {line}")
    first = re.search(r"^ #0 \[([0-9a-f]+)\] (\w+) at", out, re.M)
    check(first and int(first.group(1), 16) == int(rsp, 16),
          f"crash bt on {what} does not start at RSP {rsp}:\n{out[-2000:]}")
    check("sysrq_handle_crash" in out, f"crash bt on {what} lacks sysrq_handle_crash")
    say(f"  crash bt on {what}: #0 [{first.group(1)}] {first.group(2)}, through sysrq_handle_crash")


def drgn_backtrace(env, vmcore, vmlinux, what):
    """(crashed tid, rip, rsp, [function names]) drgn gives for vmcore."""
    script = env.path("drgn_bt.py")
    with open(script, "w") as f:
        f.write(DRGN_BT_SCRIPT)
    argv = ["drgn", "-q", "-c", vmcore, "-s", vmlinux, "--no-default-symbols", script]
    say(f"  $ {' '.join(argv)}")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    for line in r.stdout.splitlines()[:8]:
        say(f"  | {line}")
    if r.returncode != 0:
        fail(f"drgn backtrace on {what} failed: {r.stderr.strip()[-1500:]}")
    m = re.search(r"^CRASHED (\d+) RIP (0x[0-9a-f]+) RSP (0x[0-9a-f]+)$", r.stdout, re.M)
    check(m, f"drgn on {what}: no crashed thread in {r.stdout!r}")
    # Symbolized frames only: past the syscall entry drgn reads user
    # memory, which a dump shows or not.
    frames = re.findall(r"^#\d+\s+([A-Za-z_]\w*)", r.stdout, re.M)
    return int(m.group(1)), m.group(2), m.group(3), frames


def boot(env, name, kernel, busybox, vmcoreinfo):
    """A guest that starts the known processes and panics, stopped;
    returns (qmp, QEMU's pid, its RAM file, the kernel release)."""
    extra, init, argv_extra = [], INIT, []
    if vmcoreinfo:
        mods = glob.glob(os.path.join(os.path.dirname(os.path.dirname(kernel)), "lib", "modules",
                                      "*", "kernel", "drivers", "firmware", "qemu_fw_cfg.ko"))
        check(mods, "no qemu_fw_cfg.ko in the kernel package")
        with open(mods[0], "rb") as f:
            extra.append(("qemu_fw_cfg.ko", 0o100644, f.read()))
        init = init.replace("/bin/lrknown-a &", "insmod /qemu_fw_cfg.ko && echo fw_cfg loaded\n/bin/lrknown-a &")
        argv_extra = ["-device", "vmcoreinfo"]
    initrd = env.path(f"{name}.initrd")
    newc_initramfs(initrd, busybox, init,
                   [(f"bin/{k}", 0o100755, WORKER.encode()) for k in KNOWN] + extra)
    ram = env.path(f"{name}.ram")
    with open(ram, "wb") as f:
        f.truncate(RAM)
    qmp_path, serial = env.path(f"{name}.qmp"), env.path(f"{name}.serial")
    argv = env.qemu_argv(ram, RAM, qmp_path, "-kernel", kernel, "-initrd", initrd,
                         "-append", "console=ttyS0 panic=0 quiet", "-no-reboot",
                         "-serial", f"file:{serial}", *argv_extra)
    t0 = time.monotonic()
    p = env.start_qemu(argv, f"{name}.log")
    m, _ = wait_serial(serial, r"release (\S+)\r?\n", BOOT_TIMEOUT, f"VM {name} boot")
    release = m.group(1)
    _, text = wait_serial(serial, r"Kernel panic - not syncing", 120, f"VM {name}'s panic")
    if vmcoreinfo:
        check("fw_cfg loaded" in text, f"VM {name}: qemu_fw_cfg did not load:\n{text[-2000:]}")
    say(f"VM {name}: {release} booted and panicked after {time.monotonic() - t0:.1f} s"
        + (" (-device vmcoreinfo, qemu_fw_cfg loaded)" if vmcoreinfo else ""))
    qmp = QMP(qmp_path)
    qmp.cmd("stop")
    return qmp, p.pid, ram, release


def save_stream(qmp, path):
    qmp.cmd("migrate", uri=f"exec:cat > {path}")
    while (info := qmp.cmd("query-migrate")).get("status") != "completed":
        if info.get("status") in ("failed", "cancelled"):
            fail(f"migration failed: {info}")
        time.sleep(0.1)


def main():
    need_tools()
    need_debuggers()
    busybox = static_busybox()
    kernel = debian_kernel()
    vmlinux = debug_vmlinux(kernel)
    env = Env("kdebug")
    say(f"kernel {kernel}; vmlinux {vmlinux}")

    qmp, pid, ram, release = boot(env, "a", kernel, busybox, vmcoreinfo=False)
    say("case 1: VM A's RAM file, read-only, --machine pc")
    mnt, ctl = mount(env, "mnt1", f"file://{ram}", "--read-only", "--machine", "pc")
    k = manifest_kernel(mnt, release)
    check(k["kaslr_offset"] != 0, "KASLR offset 0: was KASLR off?")
    check(k["vmcoreinfo"]["found_by"] == "memory-scan", f"found by {k['vmcoreinfo']['found_by']}")
    vmcore = os.path.join(mnt, "views", "vmcore.elf")
    run_drgn(env, vmcore, vmlinux, release, "the RAM file's vmcore.elf")
    run_crash(env, vmcore, vmlinux, release, "the RAM file's vmcore.elf")
    check(env.unmount(mnt, ctl), "unmount")

    say("case 2: VM A as a migration stream (qemu-stream://)")
    stream = env.path("a.state")
    save_stream(qmp, stream)
    env.quit_qemu(qmp, pid)
    mnt, ctl = mount(env, "mnt2", f"qemu-stream://{stream}", "--read-only")
    k = manifest_kernel(mnt, release)
    check(k["vmcoreinfo"]["found_by"] == "memory-scan", f"found by {k['vmcoreinfo']['found_by']}")
    vmcore = os.path.join(mnt, "views", "vmcore.elf")
    run_drgn(env, vmcore, vmlinux, release, "the stream's vmcore.elf")
    tid, rip, rsp, frames = drgn_backtrace(env, vmcore, vmlinux, "the stream's vmcore.elf")
    check(tid == 1 and "panic" in frames and "sysrq_handle_crash" in frames,
          f"drgn's crashed thread {tid}, frames {frames}: not init panicking in sysrq_handle_crash")
    say(f"  crashed thread {tid} at RIP {rip}: {' <- '.join(frames)}")
    crash_backtrace(env, vmcore, vmlinux, rsp, "the stream's vmcore.elf")
    check(env.unmount(mnt, ctl), "unmount")

    say("case 3: VM B (-device vmcoreinfo): lazyram's vmcore.elf vs QEMU's dump-guest-memory")
    qmp, pid, ram, release = boot(env, "b", kernel, busybox, vmcoreinfo=True)
    dump = env.path("b.dump")
    qmp.cmd("dump-guest-memory", paging=True, protocol=f"file:{dump}")
    stream = env.path("b.state")
    save_stream(qmp, stream)
    env.quit_qemu(qmp, pid)
    mnt, ctl = mount(env, "mnt3", f"qemu-stream://{stream}", "--read-only")
    manifest = read_manifest(mnt)
    check(manifest["vcpus"] == 1, f"manifest vcpus {manifest['vcpus']}")
    k = manifest_kernel(mnt, release)
    check(k["vmcoreinfo"]["found_by"] == "vmcoreinfo-device",
          f"found by {k['vmcoreinfo']['found_by']}, not the vmcoreinfo device")
    ours = drgn_backtrace(env, os.path.join(mnt, "views", "vmcore.elf"), vmlinux,
                          "lazyram's vmcore.elf")
    theirs = drgn_backtrace(env, dump, vmlinux, "QEMU's dump-guest-memory")
    check(ours == theirs, f"drgn: lazyram's {ours} != QEMU's {theirs}")
    say(f"  same crashed thread {ours[0]}, RIP {ours[1]}, RSP {ours[2]}, {len(ours[3])} frames")
    check(env.unmount(mnt, ctl), "unmount")


if __name__ == "__main__":
    run(main)
