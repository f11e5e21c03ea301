"""Shared harness for the QEMU tests (Python 3 standard library only).

Env: LAZYRAMD, LAZYRAMCTL, QEMU_LAZY_MIGRATE (set by meson). A test that
needs something absent calls skip(reason): it prints why and exits 77.

Cleanup kills only what the test started: the process makes itself a child
subreaper, so QEMUs and lazyramd daemons started by qemu-lazy-migrate (which
outlive it on purpose) are re-parented to the test; cleanup kills its own
descendants by pid, unmounts its mounts (lazyramctl unmount, else umount -l
and abort the FUSE connection) and removes its temp dir.
"""
import atexit
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
PAGE = 4096
SKIP = 77


def say(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def skip(reason):
    print(f"SKIP: {reason}", flush=True)
    sys.exit(SKIP)


def fail(msg):
    raise AssertionError(msg)


def check(cond, msg):
    if not cond:
        fail(msg)


def need_tools():
    if os.geteuid() != 0:
        skip("needs root (FUSE mounts)")
    if not os.path.exists("/dev/fuse"):
        skip("no /dev/fuse")
    for var in ("LAZYRAMD", "LAZYRAMCTL", "QEMU_LAZY_MIGRATE"):
        if not os.environ.get(var) or not os.path.exists(os.environ[var]):
            skip(f"{var} is not set to an existing file (run through meson test)")
    if not shutil.which("qemu-system-x86_64"):
        skip("qemu-system-x86_64 is not installed (Debian package qemu-system-x86; tools/setup installs it)")


# ---------------------------------------------------------------- QMP


class QMP:
    def __init__(self, path, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    fail(f"cannot connect to QMP socket {path}")
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rwb")
        check("QMP" in json.loads(self.file.readline()), f"{path}: no QMP greeting")
        self.events = []
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                fail(f"QMP connection closed during {name}")
            reply = json.loads(line)
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                fail(f"QMP {name} {args}: {reply['error']}")
            return reply["return"]

    def hmp(self, line):
        return self.cmd("human-monitor-command", **{"command-line": line})

    def pmemsave(self, path, addr, size):
        self.cmd("pmemsave", val=addr, size=size, filename=path)
        with open(path, "rb") as f:
            data = f.read()
        os.unlink(path)
        check(len(data) == size, f"pmemsave wrote {len(data)} bytes, wanted {size}")
        return data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------- GDB stub


class GdbStub:
    """Writes and reads guest-physical memory through QEMU's gdbstub.

    QEMU 7.2's HMP has no memory write command; the gdbstub (started at run
    time with HMP `gdbserver`) has: the GDB remote protocol's M packet, with
    QEMU's `Qqemu.PhyMemMode:1` for physical addresses. Attaching stops the
    VM; detach() resumes it.
    """

    def __init__(self, qmp, path):
        out = qmp.hmp(f"gdbserver unix:{path},server=on,wait=off")
        check("Waiting for gdb" in out, f"gdbserver: {out!r}")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(path)
        self.buf = b""
        self.packet(b"qSupported")
        check(self.packet(b"Qqemu.PhyMemMode:1") == b"OK", "gdbstub refused physical memory mode")

    def _byte(self):
        if not self.buf:
            self.buf = self.sock.recv(65536)
            if not self.buf:
                fail("gdbstub closed the connection")
        c, self.buf = self.buf[:1], self.buf[1:]
        return c

    def packet(self, data):
        pkt = b"$" + data + b"#%02x" % (sum(data) & 0xFF)
        self.sock.sendall(pkt)
        while True:
            c = self._byte()
            if c == b"+":
                break
            if c == b"-":
                self.sock.sendall(pkt)
        while self._byte() != b"$":
            pass
        body = b""
        while (c := self._byte()) != b"#":
            body += c
        self._byte()
        self._byte()
        self.sock.sendall(b"+")
        return body

    def write(self, addr, data):
        for off in range(0, len(data), 1024):
            chunk = data[off:off + 1024]
            r = self.packet(b"M%x,%x:" % (addr + off, len(chunk)) + chunk.hex().encode())
            check(r == b"OK", f"gdbstub write at {addr + off:#x}: {r!r}")

    def read(self, addr, size):
        out = b""
        while len(out) < size:
            n = min(1024, size - len(out))
            r = self.packet(b"m%x,%x" % (addr + len(out), n))
            check(not r.startswith(b"E"), f"gdbstub read at {addr + len(out):#x}: {r!r}")
            out += bytes.fromhex(r.decode())
        return out

    def detach(self):
        self.packet(b"D")
        self.sock.close()


# ---------------------------------------------------------------- images


def pattern_image(path, size, seed):
    """Random bytes with zero stretches: of every 8 MiB, one MiB is a hole and
    one is written as explicit zeros; a few single zero pages elsewhere."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for i in range(size // MIB):
            if i % 8 == 3:
                f.seek(MIB, os.SEEK_CUR)
            elif i % 8 == 6:
                f.write(bytes(MIB))
            else:
                block = bytearray(rng.randbytes(MIB))
                if i % 8 == 1:
                    block[5 * PAGE:6 * PAGE] = bytes(PAGE)
                f.write(block)
        f.truncate(size)


def random_image(path, size):
    with open(path, "wb") as f:
        for _ in range(size // (16 * MIB)):
            f.write(os.urandom(16 * MIB))
        f.truncate(size)


def first_difference(a, b, ignore=()):
    """Offsets (up to 10) where a and b differ outside the ignore ranges."""
    diffs = []
    if len(a) != len(b):
        return [min(len(a), len(b))]
    step = 1 << 16
    for base in range(0, len(a), step):
        if a[base:base + step] == b[base:base + step]:
            continue
        for i in range(base, min(base + step, len(a))):
            if a[i] != b[i] and not any(lo <= i < hi for lo, hi in ignore):
                diffs.append(i)
                if len(diffs) >= 10:
                    return diffs
    return diffs


# ---------------------------------------------------------------- environment


def _set_subreaper():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except OSError:
        pass


def _children(pid):
    """Direct children of pid (from /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                kids.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return kids


def _descendants(pid):
    out, todo = [], [pid]
    while todo:
        for kid in _children(todo.pop()):
            out.append(kid)
            todo.append(kid)
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def kill_pid(pid, timeout=15):
    """SIGTERM, then SIGKILL: only this pid; reaps it if it is our child."""
    if not alive(pid):
        _reap(pid)
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    if alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.1)
    _reap(pid)


def wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while alive(pid):
        _reap(pid)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    _reap(pid)
    return True


def mount_device(path):
    """The 'major:minor' of the mount at path, or None."""
    path = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == path:
                    return fields[2]
    except OSError:
        pass
    return None


class Env:
    """A test's temp dir, processes and mounts; cleanup() undoes all of it."""

    def __init__(self, name):
        _set_subreaper()
        self.lazyramd = os.environ["LAZYRAMD"]
        self.lazyramctl = os.environ["LAZYRAMCTL"]
        self.script = os.environ["QEMU_LAZY_MIGRATE"]
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = tempfile.mkdtemp(prefix=f"lazyram-{name}.", dir=base)
        self.mounts = []  # (mountpoint, control)
        self.qemus = []   # pids
        self.procs = []   # Popen objects
        self._cleaned = False
        atexit.register(self.cleanup)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame):
        self.cleanup()
        sys.exit(128 + signum)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    # -- QEMU

    def qemu_argv(self, mem_path, size, qmp, *extra, share="on", ram_size=None, debugcon=None):
        """A SeaBIOS-only pc VM whose RAM is the backend mem0."""
        mib = size // MIB
        argv = ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-accel", "tcg",
                "-machine", "pc,memory-backend=mem0", "-m", f"{(ram_size or size) // MIB}M",
                "-object", f"memory-backend-file,id=mem0,mem-path={mem_path},share={share},size={mib}M",
                "-qmp", f"unix:{qmp},server=on,wait=off"]
        if debugcon:
            argv += ["-chardev", f"file,id=dbg,path={debugcon}",
                     "-device", "isa-debugcon,iobase=0x402,chardev=dbg"]
        return argv + list(extra)

    def start_qemu(self, argv, log_name):
        logf = open(self.path(log_name), "wb")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        self.procs.append(p)
        self.qemus.append(p.pid)
        return p

    def adopt_qemu(self, pid):
        self.qemus.append(pid)

    def quit_qemu(self, qmp, pid, timeout=60):
        try:
            qmp.cmd("quit")
        except (AssertionError, OSError):
            pass
        qmp.close()
        if not wait_gone(pid, timeout):
            fail(f"QEMU {pid} did not exit after quit")

    # -- the script

    def migrate(self, *args, expect_ok=True, timeout=900):
        """Runs qemu-lazy-migrate; returns (code, parsed JSON or None, stderr)."""
        argv = [sys.executable, self.script, *args]
        say("$ " + " ".join(argv))
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout)
        sys.stdout.write("".join(f"  | {l}\n" for l in r.stderr.splitlines()))
        result = None
        if r.stdout.strip():
            try:
                result = json.loads(r.stdout.strip().splitlines()[-1])
            except ValueError:
                sys.stdout.write(r.stdout)
        if result and result.get("dest_pid"):
            self.adopt_qemu(result["dest_pid"])
        if expect_ok and r.returncode != 0:
            fail(f"qemu-lazy-migrate exited {r.returncode}")
        return r.returncode, result, r.stderr

    def popen_script(self, *args):
        """qemu-lazy-migrate in the background (stdout piped, stderr shown)."""
        argv = [sys.executable, self.script, *args]
        say("$ " + " ".join(argv) + " &")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    # -- mounts

    def add_mount(self, mountpoint, control):
        self.mounts.append((mountpoint, control))

    def mount(self, name, source=None, store=None):
        mnt, ctl = self.path(name), self.path(name + ".sock")
        os.makedirs(mnt, exist_ok=True)
        argv = [self.lazyramd, "mount", mnt, "--control", ctl, "--log", ctl + ".log"]
        if source:
            argv += ["--source", f"tcp://{source}"]
        if store:
            argv += ["--store", store]
        self.add_mount(mnt, ctl)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        check(r.returncode == 0, f"lazyramd mount failed: {r.stderr.strip()}")
        return mnt, ctl

    def ctl(self, control, *args, timeout=120):
        return subprocess.run([self.lazyramctl, "--control", control, *args],
                              capture_output=True, text=True, timeout=timeout)

    def status(self, control):
        r = self.ctl(control, "status", "--json")
        check(r.returncode == 0, f"lazyramctl status: {r.stderr.strip()}")
        return json.loads(r.stdout)

    def unmount(self, mountpoint, control):
        """Clean unmount (asserted by callers that care). A consumer that just
        exited may still hold the files until the kernel's RELEASE reaches the
        daemon: a busy refusal is retried for a while."""
        deadline = time.monotonic() + 30
        while True:
            r = self.ctl(control, "unmount")
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            msg = r.stderr.strip() or r.stdout.strip()
            if "busy" not in msg and "in use" not in msg:
                break
            time.sleep(0.2)
        if r.returncode != 0:
            say(f"lazyramctl unmount {mountpoint}: {r.stderr.strip() or r.stdout.strip()}")
        if r.returncode == 0:
            deadline = time.monotonic() + 30
            while mount_device(mountpoint) and time.monotonic() < deadline:
                time.sleep(0.05)
        return r.returncode == 0 and not mount_device(mountpoint)

    def serve(self, regions):
        """lazyramd serve on 127.0.0.1, any free port; returns the address."""
        argv = [self.lazyramd, "serve", "--listen", "127.0.0.1:0"]
        for name, path in regions.items():
            argv += ["--region", f"{name}={path}"]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(p)
        line = p.stdout.readline()
        check(line.startswith("listening on "), f"lazyramd serve: {line!r}")
        return line.split()[-1]

    def running_descendants(self):
        """Live (non-zombie) processes below this test, as (pid, comm);
        zombies that are not ours to wait for (re-parented here) are reaped."""
        mine = {p.pid for p in self.procs}
        out = []
        for pid in _descendants(os.getpid()):
            if not alive(pid):
                if pid not in mine:
                    _reap(pid)
                continue
            try:
                with open(f"/proc/{pid}/comm") as f:
                    out.append((pid, f.read().strip()))
            except OSError:
                pass
        return out

    # -- cleanup

    def cleanup(self):
        if self._cleaned:
            return
        self._cleaned = True
        for pid in self.qemus:
            kill_pid(pid)
        for mnt, ctl in self.mounts:
            dev = mount_device(mnt)
            if not dev:
                continue
            if not self.unmount(mnt, ctl):
                say(f"cleanup: forcing {mnt} off (lazy umount, abort FUSE connection {dev})")
                subprocess.run(["umount", "-l", mnt], capture_output=True)
                minor = dev.split(":")[1]
                try:
                    with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as f:
                        f.write("1")
                except OSError:
                    pass
        # Whatever else we started and still runs (page servers, daemons of
        # mounts that failed, children of a killed script): by pid.
        for p in self.procs:
            if p.poll() is None:
                kill_pid(p.pid)
        for pid in _descendants(os.getpid()):
            kill_pid(pid)
        shutil.rmtree(self.dir, ignore_errors=True)


def run(main):
    """Runs a test's main(); prints PASS/FAIL, exits 0/1 (77 from skip())."""
    try:
        main()
    except AssertionError as e:
        print(f"FAIL: {e}", flush=True)
        sys.exit(1)
    except subprocess.TimeoutExpired as e:
        print(f"FAIL: timed out: {e}", flush=True)
        sys.exit(1)
    print("PASS", flush=True)
    sys.exit(0)
