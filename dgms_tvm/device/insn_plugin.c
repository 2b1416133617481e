/*
 * dgms-tvm instruction-count plugin for qemu-user (TCG plugin API v1, QEMU 7.2).
 *
 * Counts every guest instruction executed by the process (inline add per translation
 * block, all threads into one counter) and, when the guest calls close() on a marker
 * descriptor (MARKER_BASE + token, far outside any real descriptor range), appends
 * "<token> <instructions so far>\n" to the file given as out=PATH. The difference between
 * two markers is the instruction count of the code between them, measured inside one
 * process, so start-up noise does not enter it.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define AARCH64_SYS_CLOSE 57
#define MARKER_BASE 0x44470000ULL /* "DG" << 16 */
#define MARKER_SPAN 0x10000ULL

static uint64_t insn_count;
static FILE *out;

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insn_count,
                                             qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    uint64_t fd = a1 & 0xffffffffULL;
    if (num == AARCH64_SYS_CLOSE && fd >= MARKER_BASE && fd < MARKER_BASE + MARKER_SPAN && out) {
        fprintf(out, "%" PRIu64 " %" PRIu64 "\n", fd - MARKER_BASE, insn_count);
        fflush(out);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out = fopen(argv[i] + 4, "a");
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
