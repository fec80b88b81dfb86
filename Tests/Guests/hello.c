/* Prints a greeting and the word given as say=WORD, then exits with status exit=N (debug-exit); without
 * exit= it halts with interrupts off. */
#include "guest.h"

void guest_main(uint32_t magic, struct multiboot_info *info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    char word[64];
    copy_word(word, cmdline_arg(cmdline, "say"), sizeof word);
    puts("Hello from the guest: ");
    puts(word);
    puts("\n");
    if (cmdline_arg(cmdline, "exit")) guest_exit((uint8_t)parse_u64(cmdline_arg(cmdline, "exit")));
}
