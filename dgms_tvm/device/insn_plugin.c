/*
 * dgms-tvm instruction-count plugin for qemu-user (TCG plugin API v1, QEMU 7.2).
 *
 * Counts every guest instruction executed by the process (inline add per translation
 * block, all threads into one counter) and, when the guest calls close() on a marker
 * descriptor (MARKER_BASE + token, far outside any real descriptor range), appends
 * "<token> <instructions so far>\n" to the file given as out=PATH. The difference between
 * two markers is the instruction count of the code between them, measured inside one
 * process, so start-up noise does not enter it.
 *
 * With blocks=PATH it also counts how often each translation block ran (one counter per
 * distinct block: its guest address and its bytes, so that code loaded later at the same
 * address is another block) and, at each marker, appends to PATH:
 *   "M <token>"                         the marker,
 *   "B <id> <address> <bytes in hex>"   each block not described before,
 *   "C <id> <executions so far>"        each block whose count changed since the last one.
 * The host weighs each block by a scheduling model (dgms_tvm/device/cycles.py).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define AARCH64_SYS_CLOSE 57
#define MARKER_BASE 0x44470000ULL /* "DG" << 16 */
#define MARKER_SPAN 0x10000ULL
#define MAX_BYTES 4096

struct block {
    uint64_t count; /* executions (inline add) */
    uint64_t logged; /* count at the last marker */
    uint64_t vaddr;
    uint64_t hash;
    uint32_t n_bytes;
    int described;
    unsigned char *bytes;
};

static uint64_t insn_count;
static FILE *out, *blocks_out;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct block **table; /* open addressing on (vaddr, hash) */
static size_t table_size, n_blocks;
static struct block **order; /* blocks by id */
static size_t order_cap;

static uint64_t fnv(const unsigned char *p, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 0x100000001b3ULL;
    }
    return h;
}

static void grow(void)
{
    size_t size = table_size ? table_size * 2 : 1 << 14;
    struct block **t = calloc(size, sizeof(*t));
    for (size_t i = 0; i < table_size; i++) {
        struct block *b = table[i];
        if (b) {
            size_t j = (b->hash ^ b->vaddr) & (size - 1);
            while (t[j]) {
                j = (j + 1) & (size - 1);
            }
            t[j] = b;
        }
    }
    free(table);
    table = t;
    table_size = size;
}

/* The block of these bytes at this address, made on first sight (lock held). */
static struct block *lookup(uint64_t vaddr, const unsigned char *bytes, uint32_t n)
{
    uint64_t h = fnv(bytes, n, 0xcbf29ce484222325ULL);
    if (2 * (n_blocks + 1) > table_size) {
        grow();
    }
    size_t j = (h ^ vaddr) & (table_size - 1);
    for (; table[j]; j = (j + 1) & (table_size - 1)) {
        struct block *b = table[j];
        if (b->vaddr == vaddr && b->hash == h && b->n_bytes == n && !memcmp(b->bytes, bytes, n)) {
            return b;
        }
    }
    struct block *b = calloc(1, sizeof(*b));
    b->vaddr = vaddr;
    b->hash = h;
    b->n_bytes = n;
    b->bytes = malloc(n);
    memcpy(b->bytes, bytes, n);
    table[j] = b;
    if (n_blocks == order_cap) {
        order_cap = order_cap ? order_cap * 2 : 1 << 14;
        order = realloc(order, order_cap * sizeof(*order));
    }
    order[n_blocks++] = b;
    return b;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insn_count, n);
    if (!blocks_out || n == 0) {
        return;
    }
    unsigned char bytes[MAX_BYTES];
    uint32_t len = 0;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        size_t size = qemu_plugin_insn_size(insn);
        if (len + size > MAX_BYTES) {
            break;
        }
        memcpy(bytes + len, qemu_plugin_insn_data(insn), size);
        len += size;
    }
    pthread_mutex_lock(&lock);
    struct block *b = lookup(qemu_plugin_tb_vaddr(tb), bytes, len);
    pthread_mutex_unlock(&lock);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->count, 1);
}

static void log_blocks(uint64_t token)
{
    pthread_mutex_lock(&lock);
    fprintf(blocks_out, "M %" PRIu64 "\n", token);
    for (size_t i = 0; i < n_blocks; i++) {
        struct block *b = order[i];
        uint64_t count = b->count;
        if (!b->described) {
            fprintf(blocks_out, "B %zu %" PRIx64 " ", i, b->vaddr);
            for (uint32_t k = 0; k < b->n_bytes; k++) {
                fprintf(blocks_out, "%02x", b->bytes[k]);
            }
            fputc('\n', blocks_out);
            b->described = 1;
        }
        if (count != b->logged) {
            fprintf(blocks_out, "C %zu %" PRIu64 "\n", i, count);
            b->logged = count;
        }
    }
    fflush(blocks_out);
    pthread_mutex_unlock(&lock);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    uint64_t fd = a1 & 0xffffffffULL;
    if (num == AARCH64_SYS_CLOSE && fd >= MARKER_BASE && fd < MARKER_BASE + MARKER_SPAN && out) {
        uint64_t count = insn_count;
        if (blocks_out) { /* first, so that the count line means the blocks are written */
            log_blocks(fd - MARKER_BASE);
        }
        fprintf(out, "%" PRIu64 " %" PRIu64 "\n", (uint64_t)(fd - MARKER_BASE), count);
        fflush(out);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out = fopen(argv[i] + 4, "a");
        } else if (strncmp(argv[i], "blocks=", 7) == 0) {
            blocks_out = fopen(argv[i] + 7, "a");
        }
    }
    if (!out) {
        fprintf(stderr, "dgms insn plugin: give out=PATH\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}
