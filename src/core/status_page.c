/* The /status page, embedded at build time with the assembler's .incbin (no
 * generator, no tool beyond the compiler); the Makefile makes this object
 * depend on the HTML file, and the path is relative to the source tree's root,
 * where make runs the compiler. */
#include "core/status.h"

__asm__(".section .rodata\n"
        ".global status_page_html\n"
        ".global status_page_html_end\n"
        "status_page_html:\n"
        ".incbin \"src/core/status_page.html\"\n"
        "status_page_html_end:\n"
        ".byte 0\n"
        ".previous\n");
