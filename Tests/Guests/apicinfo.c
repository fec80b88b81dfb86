/* Reads and writes local APIC and IOAPIC registers through MMIO (served by the irqchip process) and prints
 * "apic: id=I version=V tpr=T svr=S ioapic=W redir=R", then exits with status 0. */
#include "guest.h"

static volatile uint32_t *const lapic = (volatile uint32_t *)0xfee00000;
static volatile uint32_t *const ioapic = (volatile uint32_t *)0xfec00000;

void guest_main(uint32_t magic, struct multiboot_info *info) {
    (void)magic; (void)info;
    uint32_t id = lapic[0x20 / 4] >> 24;
    uint32_t version = lapic[0x30 / 4];
    lapic[0x80 / 4] = 0x30;         /* TPR */
    lapic[0xf0 / 4] = 0x1ff;        /* SVR: enable, spurious vector 0xff */
    ioapic[0] = 1;                  /* IOREGSEL: version */
    uint32_t ioversion = ioapic[0x10 / 4];
    ioapic[0] = 0x10 + 2 * 4;       /* pin 4, low dword */
    ioapic[0x10 / 4] = 0x24;        /* vector 0x24, unmasked */
    uint32_t redir = ioapic[0x10 / 4];
    puts("apic: id="); put_dec(id);
    puts(" version="); put_hex(version);
    puts(" tpr="); put_hex(lapic[0x80 / 4]);
    puts(" svr="); put_hex(lapic[0xf0 / 4]);
    puts(" ioapic="); put_hex(ioversion);
    puts(" redir="); put_hex(redir);
    puts("\n");
    guest_exit(0);
}
