/*
 * alloc_count.c - counting allocator linked into the noalloc driver (see alloc_count.h).
 *
 * libc's functions are found with dlsym(RTLD_NEXT). dlsym itself may allocate (glibc keeps its
 * error state in calloc'ed memory) before any real allocator is known, so those few requests
 * are served from a static bootstrap buffer, and free/realloc recognise its pointers.
 */
#define _GNU_SOURCE

#include <dlfcn.h>
#include <execinfo.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alloc_count.h"

#define STACK_DEPTH 32
#define BOOT_ALIGN 16u

typedef void *(*malloc_fn)(size_t);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void *(*reallocarray_fn)(void *, size_t, size_t);
typedef void (*free_fn)(void *);
typedef int (*posix_memalign_fn)(void **, size_t, size_t);
typedef void *(*aligned_fn)(size_t, size_t);
typedef void *(*valloc_fn)(size_t);

static malloc_fn real_malloc;
static calloc_fn real_calloc;
static realloc_fn real_realloc;
static reallocarray_fn real_reallocarray;
static free_fn real_free;
static posix_memalign_fn real_posix_memalign;
static aligned_fn real_aligned_alloc;
static aligned_fn real_memalign;
static valloc_fn real_valloc;
static valloc_fn real_pvalloc;

static volatile int armed;
static int slot_now;
static int resolving;
static int in_stack; /* backtrace() running: its own calls are not the code under test */
static alloc_count_t counts[ALLOC_COUNT_SLOTS];
static void *stacks[ALLOC_COUNT_SLOTS][STACK_DEPTH];
static int depths[ALLOC_COUNT_SLOTS];

/* Each block: its size in the first BOOT_ALIGN bytes, then the caller's bytes. */
static unsigned char boot[16384] __attribute__((aligned(16)));
static size_t boot_used;

static void *boot_alloc(size_t n)
{
    size_t need = BOOT_ALIGN + (n + BOOT_ALIGN - 1u) / BOOT_ALIGN * BOOT_ALIGN;
    unsigned char *p;
    if (n > sizeof(boot) || need > sizeof(boot) - boot_used)
        return NULL;
    p = boot + boot_used;
    boot_used += need;
    memcpy(p, &n, sizeof(n));
    return p + BOOT_ALIGN; /* static storage: already zero, so good for calloc too */
}

static int is_boot(const void *p)
{
    return (const unsigned char *)p >= boot && (const unsigned char *)p < boot + sizeof(boot);
}

/* A function pointer from dlsym: memcpy, because ISO C has no object-to-function pointer cast. */
static void sym(void *dst, size_t size, const char *name)
{
    void *p = dlsym(RTLD_NEXT, name);
    memcpy(dst, &p, size);
}

static void resolve(void)
{
    if (real_free != NULL || resolving)
        return;
    resolving = 1;
    sym(&real_malloc, sizeof(real_malloc), "malloc");
    sym(&real_calloc, sizeof(real_calloc), "calloc");
    sym(&real_realloc, sizeof(real_realloc), "realloc");
    sym(&real_reallocarray, sizeof(real_reallocarray), "reallocarray");
    sym(&real_posix_memalign, sizeof(real_posix_memalign), "posix_memalign");
    sym(&real_aligned_alloc, sizeof(real_aligned_alloc), "aligned_alloc");
    sym(&real_memalign, sizeof(real_memalign), "memalign");
    sym(&real_valloc, sizeof(real_valloc), "valloc");
    sym(&real_pvalloc, sizeof(real_pvalloc), "pvalloc");
    sym(&real_free, sizeof(real_free), "free");
    resolving = 0;
    if (real_malloc == NULL || real_calloc == NULL || real_realloc == NULL || real_free == NULL) {
        static const char msg[] = "alloc_count: libc's allocator not found\n";
        (void)!write(2, msg, sizeof(msg) - 1);
        _exit(3);
    }
}

static void count_alloc(void)
{
    int s;
    if (!armed || in_stack)
        return;
    s = slot_now;
    counts[s].allocs++;
    if (depths[s] == 0) {
        in_stack = 1;
        depths[s] = backtrace(stacks[s], STACK_DEPTH);
        in_stack = 0;
    }
}

void alloc_count_init(void)
{
    void *warm[2];
    resolve();
    /* backtrace() loads libgcc_s (allocating) the first time: get that done here. */
    (void)backtrace(warm, 2);
}

void alloc_count_arm(int slot)
{
    slot_now = slot < 0 || slot >= ALLOC_COUNT_SLOTS ? 0 : slot;
    armed = 1;
}

void alloc_count_disarm(void) { armed = 0; }

alloc_count_t alloc_count_get(int slot)
{
    alloc_count_t none = {0, 0};
    return slot < 0 || slot >= ALLOC_COUNT_SLOTS ? none : counts[slot];
}

void alloc_count_print_stack(int slot)
{
    if (slot >= 0 && slot < ALLOC_COUNT_SLOTS && depths[slot] > 0)
        backtrace_symbols_fd(stacks[slot], depths[slot], 2);
}

void *malloc(size_t n)
{
    if (real_malloc == NULL) {
        if (resolving)
            return boot_alloc(n);
        resolve();
    }
    count_alloc();
    return real_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    if (real_calloc == NULL) {
        if (resolving)
            return size != 0 && n > SIZE_MAX / size ? NULL : boot_alloc(n * size);
        resolve();
    }
    count_alloc();
    return real_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    if (p == NULL)
        return malloc(n);
    if (is_boot(p)) {
        size_t old;
        void *q = malloc(n);
        memcpy(&old, (unsigned char *)p - BOOT_ALIGN, sizeof(old));
        if (q != NULL)
            memcpy(q, p, old < n ? old : n);
        return q;
    }
    resolve(); /* a pointer not from the bootstrap buffer: the real allocator is known */
    count_alloc();
    return real_realloc(p, n);
}

void *reallocarray(void *p, size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size)
        return NULL;
    if (real_reallocarray == NULL || (p != NULL && is_boot(p)))
        return realloc(p, n * size);
    count_alloc();
    return real_reallocarray(p, n, size);
}

void free(void *p)
{
    if (p == NULL || is_boot(p))
        return;
    if (real_free == NULL)
        resolve();
    if (armed && !in_stack)
        counts[slot_now].frees++;
    real_free(p);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    resolve();
    count_alloc();
    return real_posix_memalign(out, align, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    resolve();
    count_alloc();
    return real_aligned_alloc(align, n);
}

void *memalign(size_t align, size_t n)
{
    resolve();
    count_alloc();
    return real_memalign(align, n);
}

void *valloc(size_t n)
{
    resolve();
    count_alloc();
    return real_valloc(n);
}

void *pvalloc(size_t n)
{
    resolve();
    count_alloc();
    return real_pvalloc(n);
}
