#!/usr/bin/env python3
"""Writes a demo/test RAM image: random data with zero stretches.

Of every 8 MiB, one MiB is left as a hole (sparse, listed as zero in the page
server's handshake) and one MiB is written as explicit zero bytes (detected
page by page and elided on the wire); the rest is random.
"""
import argparse
import os
import sys

MIB = 1 << 20


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().rstrip("ib").rstrip("b") if text[-1:].lower() == "b" else text.lower()
    if t and t[-1] in units:
        return int(t[:-1]) * units[t[-1]]
    return int(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("path")
    ap.add_argument("size", help="bytes, or with a K/M/G suffix (e.g. 1G)")
    args = ap.parse_args()
    try:
        size = parse_size(args.size)
    except ValueError:
        print(f"make_image: bad size '{args.size}'", file=sys.stderr)
        return 2
    with open(args.path, "wb") as f:
        for i in range((size + MIB - 1) // MIB):
            n = min(MIB, size - i * MIB)
            if i % 8 == 3:
                f.seek(n, os.SEEK_CUR)
            elif i % 8 == 6:
                f.write(bytes(n))
            else:
                f.write(os.urandom(n))
        f.truncate(size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
