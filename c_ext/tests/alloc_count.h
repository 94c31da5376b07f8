/*
 * alloc_count.h - an allocation counter for c_ext/tests/noalloc.c.
 *
 * alloc_count.c defines malloc, calloc, realloc, free and the aligned allocators in the
 * executable itself. The dynamic linker binds every shared library's malloc reference
 * (libcrypto's CRYPTO_malloc, libcodec2's calloc, libc's own) to the first definition in
 * lookup order, and the executable comes first, so calls from inside libcrypto and libcodec2 are
 * counted too; -Wl,--wrap=malloc would only redirect references in the objects being linked,
 * never those already bound inside a shared library. Calls are counted only while armed, per
 * "slot" (one per measured operation), and forwarded to libc's allocator.
 */
#ifndef ALLOC_COUNT_H
#define ALLOC_COUNT_H

#include <stddef.h>

enum { ALLOC_COUNT_SLOTS = 64 };

typedef struct {
    unsigned long allocs; /* malloc, calloc, realloc, reallocarray and the aligned ones */
    unsigned long frees;  /* free of a non-NULL pointer */
} alloc_count_t;

/* Resolves libc's allocator and loads what backtrace() needs, so neither happens while armed. */
void alloc_count_init(void);
/* Count from now on into slot (0 .. ALLOC_COUNT_SLOTS - 1). */
void alloc_count_arm(int slot);
void alloc_count_disarm(void);
alloc_count_t alloc_count_get(int slot);
/* The call stack of slot's first counted call to stderr (nothing when it has none). */
void alloc_count_print_stack(int slot);

#endif
