#!/usr/bin/env python3
"""Writes an uncompressed newc cpio archive (what the kernel unpacks as its initramfs) from a list of entries,
without root: device nodes and ownership are written as they should be, not taken from the file system.

usage: mkcpio.py OUT ENTRY...   where ENTRY is one of
  dir:PATH  file:PATH=HOSTFILE:MODE  link:PATH=TARGET  chr:PATH=MAJOR,MINOR"""
import os, sys

def header(ino, mode, size, name, rdev=(0, 0), nlink=1):
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    return b"070701" + b"".join(b"%08x" % f for f in fields)

def pad(n):
    return b"\0" * ((4 - n % 4) % 4)

def main():
    out, entries = sys.argv[1], sys.argv[2:]
    data = bytearray()
    for ino, entry in enumerate(entries, start=1):
        kind, spec = entry.split(":", 1)
        rdev, body = (0, 0), b""
        if kind == "dir":
            name, mode = spec, 0o040755
        elif kind == "file":
            name, rest = spec.split("=", 1)
            host, perm = rest.rsplit(":", 1)
            body = open(host, "rb").read()
            mode = 0o100000 | int(perm, 8)
        elif kind == "link":
            name, target = spec.split("=", 1)
            body, mode = target.encode(), 0o120777
        elif kind == "chr":
            name, numbers = spec.split("=", 1)
            rdev, mode = tuple(int(x) for x in numbers.split(",")), 0o020600
        else:
            sys.exit("unknown entry kind: " + kind)
        encoded = name.encode()
        head = header(ino, mode, len(body), encoded, rdev, 2 if kind == "dir" else 1) + encoded + b"\0"
        data += head + pad(len(head)) + body + pad(len(body))
    trailer = header(0, 0, 0, b"TRAILER!!!") + b"TRAILER!!!\0"
    data += trailer + pad(len(trailer))
    with open(out, "wb") as f:
        f.write(data)

main()
