#!/bin/sh
# Builds the test guests into OUTDIR with the system compiler (never committed as binaries).
#   <name>.elf       multiboot ELF32 (also boots under qemu-system-x86_64 -kernel)
#   <name>.flat.bin  flat image with a multiboot a.out-kludge header
#   hello64.elf, traps64.elf, portloop64.elf, ...   ELF64 entered in long mode
#   firstbyte.elf    writes to COM1 as its first instructions (the start-up benchmark)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR}
mkdir -p "$out"
CFLAGS="-ffreestanding -fno-pic -fno-pie -fno-stack-protector -fno-asynchronous-unwind-tables -mno-sse -mno-mmx -mno-red-zone -O2 -Wall -Werror -nostdlib -static -Wl,--build-id=none -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments"
for g in hello portloop triplefault echo apicinfo events uartstress fpregs virtionet; do
    cc -m32 $CFLAGS -no-pie -T "$here/link32.ld" -o "$out/$g.elf" "$here/multiboot.S" "$here/guest.c" "$here/$g.c"
done
for g in traps32 nmi tpr apicbase windows events32 lapictimer timerstress tscdeadline uartirq apicprio irqlatency smp virtio keyboard; do
    cc -m32 $CFLAGS -no-pie -T "$here/link32.ld" -o "$out/$g.elf" "$here/multiboot.S" "$here/guest.c" "$here/$g.c" "$here/$g.S"
done
cc -m32 $CFLAGS -DFLAT -no-pie -T "$here/link32.ld" -o "$out/hello.flat.elf" "$here/multiboot.S" "$here/guest.c" "$here/hello.c"
objcopy -O binary "$out/hello.flat.elf" "$out/hello.flat.bin"
rm "$out/hello.flat.elf"
cc -m64 $CFLAGS -mcmodel=small -no-pie -T "$here/link64.ld" -o "$out/portloop64.elf" "$here/start64.S" "$here/guest.c" "$here/portloop.c"
cc -m32 $CFLAGS -no-pie -T "$here/link32.ld" -o "$out/firstbyte.elf" "$here/firstbyte.S"
cc -m64 $CFLAGS -mcmodel=small -no-pie -T "$here/link64.ld" -o "$out/hello64.elf" "$here/start64.S" "$here/guest.c" "$here/hello64.c"
cc -m64 $CFLAGS -mcmodel=small -no-pie -T "$here/link64.ld" -o "$out/traps64.elf" "$here/start64.S" "$here/guest.c" "$here/traps64.c" "$here/traps64.S"
cc -m64 $CFLAGS -mcmodel=small -no-pie -T "$here/link64.ld" -o "$out/pagefaults.elf" "$here/start64.S" "$here/guest.c" "$here/pagefaults.c" "$here/pagefaults.S"
cc -m64 $CFLAGS -mcmodel=small -no-pie -T "$here/link64.ld" -o "$out/events64.elf" "$here/start64.S" "$here/guest.c" "$here/events64.c" "$here/events64.S"
cc -m64 $CFLAGS -mcmodel=small -no-pie -T "$here/link64.ld" -o "$out/tpr64.elf" "$here/start64.S" "$here/guest.c" "$here/tpr64.c" "$here/tpr64.S"
cc -m64 $CFLAGS -mxsave -mcmodel=small -no-pie -T "$here/link64.ld" -o "$out/unhandled64.elf" "$here/start64.S" "$here/guest.c" "$here/unhandled64.c"
