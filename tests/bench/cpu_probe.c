/* Does this machine run FEATURE's instructions? `cpu_probe FEATURE` executes one instruction of
 * that x86 extension and exits 0; a feature the kernel or the hypervisor does not grant ends in
 * SIGILL (or, for AMX, a refused arch_prctl) instead. tests/bench/build-llama.sh runs it once per
 * feature that /proc/cpuinfo lists, in a child process each, because /proc/cpuinfo reports what
 * CPUID says and a virtual machine may not grant it: on one machine kind CI gets, it lists
 * amx_tile/amx_int8/amx_bf16 that the VM does not allow, and llama.cpp built with them dies in
 * prompt processing (SIGSEGV in ggml_backend_amx_mul_mat).
 *
 * Build: cc -O1 -o cpu_probe tests/bench/cpu_probe.c   (each probe carries its own target
 * attribute, so the file compiles without -m flags on any x86-64 compiler that knows them)
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023 /* Linux: ask for the AMX tile-data state (kernel 5.16+) */
#define XFEATURE_XTILEDATA 18

static volatile int sink;

__attribute__((target("sse4.2"))) static int sse42(void) { return (int)_mm_crc32_u8((unsigned)sink, 7); }
__attribute__((target("avx"))) static int avx(void) {
    __m256 a = _mm256_set1_ps((float)sink + 1.0f);
    return (int)_mm256_cvtss_f32(_mm256_add_ps(a, a));
}
__attribute__((target("avx2"))) static int avx2(void) {
    __m256i a = _mm256_set1_epi32(sink + 1);
    return _mm256_extract_epi32(_mm256_add_epi32(a, a), 0);
}
__attribute__((target("fma"))) static int fma3(void) {
    __m256 a = _mm256_set1_ps((float)sink + 1.0f);
    return (int)_mm256_cvtss_f32(_mm256_fmadd_ps(a, a, a));
}
__attribute__((target("f16c"))) static int f16c(void) {
    __m128i h = _mm_set1_epi16((short)(0x3c00 + sink)); /* 1.0 in half precision */
    return (int)_mm256_cvtss_f32(_mm256_cvtph_ps(h));
}
__attribute__((target("bmi2"))) static int bmi2(void) { return (int)_pdep_u32((unsigned)sink + 5, 0xf0); }
__attribute__((target("avxvnni"))) static int avx_vnni(void) {
    __m256i a = _mm256_set1_epi32(sink + 1);
    return _mm256_extract_epi32(_mm256_dpbusd_avx_epi32(a, a, a), 0);
}
/* GGML_AVX512 compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw: try the two
 * llama.cpp leans on (F and BW) on full 512-bit registers. */
__attribute__((target("avx512f,avx512bw"))) static int avx512(void) {
    __m512i a = _mm512_set1_epi16((short)(sink + 1));
    return _mm_cvtsi128_si32(_mm512_castsi512_si128(_mm512_add_epi16(a, a)));
}
__attribute__((target("avx512f,avx512vbmi"))) static int avx512_vbmi(void) {
    __m512i a = _mm512_set1_epi8((char)(sink + 1));
    return _mm_cvtsi128_si32(_mm512_castsi512_si128(_mm512_permutexvar_epi8(a, a)));
}
__attribute__((target("avx512f,avx512vnni"))) static int avx512_vnni(void) {
    __m512i a = _mm512_set1_epi32(sink + 1);
    return _mm_cvtsi128_si32(_mm512_castsi512_si128(_mm512_dpbusd_epi32(a, a, a)));
}
__attribute__((target("avx512f,avx512bf16"))) static int avx512_bf16(void) {
    __m512 a = _mm512_set1_ps((float)sink + 1.0f);
    __m512bh b = _mm512_cvtne2ps_pbh(a, a);
    return (int)_mm512_cvtss_f32(_mm512_dpbf16_ps(a, b, b));
}

/* AMX: the process must ask the kernel for the tile-data state, then configure the tiles. */
struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

static int amx_permission(void) { return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0; }

__attribute__((target("amx-tile"))) static void amx_configure(void) {
    struct tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 3; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

__attribute__((target("amx-tile"))) static int amx_tile(void) {
    if (!amx_permission()) return -1;
    amx_configure();
    _tile_zero(0);
    _tile_release();
    return 0;
}
__attribute__((target("amx-tile,amx-int8"))) static int amx_int8(void) {
    if (!amx_permission()) return -1;
    amx_configure();
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_dpbssd(0, 1, 2);
    _tile_release();
    return 0;
}
__attribute__((target("amx-tile,amx-bf16"))) static int amx_bf16(void) {
    if (!amx_permission()) return -1;
    amx_configure();
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_dpbf16ps(0, 1, 2);
    _tile_release();
    return 0;
}

static const struct {
    const char *name; /* as /proc/cpuinfo spells it */
    int (*run)(void);
} probes[] = {
    {"sse4_2", sse42},           {"avx", avx},
    {"avx2", avx2},              {"fma", fma3},
    {"f16c", f16c},              {"bmi2", bmi2},
    {"avx_vnni", avx_vnni},      {"avx512bw", avx512},
    {"avx512vbmi", avx512_vbmi}, {"avx512_vnni", avx512_vnni},
    {"avx512_bf16", avx512_bf16}, {"amx_tile", amx_tile},
    {"amx_int8", amx_int8},      {"amx_bf16", amx_bf16},
};

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FEATURE (a /proc/cpuinfo flag)\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        if (strcmp(argv[1], probes[i].name) == 0) {
            sink = probes[i].run(); /* SIGILL here if not granted */
            return sink == -1 ? 1 : 0;
        }
    }
    fprintf(stderr, "%s: no probe for %s\n", argv[0], argv[1]);
    return 2;
}
