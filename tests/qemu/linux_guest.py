"""The Linux guest of the QEMU tests: Debian's cloud kernel, a busybox
initramfs, and the kernel's debug symbols (Python 3 standard library only).

Downloads go once into $LAZYRAM_QEMU_CACHE (default /var/cache/lazyram),
under a lock: kernel/ (linux-image-*-cloud-amd64, `apt-get download` +
`dpkg -x`) and dbg/vmlinux-ABI-VERSION (only vmlinux, extracted from the
matching linux-image-ABI-cloud-amd64-dbg package, ~280 MB to download).
Whatever cannot be had is a skip (exit 77) with the reason.
"""
import fcntl
import os
import re
import shutil
import struct
import subprocess
import tempfile

from qemu_env import check, say, skip

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


def newc_initramfs(path, busybox, init, extra=()):
    """A cpio 'newc' archive: /init (the script `init`), /bin/busybox,
    /dev/console, a few dirs, and `extra` files: (name, mode, bytes)."""
    entries = [("dev", 0o40755, b""), ("proc", 0o40755, b""), ("sys", 0o40755, b""),
               ("mnt", 0o40755, b""), ("bin", 0o40755, b""), ("tmp", 0o41777, b""),
               ("dev/console", 0o20600, b""), ("init", 0o100755, init.encode()), *extra]
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


def kernel_banner(vmlinuz):
    """The kernel's 'Linux version ...' banner (uncompressed in a bzImage:
    the setup header's kernel_version string)."""
    with open(vmlinuz, "rb") as f:
        data = f.read(1 << 16)
    off, = struct.unpack_from("<H", data, 0x20E)
    banner = data[0x200 + off:].split(b"\0", 1)[0].decode(errors="replace")
    check(banner.startswith("6.") or banner[:1].isdigit(), f"no version in {vmlinuz}: {banner!r}")
    return banner


def debug_vmlinux(vmlinuz):
    """The vmlinux with debug info matching `vmlinuz` (a Debian cloud kernel):
    extracted once from linux-image-ABI-dbg=VERSION into the cache."""
    banner = kernel_banner(vmlinuz)
    abi = banner.split()[0]
    m = re.search(r"Debian (\S+)", banner)
    if not m:
        skip(f"cannot tell the Debian version of {vmlinuz} from {banner!r}")
    version = m.group(1)
    out = os.path.join(cache_dir(), "dbg", f"vmlinux-{abi}-{version}")
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(os.path.join(cache_dir(), ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(out):
            return out
        pkg = f"linux-image-{abi}-dbg"
        say(f"downloading {pkg}={version} (~280 MB) for its vmlinux, into {cache_dir()} (once)")
        tmp = tempfile.mkdtemp(dir=cache_dir(), prefix=".download.")
        try:
            r = subprocess.run(["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root",
                                f"{pkg}={version}"], cwd=tmp, capture_output=True, text=True,
                               timeout=1800)
            debs = [f for f in os.listdir(tmp) if f.endswith(".deb")]
            if r.returncode != 0 or not debs:
                skip(f"apt-get download {pkg}={version} failed: {r.stderr.strip()[-300:]}")
            member = f"./usr/lib/debug/boot/vmlinux-{abi}"
            tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", os.path.join(tmp, debs[0])],
                                   stdout=subprocess.PIPE)
            subprocess.run(["tar", "-x", "-C", tmp, member], stdin=tar.stdout, check=True)
            check(tar.wait() == 0, f"dpkg-deb --fsys-tarfile {debs[0]} failed")
            os.rename(os.path.join(tmp, member), out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
