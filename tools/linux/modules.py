#!/usr/bin/env python3
"""Copies kernel modules and their dependencies out of a distro kernel's module tree for an initramfs.

usage: modules.py MODULEDIR OUTDIR MODULE...
MODULEDIR is lib/modules/VERSION of the unpacked kernel package; MODULE a module name ("virtio-rng" and
"virtio_rng" are one). Writes to OUTDIR, flat:
  NAME.ko      each module and every module it depends on ("depends=" in its .modinfo; built-in ones, listed in
               modules.builtin, are left out), decompressed if the package ships .ko.xz or .ko.zst, trimmed of what
               makes loading slow where guest kernel code is emulated (instruction counts under QEMU's -icount,
               ext4.ko: 37.7 million instructions to load as shipped, under 5 million trimmed):
               - .BTF: a module with BTF makes the kernel parse vmlinux's BTF at the first load (18 million
                 instructions under QEMU; minutes on the emulated hosts);
               - __mcount_loc, with each `call __fentry__` made the 5-byte NOP the kernel would write itself at
                 load and its relocation made R_X86_64_NONE: ftrace's per-call-site work at load (27 million for
                 ext4); the module's functions cannot be traced;
               - .orc_unwind and .orc_unwind_ip: sorting them at load (6 million for ext4); stack traces through
                 the module's functions are not reliable.
               objcopy also drops the appended signature, so the kernel logs "module verification failed ...
               tainting kernel" and checks no signature (Debian's kernel does not enforce them).
  load-order   the file names without .ko, dependencies first, the MODULEs otherwise in the order given
  modules.dep  for busybox's modprobe: "NAME.ko: DEP.ko ..." (dependencies listed last-loaded first, as depmod)"""
import lzma, os, re, struct, subprocess, sys

REMOVED = [".BTF", "__mcount_loc", ".rela__mcount_loc", ".orc_unwind", ".orc_unwind_ip", ".rela.orc_unwind_ip"]
NOP5 = bytes([0x0F, 0x1F, 0x44, 0x00, 0x00])

def nop_fentry(raw):
    """Returns the x86-64 module with each `call __fentry__` in its code made a NOP and its relocation NONE."""
    elf = bytearray(raw)
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or struct.unpack_from("<H", elf, 18)[0] != 62:
        return raw
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
    fentry = set()
    for sh in sections:
        if sh[1] == 2:  # SHT_SYMTAB
            strtab = sections[sh[6]]
            for i in range(sh[5] // 24):
                name_off, = struct.unpack_from("<I", elf, sh[4] + i * 24)
                start = strtab[4] + name_off
                if elf[start:elf.index(b"\0", start)] == b"__fentry__":
                    fentry.add(i)
    for sh in sections:
        if sh[1] != 4 or not sections[sh[7]][2] & 0x4:  # SHT_RELA against an SHF_EXECINSTR section
            continue
        target = sections[sh[7]]
        for i in range(sh[5] // 24):
            at = sh[4] + i * 24
            offset, info = struct.unpack_from("<QQ", elf, at)
            if info >> 32 in fentry and info & 0xFFFFFFFF in (2, 4) and elf[target[4] + offset - 1] == 0xE8:
                elf[target[4] + offset - 1 : target[4] + offset + 4] = NOP5
                struct.pack_into("<Q", elf, at + 8, (info >> 32) << 32)  # R_X86_64_NONE
    return bytes(elf)

def norm(name):
    return name.replace("-", "_")

def main():
    moddir, out, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
    files = {}
    for root, _, names in os.walk(moddir):
        for n in names:
            for ext in (".ko", ".ko.xz", ".ko.zst"):
                if n.endswith(ext):
                    files[norm(n[: -len(ext)])] = os.path.join(root, n)
    builtin = set()
    if os.path.exists(os.path.join(moddir, "modules.builtin")):
        for line in open(os.path.join(moddir, "modules.builtin")):
            builtin.add(norm(os.path.basename(line.strip()).split(".ko")[0]))
    os.makedirs(out, exist_ok=True)
    data, deps, order = {}, {}, []

    def load(name):
        path = files[name]
        raw = open(path, "rb").read()
        if path.endswith(".xz"):
            raw = lzma.decompress(raw)
        elif path.endswith(".zst"):
            raw = subprocess.run(["zstd", "-dc", path], check=True, capture_output=True).stdout
        return raw

    def visit(name, chain=()):
        name = norm(name)
        if name in deps or name in builtin:
            return
        if name not in files:
            sys.exit("modules.py: no module %s (needed by %s) in %s" % (name, " <- ".join(chain) or "the list", moddir))
        if name in chain:
            sys.exit("modules.py: dependency loop: " + " -> ".join(chain + (name,)))
        raw = load(name)
        found = re.search(rb"(?:^|\0)depends=([^\0]*)", raw)
        direct = [d for d in (found.group(1).decode().split(",") if found else []) if d]
        for d in direct:
            visit(d, chain + (name,))
        deps[name] = [norm(d) for d in direct if norm(d) not in builtin]
        data[name] = raw
        order.append(name)

    for w in wanted:
        visit(w)
    base = {n: os.path.basename(files[n]).split(".ko")[0] for n in order}
    for n in order:
        plain = os.path.join(out, base[n] + ".ko.orig")
        with open(plain, "wb") as f:
            f.write(nop_fentry(data[n]))
        removed = ["--remove-section=" + r for r in REMOVED]
        subprocess.run(["objcopy"] + removed + [plain, os.path.join(out, base[n] + ".ko")], check=True)
        os.unlink(plain)

    def closure(n, acc):
        for d in deps[n]:
            closure(d, acc)
            if d not in acc:
                acc.append(d)
        return acc

    with open(os.path.join(out, "load-order"), "w") as f:
        f.write("".join(base[n] + "\n" for n in order))
    with open(os.path.join(out, "modules.dep"), "w") as f:
        for n in order:
            f.write("%s.ko:%s\n" % (base[n], "".join(" %s.ko" % base[d] for d in reversed(closure(n, [])))))

main()
