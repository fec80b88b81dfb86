/* The ELF64 guest: starts in long mode, prints its command line's say=WORD and exits with exit=N. */
#include "guest.h"

void guest_main(uint32_t magic, uint32_t info_addr) {
    const char *cmdline = multiboot_cmdline(magic, info_addr);
    char word[64];
    copy_word(word, cmdline_arg(cmdline, "say"), sizeof word);
    puts("Hello from long mode: ");
    puts(word);
    puts("\n");
    guest_exit((uint8_t)parse_u64(cmdline_arg(cmdline, "exit")));
}
