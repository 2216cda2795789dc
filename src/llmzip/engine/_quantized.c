/* Integer kernels of the GGUF exact engine (engine/gguf_llama.py).
 *
 * Every function has one meaning in integers, computed two ways: an AVX2 path for speed and a
 * plain-C path that is the definition. Both give the same int64 results because every sum is
 * exact (no rounding, no overflow within the documented bounds), so the order of additions never
 * matters. Threads split output rows, never a reduction, so the thread count does not matter either.
 *
 * Weights are GGUF Q4_1 or Q8_0 blocks of 32, re-laid out once at load time:
 *   codes   int8 (Q8_0) [R/8][K/32][16][8][2]: for each group of 8 output rows and each block,
 *           16 pairs of consecutive inputs, the 8 rows' pair side by side;
 *           4-bit (Q4_1, Q4_0: 0..15) [R/8][K/32][4][8][4], two codes a byte: step s holds each
 *           of the 8 rows' inputs 4s .. 4s + 3 in the low nibbles and 16 + 4s .. 16 + 4s + 3 in
 *           the high ones (half the memory traffic of bytes, which is what a decoding step with
 *           few chunks waits for; a step is one vpmaddubsw operand);
 *   scales  int32 [R/8][K/32][8]: the block scale d as an integer, d = scale * 2**row_exponent;
 *   minimums int32 [R/8][K/32][8] (Q4_1 only): the block minimum m, same exponent.
 * A row's dot product with an int16 input row x is then exactly
 *   sum_b scale_b * (sum_j code_bj * x_bj) + minimum_b * (sum_j x_bj)
 * (block sums fit int32: |code| <= 128, |x| <= 32767; totals fit int64, checked at load time).
 *
 * Int8 input blocks (engine version 2, 4-bit matrices only): each block of 32 inputs is first
 * rounded to c * q with q in [-127, 127] and one integer c <= 258 per block (int8_blocks), and
 * the product is the same sum on x' = c * q, computed as c * sum_j code_bj * q_bj: vpmaddubsw
 * multiplies 32 codes by 32 inputs an instruction, twice vpmaddwd's 16 (|sum| <= 32 * 15 * 127).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "_buffers.h"
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

#define ROWS_PER_GROUP 8
#define BLOCK 32
#define MAX_THREADS 64

/* x * 2**shift, rounded half up for right shifts; left shifts saturate at 2**62. The shift is
 * clamped to [-62, 62]. The torch twin is `round_shift` in gguf_llama.py. */
static inline int64_t round_shift(int64_t value, int shift) {
    if (shift < -62) shift = -62;
    if (shift > 62) shift = 62;
    if (shift < 0) {
        int right = -shift;
        return (value + ((int64_t)1 << (right - 1))) >> right;
    }
    int64_t limit = ((int64_t)1 << 62) >> shift;
    if (value > limit) value = limit;
    if (value < -limit) value = -limit;
    return value * ((int64_t)1 << shift);
}

static inline int bit_length(uint64_t value) {
    return value ? 64 - __builtin_clzll(value) : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Quantised matrix product                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    const int16_t *x;          /* [T][K] */
    const int32_t *x_exponent; /* [T] */
    const int32_t *block_sums; /* [T][K/32], Q4_1 only: the sums of x (of c * q with int8 inputs) */
    const uint8_t *codes;
    const int32_t *scales;
    const int32_t *minimums;   /* NULL for Q8_0 */
    const int32_t *row_exponent; /* [R] */
    int64_t *out;              /* [T][R] */
    Py_ssize_t T, K, R;
    int signed_codes, accumulate, plain;
    int int8_inputs;             /* 4-bit matrices take x as int8 blocks (x8, multipliers) */
    const int8_t *x8;            /* [T][K] */
    const int32_t *multipliers;  /* [T][K/32] */
    const int64_t *limits;     /* [R] or NULL: results clamped to [-limit, limit] before accumulating */
    Py_ssize_t group_begin, group_end;
} LinearTask;

/* Bytes of one block of a group of 8 rows: 32 codes a row, two a byte when they are 4-bit. */
static inline Py_ssize_t code_bytes(int signed_codes) {
    return signed_codes ? BLOCK * ROWS_PER_GROUP : BLOCK * ROWS_PER_GROUP / 2;
}

static void store_row_group(const LinearTask *task, Py_ssize_t t, Py_ssize_t group, const int64_t *totals) {
    int64_t *out = task->out + t * task->R + group * ROWS_PER_GROUP;
    for (int i = 0; i < ROWS_PER_GROUP; i++) {
        Py_ssize_t row = group * ROWS_PER_GROUP + i;
        int64_t value = round_shift(totals[i], task->row_exponent[row] + task->x_exponent[t]);
        if (task->limits) {
            int64_t limit = task->limits[row];
            value = value > limit ? limit : value < -limit ? -limit : value;
        }
        out[i] = task->accumulate ? out[i] + value : value;
    }
}

/* Code j of row i of a block, in the kernel layout. */
static inline int32_t code_at(const uint8_t *codes, int signed_codes, int i, int j) {
    if (signed_codes) return (int8_t)codes[((j / 2) * ROWS_PER_GROUP + i) * 2 + j % 2];
    uint8_t both = codes[(((j % 16) / 4) * ROWS_PER_GROUP + i) * 4 + j % 4];
    return j < 16 ? both & 15 : both >> 4;
}

static void linear_plain(const LinearTask *task) {
    const Py_ssize_t blocks = task->K / BLOCK, block_bytes = code_bytes(task->signed_codes);
    for (Py_ssize_t group = task->group_begin; group < task->group_end; group++) {
        for (Py_ssize_t t = 0; t < task->T; t++) {
            int64_t totals[ROWS_PER_GROUP] = {0};
            for (Py_ssize_t b = 0; b < blocks; b++) {
                const uint8_t *codes = task->codes + (group * blocks + b) * block_bytes;
                const int32_t *scales = task->scales + (group * blocks + b) * ROWS_PER_GROUP;
                for (int i = 0; i < ROWS_PER_GROUP; i++) {
                    int32_t sum = 0;
                    if (task->x8) {
                        const int8_t *x8 = task->x8 + t * task->K + b * BLOCK;
                        for (int j = 0; j < BLOCK; j++) sum += code_at(codes, 0, i, j) * x8[j];
                        sum *= task->multipliers[t * blocks + b];
                    } else {
                        const int16_t *x = task->x + t * task->K + b * BLOCK;
                        for (int j = 0; j < BLOCK; j++) sum += code_at(codes, task->signed_codes, i, j) * x[j];
                    }
                    totals[i] += (int64_t)scales[i] * sum;
                    if (task->minimums)
                        totals[i] += (int64_t)task->minimums[(group * blocks + b) * ROWS_PER_GROUP + i] *
                                     task->block_sums[t * blocks + b];
                }
            }
            store_row_group(task, t, group, totals);
        }
    }
}

#if HAVE_X86
/* store_row_group on 4 rows of int64 totals whose shifts are all right shifts of 1 to 62 bits (what
 * products need; right_shifts checks): round half up, clamp to the limits, add or store. An
 * arithmetic right shift is a logical one between two flips of the sign. */
__attribute__((target("avx2"))) static inline void store_four(const LinearTask *task, Py_ssize_t t, Py_ssize_t row,
                                                              __m256i totals) {
    const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi64x(1);
    __m256i shift = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(task->row_exponent + row))),
                                     _mm256_set1_epi64x(task->x_exponent[t]));
    __m256i right = _mm256_sub_epi64(zero, shift);
    __m256i value = _mm256_add_epi64(totals, _mm256_sllv_epi64(one, _mm256_sub_epi64(right, one)));
    __m256i sign = _mm256_cmpgt_epi64(zero, value);
    value = _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(value, sign), right), sign);
    if (task->limits) {
        __m256i limit = _mm256_loadu_si256((const __m256i *)(task->limits + row)), low = _mm256_sub_epi64(zero, limit);
        value = _mm256_blendv_epi8(value, limit, _mm256_cmpgt_epi64(value, limit));
        value = _mm256_blendv_epi8(value, low, _mm256_cmpgt_epi64(low, value));
    }
    __m256i *out = (__m256i *)(task->out + t * task->R + row);
    if (task->accumulate) value = _mm256_add_epi64(value, _mm256_loadu_si256(out));
    _mm256_storeu_si256(out, value);
}

/* Whether the 8 rows from `row` on all shift right by 1 to 62 bits for token t. */
__attribute__((target("avx2"))) static inline int right_shifts(const LinearTask *task, Py_ssize_t t, Py_ssize_t row) {
    __m256i shift = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(task->row_exponent + row)),
                                     _mm256_set1_epi32(task->x_exponent[t]));
    __m256i outside = _mm256_or_si256(_mm256_cmpgt_epi32(shift, _mm256_set1_epi32(-1)),
                                      _mm256_cmpgt_epi32(_mm256_set1_epi32(-62), shift));
    return _mm256_testz_si256(outside, outside);
}

/* Rows 0, 2, 4, 6 of a group's int64 totals in `even`, rows 1, 3, 5, 7 in `odd`. */
__attribute__((target("avx2"))) static inline void store_lanes(const LinearTask *task, Py_ssize_t t, Py_ssize_t group,
                                                               __m256i even, __m256i odd) {
    __m256i low = _mm256_unpacklo_epi64(even, odd), high = _mm256_unpackhi_epi64(even, odd); /* rows 0 1 4 5, 2 3 6 7 */
    __m256i first = _mm256_permute2x128_si256(low, high, 0x20), second = _mm256_permute2x128_si256(low, high, 0x31);
    const Py_ssize_t row = group * ROWS_PER_GROUP;
    if (right_shifts(task, t, row)) {
        store_four(task, t, row, first);
        store_four(task, t, row + 4, second);
        return;
    }
    int64_t totals[ROWS_PER_GROUP];
    _mm256_storeu_si256((__m256i *)totals, first);
    _mm256_storeu_si256((__m256i *)(totals + 4), second);
    store_row_group(task, t, group, totals);
}

/* even[n], odd[n] (rows 0, 2, 4, 6 and 1, 3, 5, 7 in int64) += block b's int32 row sums of token
 * t0 + n times the block scales, plus the minimums times the token's block input sum (Q4_1). */
__attribute__((always_inline, target("avx2"))) static inline void add_block(const LinearTask *task, Py_ssize_t group,
                                                                            Py_ssize_t b, Py_ssize_t t0,
                                                                            const int tokens, const __m256i *sums,
                                                                            __m256i *even, __m256i *odd) {
    const Py_ssize_t blocks = task->K / BLOCK, at = (group * blocks + b) * ROWS_PER_GROUP;
    __m256i scale = _mm256_loadu_si256((const __m256i *)(task->scales + at));
    __m256i scale_odd = _mm256_srli_epi64(scale, 32);
    for (int n = 0; n < tokens; n++) {
        even[n] = _mm256_add_epi64(even[n], _mm256_mul_epi32(sums[n], scale));
        odd[n] = _mm256_add_epi64(odd[n], _mm256_mul_epi32(_mm256_srli_epi64(sums[n], 32), scale_odd));
    }
    if (task->minimums) {
        __m256i minimum = _mm256_loadu_si256((const __m256i *)(task->minimums + at));
        __m256i minimum_odd = _mm256_srli_epi64(minimum, 32);
        for (int n = 0; n < tokens; n++) {
            __m256i input_sum = _mm256_set1_epi32(task->block_sums[(t0 + n) * blocks + b]);
            even[n] = _mm256_add_epi64(even[n], _mm256_mul_epi32(minimum, input_sum));
            odd[n] = _mm256_add_epi64(odd[n], _mm256_mul_epi32(minimum_odd, input_sum));
        }
    }
}

/* sums[n] += the 8 rows' pair `pair` (int16 weights) times token n's inputs 2 pair, 2 pair + 1 */
#define ADD_PAIR(WEIGHTS, PAIR, TOKENS)                                                                                \
    {                                                                                                                  \
        __m256i weights = (WEIGHTS);                                                                                   \
        for (int n = 0; n < TOKENS; n++) {                                                                             \
            int32_t inputs;                                                                                            \
            memcpy(&inputs, rows[n] + b * BLOCK + 2 * (PAIR), 4);                                                      \
            sums[n] = _mm256_add_epi32(sums[n], _mm256_madd_epi16(weights, _mm256_set1_epi32(inputs)));                \
        }                                                                                                              \
    }

/* TOKENS input rows against one group of 8 weight rows; the weights of a block are widened to
 * int16 once and used for every token. vpmaddwd adds two products into each int32 lane; the 16
 * lane sums of a block are exact (< 2**27), then multiplied by the block scale into int64. */
#define DEFINE_TILE(TOKENS)                                                                                            \
    __attribute__((target("avx2"))) static void linear_tile_##TOKENS(const LinearTask *task, Py_ssize_t group,         \
                                                                      Py_ssize_t t0) {                                 \
        const Py_ssize_t blocks = task->K / BLOCK;                                                                     \
        /* int64 totals live in memory: they change once per block, the int32 sums every pair */                       \
        __m256i even[TOKENS], odd[TOKENS];                                                                             \
        for (int n = 0; n < TOKENS; n++) even[n] = odd[n] = _mm256_setzero_si256();                                    \
        const int16_t *rows[TOKENS];                                                                                   \
        for (int n = 0; n < TOKENS; n++) rows[n] = task->x + (t0 + n) * task->K;                                       \
        const Py_ssize_t block_bytes = code_bytes(task->signed_codes);                                                 \
        const __m256i nibble = _mm256_set1_epi8(15);                                                                   \
        const __m256i split_pairs = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, \
                                                     9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);                           \
        for (Py_ssize_t b = 0; b < blocks; b++) {                                                                      \
            const uint8_t *codes = task->codes + (group * blocks + b) * block_bytes;                                   \
            __m256i sums[TOKENS];                                                                                      \
            for (int n = 0; n < TOKENS; n++) sums[n] = _mm256_setzero_si256();                                         \
            if (task->signed_codes)                                                                                    \
                for (int pair = 0; pair < BLOCK / 2; pair++) {                                                         \
                    __m128i raw = _mm_loadu_si128((const __m128i *)(codes + pair * 2 * ROWS_PER_GROUP));               \
                    ADD_PAIR(_mm256_cvtepi8_epi16(raw), pair, TOKENS)                                                  \
                }                                                                                                      \
            else                                                                                                       \
                for (int step = 0; step < 4; step++) {                                                                 \
                    __m256i raw = _mm256_loadu_si256((const __m256i *)(codes + step * 4 * ROWS_PER_GROUP));            \
                    for (int half = 0; half < 2; half++) {                                                             \
                        __m256i four = _mm256_and_si256(half ? _mm256_srli_epi16(raw, 4) : raw, nibble);               \
                        /* each row's 4 codes as its first pair, then its second, rows 0-7 in order */                 \
                        __m256i pairs = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(four, split_pairs), 0xD8);        \
                        ADD_PAIR(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(pairs)), 8 * half + 2 * step, TOKENS)     \
                        ADD_PAIR(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(pairs, 1)), 8 * half + 2 * step + 1,    \
                                 TOKENS)                                                                               \
                    }                                                                                                  \
                }                                                                                                      \
            add_block(task, group, b, t0, TOKENS, sums, even, odd);                                                    \
        }                                                                                                              \
        for (int n = 0; n < TOKENS; n++) store_lanes(task, t0 + n, group, even[n], odd[n]);                           \
    }

DEFINE_TILE(8)
DEFINE_TILE(7)
DEFINE_TILE(6)
DEFINE_TILE(5)
DEFINE_TILE(4)
DEFINE_TILE(3)
DEFINE_TILE(2)
DEFINE_TILE(1)

/* The same with int8 input blocks and 4-bit codes: vpmaddubsw multiplies a step's 8 rows x 4 codes
 * by the token's 4 inputs broadcast, two products in each int16 lane; the 8 steps of a block add
 * up in int16 (|lane| <= 8 * 2 * 15 * 127 = 30480), and vpmaddwd with the block's multiplier c
 * (<= 258) broadcast joins a row's two lanes into int32 times c in one instruction (|c * (a + b)|
 * <= 258 * 60960 < 2**24), before the block scale multiplies. */
#define DEFINE_INT8_TILE(TOKENS)                                                                                       \
    __attribute__((target("avx2"))) static void linear_int8_tile_##TOKENS(const LinearTask *task, Py_ssize_t group,    \
                                                                           Py_ssize_t t0) {                            \
        const Py_ssize_t blocks = task->K / BLOCK;                                                                     \
        __m256i even[TOKENS], odd[TOKENS];                                                                             \
        for (int n = 0; n < TOKENS; n++) even[n] = odd[n] = _mm256_setzero_si256();                                    \
        const int8_t *rows[TOKENS];                                                                                    \
        for (int n = 0; n < TOKENS; n++) rows[n] = task->x8 + (t0 + n) * task->K;                                      \
        const __m256i nibble = _mm256_set1_epi8(15);                                                                   \
        for (Py_ssize_t b = 0; b < blocks; b++) {                                                                      \
            const uint8_t *codes = task->codes + (group * blocks + b) * code_bytes(0);                                 \
            __m256i sums[TOKENS];                                                                                      \
            for (int n = 0; n < TOKENS; n++) sums[n] = _mm256_setzero_si256();                                         \
            for (int step = 0; step < 4; step++) {                                                                     \
                __m256i raw = _mm256_loadu_si256((const __m256i *)(codes + step * 4 * ROWS_PER_GROUP));                \
                for (int half = 0; half < 2; half++) {                                                                 \
                    __m256i four = _mm256_and_si256(half ? _mm256_srli_epi16(raw, 4) : raw, nibble);                   \
                    for (int n = 0; n < TOKENS; n++) {                                                                 \
                        int32_t inputs;                                                                                \
                        memcpy(&inputs, rows[n] + b * BLOCK + 16 * half + 4 * step, 4);                                \
                        sums[n] = _mm256_add_epi16(sums[n], _mm256_maddubs_epi16(four, _mm256_set1_epi32(inputs)));    \
                    }                                                                                                  \
                }                                                                                                      \
            }                                                                                                          \
            for (int n = 0; n < TOKENS; n++) /* a row's two int16 lanes joined and times the block's multiplier */    \
                sums[n] = _mm256_madd_epi16(sums[n],                                                                   \
                                            _mm256_set1_epi16((int16_t)task->multipliers[(t0 + n) * blocks + b]));     \
            add_block(task, group, b, t0, TOKENS, sums, even, odd);                                                    \
        }                                                                                                              \
        for (int n = 0; n < TOKENS; n++) store_lanes(task, t0 + n, group, even[n], odd[n]);                           \
    }

DEFINE_INT8_TILE(8)
DEFINE_INT8_TILE(7)
DEFINE_INT8_TILE(6)
DEFINE_INT8_TILE(5)
DEFINE_INT8_TILE(4)
DEFINE_INT8_TILE(3)
DEFINE_INT8_TILE(2)
DEFINE_INT8_TILE(1)

#define TOKEN_TILE 64 /* input rows kept in L2 while every weight group passes over them */

typedef void (*TileFunction)(const LinearTask *, Py_ssize_t, Py_ssize_t);

static void linear_avx2(const LinearTask *task) {
    static const TileFunction int16_tiles[9] = {NULL,          linear_tile_1, linear_tile_2, linear_tile_3, linear_tile_4,
                                                linear_tile_5, linear_tile_6, linear_tile_7, linear_tile_8};
    static const TileFunction int8_tiles[9] = {NULL,
                                               linear_int8_tile_1,
                                               linear_int8_tile_2,
                                               linear_int8_tile_3,
                                               linear_int8_tile_4,
                                               linear_int8_tile_5,
                                               linear_int8_tile_6,
                                               linear_int8_tile_7,
                                               linear_int8_tile_8};
    const TileFunction *tiles = task->x8 ? int8_tiles : int16_tiles;
    for (Py_ssize_t begin = 0; begin < task->T; begin += TOKEN_TILE) {
        Py_ssize_t end = begin + TOKEN_TILE < task->T ? begin + TOKEN_TILE : task->T;
        /* tiles of at most 8 tokens, as even as can be: 9 tokens as 5 + 4, not 8 + 1, since a
         * tile's unpacking of the codes is shared by its tokens */
        const Py_ssize_t count = (end - begin + 7) / 8;
        for (Py_ssize_t group = task->group_begin; group < task->group_end; group++)
            for (Py_ssize_t i = 0; i < count; i++) {
                Py_ssize_t first = begin + (end - begin) * i / count, last = begin + (end - begin) * (i + 1) / count;
                tiles[last - first](task, group, first);
            }
    }
}
#endif

/* Int8 input blocks of rows of int16 (the plain-C definition): a block of 32 inputs with peak P
 * becomes c * q, c = min(ceil(P / 127), 258) and q = floor((2x + c) / 2c), x rounded half up to a
 * multiple of c; |q| <= 127 and |c * q| <= 32767. sums[b] = c * sum_j q_j (for the minimums). */
static void int8_blocks_plain(const int16_t *x, Py_ssize_t blocks, int8_t *q, int32_t *multipliers, int32_t *sums) {
    for (Py_ssize_t b = 0; b < blocks; b++, x += BLOCK, q += BLOCK) {
        int32_t peak = 0;
        for (int j = 0; j < BLOCK; j++) peak = abs(x[j]) > peak ? abs(x[j]) : peak;
        int32_t c = (peak + 126) / 127 < 258 ? (peak + 126) / 127 : 258, sum = 0;
        for (int j = 0; j < BLOCK; j++) {
            int32_t numerator = 2 * x[j] + c + 2 * c * 128, value = c ? numerator / (2 * c) - 128 : 0; /* numerator >= 0 */
            q[j] = (int8_t)value;
            sum += value;
        }
        multipliers[b] = c;
        sums[b] = c * sum;
    }
}

#if HAVE_X86
/* The same with AVX2: the quotient in float32 is exact (numerator and divisor below 2**24, and a
 * fraction of at least 1/2c away from the next integer, far above float32's rounding there). */
__attribute__((target("avx2"))) static void int8_blocks_avx2(const int16_t *x, Py_ssize_t blocks, int8_t *q,
                                                             int32_t *multipliers, int32_t *sums) {
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (Py_ssize_t b = 0; b < blocks; b++, x += BLOCK, q += BLOCK) {
        __m256i first = _mm256_loadu_si256((const __m256i *)x), second = _mm256_loadu_si256((const __m256i *)(x + 16));
        __m256i magnitude = _mm256_max_epu16(_mm256_abs_epi16(first), _mm256_abs_epi16(second)); /* -32768: 32768 */
        __m128i peak = _mm_max_epu16(_mm256_castsi256_si128(magnitude), _mm256_extracti128_si256(magnitude, 1));
        peak = _mm_max_epu16(peak, _mm_srli_si128(peak, 8));
        peak = _mm_max_epu16(peak, _mm_srli_si128(peak, 4));
        peak = _mm_max_epu16(peak, _mm_srli_si128(peak, 2));
        int32_t top = _mm_extract_epi16(peak, 0), c = (top + 126) / 127 < 258 ? (top + 126) / 127 : 258;
        if (c == 0) {
            memset(q, 0, BLOCK);
            multipliers[b] = sums[b] = 0;
            continue;
        }
        const __m256i offset = _mm256_set1_epi32(c + 2 * c * 128), bias = _mm256_set1_epi32(128);
        const __m256 divisor = _mm256_set1_ps((float)(2 * c));
        __m256i parts[4], total = _mm256_setzero_si256();
        const __m128i halves[4] = {_mm256_castsi256_si128(first), _mm256_extracti128_si256(first, 1),
                                   _mm256_castsi256_si128(second), _mm256_extracti128_si256(second, 1)};
        for (int k = 0; k < 4; k++) {
            __m256i numerator = _mm256_add_epi32(_mm256_slli_epi32(_mm256_cvtepi16_epi32(halves[k]), 1), offset);
            __m256 quotient = _mm256_floor_ps(_mm256_div_ps(_mm256_cvtepi32_ps(numerator), divisor));
            parts[k] = _mm256_sub_epi32(_mm256_cvtps_epi32(quotient), bias);
            total = _mm256_add_epi32(total, parts[k]);
        }
        __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(parts[0], parts[1]), _mm256_packs_epi32(parts[2], parts[3]));
        _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(bytes, order));
        __m128i sum4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
        sum4 = _mm_add_epi32(sum4, _mm_srli_si128(sum4, 8));
        sum4 = _mm_add_epi32(sum4, _mm_srli_si128(sum4, 4));
        multipliers[b] = c;
        sums[b] = c * _mm_cvtsi128_si32(sum4);
    }
}
#endif

static int avx2_available(void) {
#if HAVE_X86
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

static void *linear_worker(void *argument) {
    const LinearTask *task = argument;
#if HAVE_X86
    if (!task->plain && avx2_available()) {
        linear_avx2(task);
        return NULL;
    }
#endif
    linear_plain(task);
    return NULL;
}


/* ------------------------------------------------------------------------------------------ */
/* Worker threads                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* Threads started once and woken per call (a decoding step makes about 120 calls, and starting
 * threads each time cost more than some of the work). They sleep on a condition variable between
 * calls, so an idle pool takes no CPU. Task 0 runs on the calling thread. */
typedef void *(*WorkFunction)(void *);

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    int size;         /* worker threads started: they run tasks 1 .. size */
    long generation;  /* one per call */
    int count;        /* tasks of the current call */
    long pending;     /* tasks 1 .. count - 1 still running */
    WorkFunction function;
    char *tasks;
    size_t task_size;
    void *results[MAX_THREADS];
    long born[MAX_THREADS]; /* the generation before a thread's first call */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER};
static pthread_mutex_t dispatch = PTHREAD_MUTEX_INITIALIZER; /* one call at a time: the GIL is released */
/* The working memory of block calls (see take_scratch), kept between calls. */
static struct {
    pthread_mutex_t lock;
    char *memory;
    size_t size;
} arena = {PTHREAD_MUTEX_INITIALIZER, NULL, 0};

/* Waiting threads first spin this many pauses (tens of microseconds) before they sleep: the calls
 * of one block follow each other closely, and a sleeping thread takes far longer to wake. */
#define SPIN_PAUSES 2000

static inline void pause_briefly(void) {
#if HAVE_X86
    _mm_pause();
#endif
}

/* Spin at most SPIN_PAUSES times while *value == unchanged, or while *value > 0 (read without the lock). */
static void spin_while_equal(const long *value, long unchanged) {
    for (int i = 0; i < SPIN_PAUSES && __atomic_load_n(value, __ATOMIC_ACQUIRE) == unchanged; i++) pause_briefly();
}

static void spin_while_positive(const long *value) {
    for (int i = 0; i < SPIN_PAUSES && __atomic_load_n(value, __ATOMIC_ACQUIRE) > 0; i++) pause_briefly();
}

static void *pool_thread(void *argument) {
    const int index = (int)(intptr_t)argument;
    pthread_mutex_lock(&pool.lock);
    long seen = pool.born[index]; /* the call that started this thread may already have begun */
    for (;;) {
        if (pool.generation == seen) {
            pthread_mutex_unlock(&pool.lock);
            spin_while_equal(&pool.generation, seen);
            pthread_mutex_lock(&pool.lock);
        }
        while (pool.generation == seen) pthread_cond_wait(&pool.wake, &pool.lock);
        seen = pool.generation;
        if (index >= pool.count) continue;
        WorkFunction function = pool.function;
        void *task = pool.tasks + index * pool.task_size;
        pthread_mutex_unlock(&pool.lock);
        void *result = function(task);
        pthread_mutex_lock(&pool.lock);
        pool.results[index] = result;
        if (__atomic_sub_fetch(&pool.pending, 1, __ATOMIC_RELEASE) == 0) pthread_cond_signal(&pool.done);
    }
    return NULL;
}

static void pool_after_fork(void) { /* a forked child has none of the parent's threads */
    pthread_mutex_init(&pool.lock, NULL);
    pthread_mutex_init(&arena.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pthread_mutex_init(&dispatch, NULL);
    pool.size = 0;
}

/* Runs function(tasks[i]) for i < count, i > 0 on pool threads; returns the first non-NULL result. */
static void *run_parallel(WorkFunction function, void *tasks, size_t task_size, int count) {
    void *failed = NULL;
    pthread_mutex_lock(&dispatch);
    pthread_mutex_lock(&pool.lock);
    while (pool.size < count - 1) {
        pthread_t handle;
        pool.born[pool.size + 1] = pool.generation;
        if (pthread_create(&handle, NULL, pool_thread, (void *)(intptr_t)(pool.size + 1)) != 0) break;
        pthread_detach(handle);
        pool.size++;
    }
    int threaded = count - 1 < pool.size ? count - 1 : pool.size; /* tasks 1 .. threaded go to the pool */
    pool.function = function;
    pool.tasks = tasks;
    pool.task_size = task_size;
    pool.count = threaded + 1;
    pool.pending = threaded;
    __atomic_add_fetch(&pool.generation, 1, __ATOMIC_RELEASE);
    if (threaded) pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    for (int i = threaded + 1; i < count; i++) /* no thread for these: run them here */
        if (function((char *)tasks + i * task_size)) failed = (void *)1;
    if (function(tasks)) failed = (void *)1;
    spin_while_positive(&pool.pending); /* the pool's tasks usually end within the spin */
    pthread_mutex_lock(&pool.lock);
    while (pool.pending > 0) pthread_cond_wait(&pool.done, &pool.lock);
    for (int i = 1; i <= threaded; i++)
        if (pool.results[i]) failed = pool.results[i];
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&dispatch);
    return failed;
}

/* Int8 input blocks of tokens [begin, end) (run_parallel splits the tokens). */
typedef struct {
    const LinearTask *task;
    int8_t *x8;
    int32_t *multipliers, *sums;
    Py_ssize_t begin, end;
} BlocksTask;

static void *int8_blocks_worker(void *argument) {
    const BlocksTask *work = argument;
    const LinearTask *task = work->task;
    const Py_ssize_t blocks = task->K / BLOCK;
    for (Py_ssize_t t = work->begin; t < work->end; t++) {
        const int16_t *x = task->x + t * task->K;
#if HAVE_X86
        if (!task->plain && avx2_available()) {
            int8_blocks_avx2(x, blocks, work->x8 + t * task->K, work->multipliers + t * blocks, work->sums + t * blocks);
            continue;
        }
#endif
        int8_blocks_plain(x, blocks, work->x8 + t * task->K, work->multipliers + t * blocks, work->sums + t * blocks);
    }
    return NULL;
}

/* The product of a task with x, out and the matrix set, its rows split between threads; without the
 * GIL. Returns -1 when memory runs out. */
static int run_linear(LinearTask task, int threads) {
    const Py_ssize_t blocks = task.K / BLOCK, groups = task.R / ROWS_PER_GROUP;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    int32_t *block_sums = NULL, *multipliers = NULL;
    int8_t *x8 = NULL;
    if (task.int8_inputs && !task.signed_codes && task.T > 0) {
        block_sums = PyMem_RawMalloc(sizeof(int32_t) * task.T * blocks);
        multipliers = PyMem_RawMalloc(sizeof(int32_t) * task.T * blocks);
        x8 = PyMem_RawMalloc(task.T * task.K);
        if (!block_sums || !multipliers || !x8) {
            PyMem_RawFree(block_sums), PyMem_RawFree(multipliers), PyMem_RawFree(x8);
            return -1;
        }
        /* a decoding step's few rows are converted faster than pool threads wake */
        int parts = task.T * task.K < 32768 ? 1 : task.T < threads ? (int)task.T : threads;
        BlocksTask work[MAX_THREADS];
        for (int i = 0; i < parts; i++)
            work[i] = (BlocksTask){&task, x8, multipliers, block_sums, task.T * i / parts, task.T * (i + 1) / parts};
        run_parallel(int8_blocks_worker, work, sizeof(BlocksTask), parts);
        task.x8 = x8, task.multipliers = multipliers, task.block_sums = block_sums;
    } else if (task.minimums && task.T > 0) {
        block_sums = PyMem_RawMalloc(sizeof(int32_t) * task.T * blocks);
        if (!block_sums) return -1;
        for (Py_ssize_t t = 0; t < task.T; t++)
            for (Py_ssize_t b = 0; b < blocks; b++) {
                int32_t sum = 0;
                for (int j = 0; j < BLOCK; j++) sum += task.x[t * task.K + b * BLOCK + j];
                block_sums[t * blocks + b] = sum;
            }
        task.block_sums = block_sums;
    }
    if (threads > groups) threads = (int)groups;
    if ((double)task.T * task.K * task.R < 2e5) threads = 1; /* not worth a thread */
    LinearTask tasks[MAX_THREADS];
    for (int i = 0; i < threads; i++) {
        tasks[i] = task;
        tasks[i].group_begin = groups * i / threads;
        tasks[i].group_end = groups * (i + 1) / threads;
    }
    run_parallel(linear_worker, tasks, sizeof(LinearTask), threads);
    PyMem_RawFree(block_sums);
    PyMem_RawFree(multipliers);
    PyMem_RawFree(x8);
    return 0;
}

static PyObject *linear(PyObject *self, PyObject *args) {
    PyObject *x_object, *x_exponent_object, *codes_object, *scales_object, *minimums_object, *row_exponent_object;
    PyObject *out_object, *limits_object;
    Py_ssize_t T, K, R;
    int signed_codes, accumulate, threads, plain, int8_inputs;
    if (!PyArg_ParseTuple(args, "OOOOOOOnnnppipOp", &x_object, &x_exponent_object, &codes_object, &scales_object,
                          &minimums_object, &row_exponent_object, &out_object, &T, &K, &R, &signed_codes, &accumulate,
                          &threads, &plain, &limits_object, &int8_inputs))
        return NULL;
    if (T < 0 || K <= 0 || R <= 0 || K % BLOCK || R % ROWS_PER_GROUP) {
        PyErr_SetString(PyExc_ValueError, "shapes must be T >= 0, K a multiple of 32 and R a multiple of 8");
        return NULL;
    }
    Buffers buffers = {.count = 0};
    LinearTask task = {.T = T, .K = K, .R = R, .signed_codes = signed_codes, .accumulate = accumulate, .plain = plain,
                       .int8_inputs = int8_inputs};
    Py_ssize_t blocks = K / BLOCK;
    if (!(task.x = take(&buffers, x_object, 2, T * K, 0, "x")) ||
        !(task.x_exponent = take(&buffers, x_exponent_object, 4, T, 0, "x_exponent")) ||
        !(task.codes = take(&buffers, codes_object, 1, R / ROWS_PER_GROUP * (K / BLOCK) * code_bytes(signed_codes), 0,
                            "codes")) ||
        !(task.scales = take(&buffers, scales_object, 4, R * blocks, 0, "scales")) ||
        !(task.row_exponent = take(&buffers, row_exponent_object, 4, R, 0, "row_exponent")) ||
        !(task.out = take(&buffers, out_object, 8, T * R, 1, "out"))) {
        release(&buffers);
        return NULL;
    }
    if (minimums_object != Py_None &&
        !(task.minimums = take(&buffers, minimums_object, 4, R * blocks, 0, "minimums"))) {
        release(&buffers);
        return NULL;
    }
    if (limits_object != Py_None && !(task.limits = take(&buffers, limits_object, 8, R, 0, "limits"))) {
        release(&buffers);
        return NULL;
    }
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = run_linear(task, threads);
    Py_END_ALLOW_THREADS
    release(&buffers);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------ */
/* RMSNorm and row quantisation to int16                                                       */
/* ------------------------------------------------------------------------------------------ */

static int64_t integer_sqrt(int64_t n) { /* floor(sqrt(n)), 0 <= n < 2**62 */
    int64_t root = (int64_t)__builtin_sqrt((double)n);
    while (root > 0 && root * root > n) root--;
    while ((root + 1) * (root + 1) <= n) root++;
    return root;
}

static int64_t floor_divide(int64_t numerator, int64_t denominator) { /* denominator > 0 */
    int64_t quotient = numerator / denominator;
    if (numerator % denominator != 0 && numerator < 0) quotient--;
    return quotient;
}

static inline uint64_t magnitude(int64_t value) { /* |value|, also for INT64_MIN */
    return value < 0 ? (uint64_t)0 - (uint64_t)value : (uint64_t)value;
}

/* One entry of an int16 row: shifted right by `shift` (rounding half up), clamped to ±32767. */
static inline int16_t int16_entry(int64_t value, int shift) {
    value = round_shift(value, -shift);
    return (int16_t)(value > 32767 ? 32767 : value < -32767 ? -32767 : value);
}

/* The shift that brings a peak of this magnitude within 15 bits. */
static inline int int16_shift(uint64_t peak) {
    const int shift = bit_length(peak) - 15;
    return shift < 0 ? 0 : shift;
}

/* A row of int64 as int16 with a power-of-two exponent: shifted right (rounding half up) until
 * its peak fits 15 bits. Returns the shift. The plain-C definition; to_int16_avx2 gives the same
 * integers. */
static int to_int16_plain(const int64_t *values, Py_ssize_t count, int16_t *out) {
    uint64_t peak = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        if (magnitude(values[i]) > peak) peak = magnitude(values[i]);
    const int shift = int16_shift(peak);
    for (Py_ssize_t i = 0; i < count; i++) out[i] = int16_entry(values[i], shift);
    return shift;
}

#if HAVE_X86
/* Eight entries at a time. The peak's bit length is that of the OR of all magnitudes. After the
 * shift every entry lies in [-2**15, 2**15], so its low 32 bits are the value, clamped in int32
 * and packed. Right shifts are arithmetic ones built from logical shifts (AVX2 has no 64-bit one). */
__attribute__((target("avx2"))) static int to_int16_avx2(const int64_t *values, Py_ssize_t count, int16_t *out) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i bits = zero;
    Py_ssize_t i = 0;
    for (; i + 4 <= count; i += 4) {
        __m256i value = _mm256_loadu_si256((const __m256i *)(values + i)), sign = _mm256_cmpgt_epi64(zero, value);
        bits = _mm256_or_si256(bits, _mm256_sub_epi64(_mm256_xor_si256(value, sign), sign));
    }
    uint64_t lanes[4], peak;
    _mm256_storeu_si256((__m256i *)lanes, bits);
    peak = lanes[0] | lanes[1] | lanes[2] | lanes[3];
    for (Py_ssize_t j = i; j < count; j++) peak |= magnitude(values[j]);
    const int shift = int16_shift(peak);
    const __m256i half = _mm256_set1_epi64x(shift ? (int64_t)1 << (shift - 1) : 0);
    const __m256i sign_bit = _mm256_set1_epi64x((int64_t)((uint64_t)1 << (63 - shift)));
    const __m256i low_halves = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const __m128i highest = _mm_set1_epi32(32767), lowest = _mm_set1_epi32(-32767);
    for (i = 0; i + 8 <= count; i += 8) {
        __m256i a = _mm256_add_epi64(_mm256_loadu_si256((const __m256i *)(values + i)), half);
        __m256i b = _mm256_add_epi64(_mm256_loadu_si256((const __m256i *)(values + i + 4)), half);
        a = _mm256_sub_epi64(_mm256_xor_si256(_mm256_srli_epi64(a, shift), sign_bit), sign_bit);
        b = _mm256_sub_epi64(_mm256_xor_si256(_mm256_srli_epi64(b, shift), sign_bit), sign_bit);
        __m128i a32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(a, low_halves));
        __m128i b32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(b, low_halves));
        a32 = _mm_min_epi32(_mm_max_epi32(a32, lowest), highest);
        b32 = _mm_min_epi32(_mm_max_epi32(b32, lowest), highest);
        _mm_storeu_si128((__m128i *)(out + i), _mm_packs_epi32(a32, b32));
    }
    for (; i < count; i++) out[i] = int16_entry(values[i], shift);
    return shift;
}
#endif

static int to_int16(const int64_t *values, Py_ssize_t count, int16_t *out, int plain) {
#if HAVE_X86
    if (!plain && avx2_available()) return to_int16_avx2(values, count, out);
#endif
    return to_int16_plain(values, count, out);
}

static void quantise(const int64_t *x, int16_t *out, int32_t *exponent, Py_ssize_t T, Py_ssize_t C, int base_exponent,
                     int plain) {
    for (Py_ssize_t t = 0; t < T; t++) exponent[t] = base_exponent + to_int16(x + t * C, C, out + t * C, plain);
}

static PyObject *quantise_rows(PyObject *self, PyObject *args) {
    PyObject *x_object, *out_object, *exponent_object;
    Py_ssize_t T, C;
    int base_exponent, plain;
    if (!PyArg_ParseTuple(args, "OOOnnip", &x_object, &out_object, &exponent_object, &T, &C, &base_exponent, &plain))
        return NULL;
    Buffers buffers = {.count = 0};
    const int64_t *x;
    int16_t *out;
    int32_t *exponent;
    if (!(x = take(&buffers, x_object, 8, T * C, 0, "x")) || !(out = take(&buffers, out_object, 2, T * C, 1, "out")) ||
        !(exponent = take(&buffers, exponent_object, 4, T, 1, "exponent"))) {
        release(&buffers);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    quantise(x, out, exponent, T, C, base_exponent, plain);
    Py_END_ALLOW_THREADS
    release(&buffers);
    Py_RETURN_NONE;
}

/* An RMSNorm's integer constants (gguf_llama._NormConstants). */
typedef struct {
    const int64_t *gain;
    int64_t eps_fixed, numerator;
    int eps_exponent, fraction_bits, gain_exponent;
} Norm;

/* y = x / rms(x) * gain as int16 rows with exponents (see gguf_llama.rms_norm for the reference):
 * each row is shifted so its peak has 20 bits, the root of its sum of squares (plus eps) taken
 * exactly, y = round(r * gain * numerator / (root * 2**fraction_bits)), then `to_int16`. `row`
 * holds C int64. */
static void norm_rows(const int64_t *x, const Norm *norm, int16_t *out, int32_t *exponent, Py_ssize_t T,
                      Py_ssize_t C, int64_t *row, int plain) {
    const int64_t *gain = norm->gain, eps_fixed = norm->eps_fixed, numerator = norm->numerator;
    const int eps_exponent = norm->eps_exponent, fraction_bits = norm->fraction_bits, gain_exponent = norm->gain_exponent;
    int eps_bits = bit_length((uint64_t)eps_fixed);
    for (Py_ssize_t t = 0; t < T; t++) {
        const int64_t *values = x + t * C;
        uint64_t peak = 0;
        for (Py_ssize_t c = 0; c < C; c++)
            if (magnitude(values[c]) > peak) peak = magnitude(values[c]);
        int shift = 20 - bit_length(peak);
        int64_t squares = 0;
        for (Py_ssize_t c = 0; c < C; c++) {
            row[c] = shift >= 0 ? values[c] * ((int64_t)1 << shift) : values[c] >> (-shift);
            squares += row[c] * row[c];
        }
        int eps_shift = eps_exponent + 2 * shift;
        int64_t eps;
        if (eps_shift >= 0)
            eps = eps_bits + eps_shift > 61 ? ((int64_t)1 << 61) : (int64_t)eps_fixed << eps_shift;
        else
            eps = -eps_shift >= 63 ? 0 : (int64_t)eps_fixed >> (-eps_shift);
        int64_t root = integer_sqrt(squares + eps);
        if (root < 1) root = 1;
        int64_t denominator = root << fraction_bits;
        for (Py_ssize_t c = 0; c < C; c++)
            row[c] = floor_divide(2 * (row[c] * gain[c] * numerator) + denominator, 2 * denominator);
        exponent[t] = gain_exponent + to_int16(row, C, out + t * C, plain);
    }
}

static PyObject *rms_norm(PyObject *self, PyObject *args) {
    PyObject *x_object, *gain_object, *out_object, *exponent_object;
    Py_ssize_t T, C;
    long long eps_fixed, numerator;
    int eps_exponent, fraction_bits, gain_exponent, plain;
    if (!PyArg_ParseTuple(args, "OOOOnnLiLiip", &x_object, &gain_object, &out_object, &exponent_object, &T, &C,
                          &eps_fixed, &eps_exponent, &numerator, &fraction_bits, &gain_exponent, &plain))
        return NULL;
    Buffers buffers = {.count = 0};
    const int64_t *x, *gain;
    int16_t *out;
    int32_t *exponent;
    if (!(x = take(&buffers, x_object, 8, T * C, 0, "x")) || !(gain = take(&buffers, gain_object, 8, C, 0, "gain")) ||
        !(out = take(&buffers, out_object, 2, T * C, 1, "out")) ||
        !(exponent = take(&buffers, exponent_object, 4, T, 1, "exponent"))) {
        release(&buffers);
        return NULL;
    }
    int64_t *row = PyMem_RawMalloc(sizeof(int64_t) * (C > 0 ? C : 1));
    if (!row) {
        release(&buffers);
        return PyErr_NoMemory();
    }
    Norm norm = {gain, eps_fixed, numerator, eps_exponent, fraction_bits, gain_exponent};
    Py_BEGIN_ALLOW_THREADS
    norm_rows(x, &norm, out, exponent, T, C, row, plain);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(row);
    release(&buffers);
    Py_RETURN_NONE;
}


/* ------------------------------------------------------------------------------------------ */
/* Attention                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* Softmax attention on integers for one key-value head at a time (see exact.integer_attention,
 * its torch twin): scores are exact dot products (float64 sums of integers below 2**53), turned
 * into logits by the head's fixed-point ratio, weighted by table[max - logit], and the output is
 * the weighted mean of v rounded half up. Query row r (of Rq = group * Tq rows, query t = r % Tq)
 * sees keys 0 .. Tk - Tq + t. Keys and values are int16 rows with a power-of-two exponent each;
 * a worker turns a head's rows into exact doubles (k16 * 2**e) once and serves many queries. */
typedef struct {
    const int64_t *q;       /* [B][H][Rq][D] */
    const int16_t *k, *v;   /* [B][H][capacity][D] */
    const int32_t *k_exponent, *v_exponent; /* [B][H][capacity] */
    int64_t *out;           /* [B][H][Rq][D] */
    const int64_t *multiplier, *shift, *table;
    Py_ssize_t B, H, Rq, Tq, Tk, capacity, D, table_length;
    int plain;
    int worker, workers;
} AttentionTask;

#define QUERY_ROWS 32 /* rows per work item: enough to reuse a head's converted keys */

static double dot_plain(const double *q, const double *k, Py_ssize_t D) {
    double sum = 0;
    for (Py_ssize_t d = 0; d < D; d++) sum += q[d] * k[d];
    return sum;
}

static void mix_plain(double *acc, const double *v, double weight, Py_ssize_t D) {
    for (Py_ssize_t d = 0; d < D; d++) acc[d] += weight * v[d];
}

#if HAVE_X86
/* Four keys at once (D a multiple of 4): each query load serves four products. */
__attribute__((target("avx2,fma"))) static void dot4_avx2(const double *q, const double *k, Py_ssize_t D,
                                                          double *scores) {
    __m256d a = _mm256_setzero_pd(), b = _mm256_setzero_pd(), c = _mm256_setzero_pd(), e = _mm256_setzero_pd();
    for (Py_ssize_t d = 0; d < D; d += 4) {
        __m256d query = _mm256_loadu_pd(q + d);
        a = _mm256_fmadd_pd(query, _mm256_loadu_pd(k + d), a);
        b = _mm256_fmadd_pd(query, _mm256_loadu_pd(k + D + d), b);
        c = _mm256_fmadd_pd(query, _mm256_loadu_pd(k + 2 * D + d), c);
        e = _mm256_fmadd_pd(query, _mm256_loadu_pd(k + 3 * D + d), e);
    }
    __m256d ab = _mm256_hadd_pd(a, b), ce = _mm256_hadd_pd(c, e); /* a0+a1 b0+b1 a2+a3 b2+b3 */
    __m256d low = _mm256_permute2f128_pd(ab, ce, 0x20), high = _mm256_permute2f128_pd(ab, ce, 0x31);
    _mm256_storeu_pd(scores, _mm256_add_pd(low, high));
}

/* Four keys' values at once: each accumulator load and store serves four. */
__attribute__((target("avx2,fma"))) static void mix4_avx2(double *acc, const double *v, const double *weights,
                                                          Py_ssize_t D) {
    __m256d w0 = _mm256_set1_pd(weights[0]), w1 = _mm256_set1_pd(weights[1]);
    __m256d w2 = _mm256_set1_pd(weights[2]), w3 = _mm256_set1_pd(weights[3]);
    for (Py_ssize_t d = 0; d < D; d += 4) {
        __m256d sum = _mm256_loadu_pd(acc + d);
        sum = _mm256_fmadd_pd(w0, _mm256_loadu_pd(v + d), sum);
        sum = _mm256_fmadd_pd(w1, _mm256_loadu_pd(v + D + d), sum);
        sum = _mm256_fmadd_pd(w2, _mm256_loadu_pd(v + 2 * D + d), sum);
        sum = _mm256_fmadd_pd(w3, _mm256_loadu_pd(v + 3 * D + d), sum);
        _mm256_storeu_pd(acc + d, sum);
    }
}
#endif

#if HAVE_X86
/* One position's queries, in a decoding step and in a full pass alike: the R query heads of a
 * key-value head see the same keys and values, so each int16 value is converted once, in
 * registers, and serves all R rows (no conversion of the whole cache, which would cost more than
 * the products themselves), and scores are integer products of the int16 keys as cached. Scores
 * are taken before the key's power of two (exact integers either way: products and sums stay
 * below 2**53), values are weighted by weight * 2**exponent: the same integers as attend_row. */
__attribute__((target("avx2,fma"))) static inline __m256d load4_int16(const int16_t *p) {
    return _mm256_cvtepi32_pd(_mm_cvtepi16_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

__attribute__((target("avx2,fma"))) static inline double sum4(__m256d x) {
    __m128d pair = _mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
    return _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
}

/* scores[r * stride + j] = query_r . key_j for j < seen, rows r < R (R <= 4, a constant after inlining). */
__attribute__((always_inline, target("avx2,fma"))) static inline void shared_scores(
    const double *query, const int16_t *keys, Py_ssize_t seen, Py_ssize_t D, const int R, double *scores,
    Py_ssize_t stride) {
    Py_ssize_t j = 0;
    for (; j + 2 <= seen; j += 2) {
        __m256d first[4], second[4];
        for (int r = 0; r < R; r++) first[r] = second[r] = _mm256_setzero_pd();
        for (Py_ssize_t d = 0; d < D; d += 4) {
            __m256d k0 = load4_int16(keys + j * D + d), k1 = load4_int16(keys + (j + 1) * D + d);
            for (int r = 0; r < R; r++) {
                __m256d q = _mm256_loadu_pd(query + r * D + d);
                first[r] = _mm256_fmadd_pd(q, k0, first[r]);
                second[r] = _mm256_fmadd_pd(q, k1, second[r]);
            }
        }
        for (int r = 0; r < R; r++) {
            scores[r * stride + j] = sum4(first[r]);
            scores[r * stride + j + 1] = sum4(second[r]);
        }
    }
    for (; j < seen; j++)
        for (int r = 0; r < R; r++) {
            double sum = 0;
            for (Py_ssize_t d = 0; d < D; d++) sum += query[r * D + d] * keys[j * D + d];
            scores[r * stride + j] = sum;
        }
}

/* acc[r * D + d] = sum over j < seen of weights[r * stride + j] * values[j][d], rows r < R (R <= 4). */
__attribute__((always_inline, target("avx2,fma"))) static inline void shared_mix(
    const double *weights, const int16_t *values, Py_ssize_t seen, Py_ssize_t D, const int R, double *acc,
    Py_ssize_t stride) {
    for (Py_ssize_t d = 0; d < D; d += 8) {
        __m256d low[4], high[4];
        for (int r = 0; r < R; r++) low[r] = high[r] = _mm256_setzero_pd();
        for (Py_ssize_t j = 0; j < seen; j++) {
            __m256d v0 = load4_int16(values + j * D + d), v1 = load4_int16(values + j * D + d + 4);
            for (int r = 0; r < R; r++) {
                __m256d w = _mm256_set1_pd(weights[r * stride + j]);
                low[r] = _mm256_fmadd_pd(w, v0, low[r]);
                high[r] = _mm256_fmadd_pd(w, v1, high[r]);
            }
        }
        for (int r = 0; r < R; r++) {
            _mm256_storeu_pd(acc + r * D + d, low[r]);
            _mm256_storeu_pd(acc + r * D + d + 4, high[r]);
        }
    }
}

/* scores[r * stride + j] = query_r . key_j for j < seen, rows r < R (R <= 4), D % 16 == 0, in integers:
 * each query entry is split as high * 2**9 + low (low in 0..511, |high| <= 2**10 for |q| <= 2**19),
 * so vpmaddwd takes int16 keys as they are cached and every partial sum is exact in int32 (a lane
 * holds 8 products below 2**25; four lanes below 2**30); the last additions are in int64. The
 * same integers as the float64 sums of shared_scores, with no conversion of the keys. */
__attribute__((always_inline, target("avx2"))) static inline __m256i lane_sums4(const __m256i sums[4]) {
    __m256i pairs = _mm256_hadd_epi32(_mm256_hadd_epi32(sums[0], sums[1]), _mm256_hadd_epi32(sums[2], sums[3]));
    return _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(pairs)),
                            _mm256_cvtepi32_epi64(_mm256_extracti128_si256(pairs, 1)));
}

__attribute__((always_inline, target("avx2"))) static inline void shared_integer_scores(
    const int16_t *low, const int16_t *high, const int16_t *keys, Py_ssize_t seen, Py_ssize_t D, const int R,
    int64_t *scores, Py_ssize_t stride) {
    Py_ssize_t j = 0;
    for (; j + 4 <= seen; j += 4)
        for (int r = 0; r < R; r++) {
            __m256i low_sums[4], high_sums[4];
            for (int n = 0; n < 4; n++) low_sums[n] = high_sums[n] = _mm256_setzero_si256();
            for (Py_ssize_t d = 0; d < D; d += 16) {
                __m256i query_low = _mm256_loadu_si256((const __m256i *)(low + r * D + d));
                __m256i query_high = _mm256_loadu_si256((const __m256i *)(high + r * D + d));
                for (int n = 0; n < 4; n++) {
                    __m256i key = _mm256_loadu_si256((const __m256i *)(keys + (j + n) * D + d));
                    low_sums[n] = _mm256_add_epi32(low_sums[n], _mm256_madd_epi16(key, query_low));
                    high_sums[n] = _mm256_add_epi32(high_sums[n], _mm256_madd_epi16(key, query_high));
                }
            }
            _mm256_storeu_si256((__m256i *)(scores + r * stride + j),
                                _mm256_add_epi64(_mm256_slli_epi64(lane_sums4(high_sums), 9), lane_sums4(low_sums)));
        }
    for (; j < seen; j++)
        for (int r = 0; r < R; r++) {
            int64_t sum = 0;
            for (Py_ssize_t d = 0; d < D; d++) sum += ((int64_t)high[r * D + d] * 512 + low[r * D + d]) * keys[j * D + d];
            scores[r * stride + j] = sum;
        }
}

#define WEIGHT_LOW_BITS 11 /* a key's weight W <= 2**22 as high * 2**11 + low: low < 2**11, high <= 2**11 */
#define WEIGHT_LIMIT ((int64_t)1 << (2 * WEIGHT_LOW_BITS))
#define PAIRS_PER_FLUSH 15 /* int32 lanes take 15 pairs of products below 2**27 each */

/* acc[r * D + d] = sum over j < seen of W_rj * values[j][d], rows r < R (R <= 3), D % 16 == 0, where
 * W_rj = high[r * stride + j] * 2**11 + low[r * stride + j] (the weights as the int16 pairs vpmaddwd
 * takes; `low` and `high` padded to an even count). Two keys' values are interleaved so that one
 * vpmaddwd weighs both (|v| <= 32767, halves <= 2048: a lane's pair is below 2**27), int32 lanes add
 * 15 pairs (below 2**31), then join int64 totals: the same integers as the doubles of shared_mix,
 * twice the products an instruction and no conversions. */
__attribute__((always_inline, target("avx2"))) static inline void add_lanes(int64_t *acc, __m256i first,
                                                                           __m256i second, int shift) {
    /* lanes of `first` are d = 0-3 and 8-11 of the 16, those of `second` 4-7 and 12-15 */
    __m256i parts[4] = {_mm256_cvtepi32_epi64(_mm256_castsi256_si128(first)),
                        _mm256_cvtepi32_epi64(_mm256_castsi256_si128(second)),
                        _mm256_cvtepi32_epi64(_mm256_extracti128_si256(first, 1)),
                        _mm256_cvtepi32_epi64(_mm256_extracti128_si256(second, 1))};
    for (int n = 0; n < 4; n++) {
        __m256i sum = _mm256_loadu_si256((const __m256i *)(acc + 4 * n));
        _mm256_storeu_si256((__m256i *)(acc + 4 * n), _mm256_add_epi64(sum, _mm256_slli_epi64(parts[n], shift)));
    }
}

__attribute__((always_inline, target("avx2"))) static inline void shared_integer_mix(
    const int16_t *low, const int16_t *high, const int16_t *values, Py_ssize_t seen, Py_ssize_t D, const int R,
    int64_t *acc, Py_ssize_t stride) {
    for (int r = 0; r < R; r++) memset(acc + r * D, 0, sizeof(int64_t) * D);
    for (Py_ssize_t d = 0; d < D; d += 16)
        for (Py_ssize_t j = 0; j < seen;) {
            const Py_ssize_t end = seen - j > 2 * PAIRS_PER_FLUSH ? j + 2 * PAIRS_PER_FLUSH : seen;
            __m256i low_first[3], low_second[3], high_first[3], high_second[3];
            for (int r = 0; r < R; r++)
                low_first[r] = low_second[r] = high_first[r] = high_second[r] = _mm256_setzero_si256();
            for (; j < end; j += 2) {
                __m256i a = _mm256_loadu_si256((const __m256i *)(values + j * D + d));
                __m256i b = j + 1 < end ? _mm256_loadu_si256((const __m256i *)(values + (j + 1) * D + d))
                                        : _mm256_setzero_si256(); /* its weights are padding zeros */
                __m256i first = _mm256_unpacklo_epi16(a, b), second = _mm256_unpackhi_epi16(a, b);
                for (int r = 0; r < R; r++) {
                    int32_t low_pair, high_pair;
                    memcpy(&low_pair, low + r * stride + j, 4);
                    memcpy(&high_pair, high + r * stride + j, 4);
                    __m256i low_weights = _mm256_set1_epi32(low_pair), high_weights = _mm256_set1_epi32(high_pair);
                    low_first[r] = _mm256_add_epi32(low_first[r], _mm256_madd_epi16(first, low_weights));
                    low_second[r] = _mm256_add_epi32(low_second[r], _mm256_madd_epi16(second, low_weights));
                    high_first[r] = _mm256_add_epi32(high_first[r], _mm256_madd_epi16(first, high_weights));
                    high_second[r] = _mm256_add_epi32(high_second[r], _mm256_madd_epi16(second, high_weights));
                }
            }
            for (int r = 0; r < R; r++) {
                add_lanes(acc + r * D + d, low_first[r], low_second[r], 0);
                add_lanes(acc + r * D + d, high_first[r], high_second[r], WEIGHT_LOW_BITS);
            }
        }
}

/* The softmax of one query row, four keys at a time, in the integers of the scalar loops below:
 * logit = (score * 2**key_exponent * multiplier + half) >> shift with the multiplier split into
 * 32-bit halves for vpmuludq and vpmuldq (AVX2 has no 64-bit product) and the arithmetic shift
 * built from a logical one; weight = table[min(best - logit, length - 1)] by a gather. */
__attribute__((always_inline, target("avx2"))) static inline __m256i shift_right_arithmetic(__m256i x, int shift) {
    const __m256i sign = _mm256_set1_epi64x((int64_t)((uint64_t)1 << (63 - shift)));
    return _mm256_sub_epi64(_mm256_xor_si256(_mm256_srli_epi64(x, shift), sign), sign);
}

__attribute__((always_inline, target("avx2"))) static inline __m256i max_epi64(__m256i a, __m256i b) {
    return _mm256_blendv_epi8(a, b, _mm256_cmpgt_epi64(b, a));
}

/* Scores (in place) into logits; returns the best. Four at a time where 0 <= multiplier < 2**31 and
 * 0 < shift < 64 (what the split product and the shift take), else one by one. */
__attribute__((target("avx2"))) static int64_t row_logits_avx2(int64_t *row, const int32_t *key_exponent,
                                                               Py_ssize_t seen, int64_t multiplier, int64_t shift) {
    const int64_t half = (int64_t)1 << (shift - 1);
    const int vectors = multiplier >= 0 && multiplier < ((int64_t)1 << 31) && shift > 0 && shift < 64;
    const __m256i factor = _mm256_set1_epi64x(multiplier), rounding = _mm256_set1_epi64x(half);
    __m256i best4 = _mm256_set1_epi64x(INT64_MIN);
    Py_ssize_t j = 0;
    for (; vectors && j + 4 <= seen; j += 4) {
        __m256i exponent = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(key_exponent + j)));
        __m256i score = _mm256_sllv_epi64(_mm256_loadu_si256((const __m256i *)(row + j)), exponent);
        __m256i product = _mm256_add_epi64(_mm256_slli_epi64(_mm256_mul_epi32(_mm256_srli_epi64(score, 32), factor), 32),
                                           _mm256_mul_epu32(score, factor));
        __m256i logit = shift_right_arithmetic(_mm256_add_epi64(product, rounding), (int)shift);
        _mm256_storeu_si256((__m256i *)(row + j), logit);
        best4 = max_epi64(best4, logit);
    }
    int64_t four[4], best = INT64_MIN;
    _mm256_storeu_si256((__m256i *)four, best4);
    for (int n = 0; n < 4; n++)
        if (four[n] > best) best = four[n];
    for (; j < seen; j++) {
        row[j] = (row[j] * ((int64_t)1 << key_exponent[j]) * multiplier + half) >> shift;
        if (row[j] > best) best = row[j];
    }
    return best;
}

/* One weight in the scalar order; 0 when it does not fit the int16 halves of shared_integer_mix. */
static inline int key_weight(int64_t best, int64_t logit, int32_t value_exponent, const int64_t *table,
                             Py_ssize_t table_length, int64_t *total, int16_t *low, int16_t *high) {
    int64_t gap = best - logit;
    if (gap > table_length - 1) gap = table_length - 1;
    const int64_t weight = table[gap];
    *total += weight;
    if (weight < 0 || weight > WEIGHT_LIMIT || value_exponent > 2 * WEIGHT_LOW_BITS) return 0; /* (no shift past 64 bits) */
    const int64_t scaled = weight << value_exponent;
    if (scaled > WEIGHT_LIMIT) return 0;
    *low = (int16_t)(scaled & ((1 << WEIGHT_LOW_BITS) - 1));
    *high = (int16_t)(scaled >> WEIGHT_LOW_BITS);
    return 1;
}

/* The weights of one row as the halves shared_integer_mix takes, and their total; returns whether
 * every weight fits them (else the caller weighs in doubles). */
__attribute__((target("avx2"))) static int row_weights_avx2(const int64_t *logits, int64_t best, Py_ssize_t seen,
                                                            const int32_t *value_exponent, const int64_t *table,
                                                            Py_ssize_t table_length, int64_t *total, int16_t *low,
                                                            int16_t *high) {
    const __m256i top = _mm256_set1_epi64x(best), last = _mm256_set1_epi64x(table_length - 1);
    const __m256i limit = _mm256_set1_epi64x(WEIGHT_LIMIT), exponent_limit = _mm256_set1_epi64x(2 * WEIGHT_LOW_BITS);
    const __m256i low_mask = _mm256_set1_epi64x((1 << WEIGHT_LOW_BITS) - 1), zero = _mm256_setzero_si256();
    const __m256i first_dwords = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    __m256i totals = zero, misfit = zero;
    Py_ssize_t j = 0;
    for (; j + 4 <= seen; j += 4) {
        __m256i gap = _mm256_sub_epi64(top, _mm256_loadu_si256((const __m256i *)(logits + j)));
        gap = _mm256_blendv_epi8(gap, last, _mm256_cmpgt_epi64(gap, last));
        const __m256i weight = _mm256_i64gather_epi64((const long long *)table, gap, 8);
        totals = _mm256_add_epi64(totals, weight);
        const __m256i exponent = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(value_exponent + j)));
        const __m256i scaled = _mm256_sllv_epi64(weight, exponent);
        misfit = _mm256_or_si256(misfit, _mm256_or_si256(_mm256_cmpgt_epi64(zero, weight), _mm256_cmpgt_epi64(weight, limit)));
        misfit = _mm256_or_si256(misfit, _mm256_or_si256(_mm256_cmpgt_epi64(exponent, exponent_limit),
                                                         _mm256_cmpgt_epi64(scaled, limit)));
        /* the halves are below 2**16: packed without saturating */
        __m128i lows = _mm256_castsi256_si128(
            _mm256_permutevar8x32_epi32(_mm256_and_si256(scaled, low_mask), first_dwords));
        __m128i highs = _mm256_castsi256_si128(
            _mm256_permutevar8x32_epi32(_mm256_srli_epi64(scaled, WEIGHT_LOW_BITS), first_dwords));
        __m128i halves = _mm_packus_epi32(lows, highs);
        _mm_storel_epi64((__m128i *)(low + j), halves);
        _mm_storel_epi64((__m128i *)(high + j), _mm_srli_si128(halves, 8));
    }
    int64_t four[4];
    _mm256_storeu_si256((__m256i *)four, totals);
    int64_t sum = four[0] + four[1] + four[2] + four[3];
    int fits = _mm256_testz_si256(misfit, misfit);
    for (; j < seen; j++)
        fits &= key_weight(best, logits[j], value_exponent[j], table, table_length, &sum, low + j, high + j);
    *total = sum;
    return fits;
}

#define QUERY_BOUND ((int64_t)1 << 19) /* |q| after the rotation (gguf_llama.ROTATED_BOUND) */

/* R <= 4 query rows of key-value head `pair` that see the same `seen` keys (the query heads of one
 * key-value head at one position); D % 16 == 0. `scores` holds 8 * Tk: 4 * Tk doubles, then 4 * Tk
 * int64 logits; `query` and `acc` 4 * D doubles, `low` and `high` 4 * D int16, `weight_low` and `weight_high` 4 * (Tk + 2) int16. */
__attribute__((target("avx2,fma"))) static void attend_shared(const AttentionTask *task, Py_ssize_t pair,
                                                              const Py_ssize_t *rows, int R, Py_ssize_t seen,
                                                              double *scores, double *query, double *acc,
                                                              int16_t *low, int16_t *high, int16_t *weight_low,
                                                              int16_t *weight_high) {
    const Py_ssize_t D = task->D, stride = task->Tk, weight_stride = task->Tk + 2;
    const Py_ssize_t base = pair * task->capacity, head = pair % task->H;
    const int16_t *keys = task->k + base * D, *values = task->v + base * D;
    const int32_t *key_exponent = task->k_exponent + base, *value_exponent = task->v_exponent + base;
    const int64_t multiplier = task->multiplier[head], shift = task->shift[head];
    int within = 1;
    for (int r = 0; r < R; r++)
        for (Py_ssize_t d = 0; d < D; d++) {
            int64_t value = task->q[(pair * task->Rq + rows[r]) * D + d];
            query[r * D + d] = (double)value;
            within &= value >= -QUERY_BOUND && value <= QUERY_BOUND;
            low[r * D + d] = (int16_t)(value & 511);
            high[r * D + d] = (int16_t)(value >> 9);
        }
    int64_t *logits = (int64_t *)(scores + 4 * stride); /* integer scores, then the logits in their place */
    if (within)
        switch (R) {
            case 1: shared_integer_scores(low, high, keys, seen, D, 1, logits, stride); break;
            case 2: shared_integer_scores(low, high, keys, seen, D, 2, logits, stride); break;
            case 3: shared_integer_scores(low, high, keys, seen, D, 3, logits, stride); break;
            default: shared_integer_scores(low, high, keys, seen, D, 4, logits, stride); break;
        }
    else {
        switch (R) {
            case 1: shared_scores(query, keys, seen, D, 1, scores, stride); break;
            case 2: shared_scores(query, keys, seen, D, 2, scores, stride); break;
            case 3: shared_scores(query, keys, seen, D, 3, scores, stride); break;
            default: shared_scores(query, keys, seen, D, 4, scores, stride); break;
        }
        for (int r = 0; r < R; r++) /* exact integers far below 2**53 */
            for (Py_ssize_t j = 0; j < seen; j++) logits[r * stride + j] = (int64_t)scores[r * stride + j];
    }
    int64_t totals[4], best[4];
    int small_weights = 1; /* every W = table * 2**exponent at most 2**22: the integer mix */
    for (int r = 0; r < R; r++) {
        int64_t *row = logits + r * stride;
        best[r] = row_logits_avx2(row, key_exponent, seen, multiplier, shift);
        int16_t *low = weight_low + r * weight_stride, *high = weight_high + r * weight_stride;
        small_weights &= row_weights_avx2(row, best[r], seen, value_exponent, task->table, task->table_length,
                                          &totals[r], low, high);
        low[seen] = high[seen] = 0; /* the pair of an odd last key */
    }
    if (small_weights) {
        int64_t *sums = (int64_t *)acc; /* 4 * D int64 in place of the doubles */
        for (int first = 0; first < R; first += 3) {
            const int rows_here = R - first < 3 ? R - first : 3;
            const int16_t *low = weight_low + first * weight_stride, *high = weight_high + first * weight_stride;
            switch (rows_here) {
                case 1: shared_integer_mix(low, high, values, seen, D, 1, sums + first * D, weight_stride); break;
                case 2: shared_integer_mix(low, high, values, seen, D, 2, sums + first * D, weight_stride); break;
                default: shared_integer_mix(low, high, values, seen, D, 3, sums + first * D, weight_stride); break;
            }
        }
        for (int r = 0; r < R; r++) {
            int64_t *out = task->out + (pair * task->Rq + rows[r]) * D;
            for (Py_ssize_t d = 0; d < D; d++) out[d] = floor_divide(2 * sums[r * D + d] + totals[r], 2 * totals[r]);
        }
        return;
    }
    for (int r = 0; r < R; r++) { /* weights too large for int16 halves: doubles, exact below 2**53 */
        const int64_t *row = logits + r * stride;
        double *weights = scores + r * stride;
        for (Py_ssize_t j = 0; j < seen; j++) {
            int64_t gap = best[r] - row[j];
            if (gap > task->table_length - 1) gap = task->table_length - 1;
            weights[j] = (double)task->table[gap] * (double)((int64_t)1 << value_exponent[j]);
        }
    }
    switch (R) {
        case 1: shared_mix(scores, values, seen, D, 1, acc, stride); break;
        case 2: shared_mix(scores, values, seen, D, 2, acc, stride); break;
        case 3: shared_mix(scores, values, seen, D, 3, acc, stride); break;
        default: shared_mix(scores, values, seen, D, 4, acc, stride); break;
    }
    for (int r = 0; r < R; r++) {
        int64_t *out = task->out + (pair * task->Rq + rows[r]) * D;
        for (Py_ssize_t d = 0; d < D; d++) out[d] = floor_divide(2 * (int64_t)acc[r * D + d] + totals[r], 2 * totals[r]);
    }
}
#endif

static void to_doubles(const int16_t *rows, const int32_t *exponents, Py_ssize_t begin, Py_ssize_t end,
                       Py_ssize_t D, double *out) {
    for (Py_ssize_t j = begin; j < end; j++)
        for (Py_ssize_t d = 0; d < D; d++) out[j * D + d] = (double)((int64_t)rows[j * D + d] * ((int64_t)1 << exponents[j]));
}

static void attend_row(const AttentionTask *task, Py_ssize_t item, const double *keys, const double *values,
                       int64_t *logits, double *query, double *acc, int vector) {
    const Py_ssize_t D = task->D;
    const Py_ssize_t row = item % task->Rq, head = (item / task->Rq) % task->H;
    const Py_ssize_t seen = task->Tk - task->Tq + row % task->Tq + 1;
    const int64_t *q = task->q + item * D;
    int64_t *out = task->out + item * D;
    for (Py_ssize_t d = 0; d < D; d++) query[d] = (double)q[d];
    const int64_t multiplier = task->multiplier[head], shift = task->shift[head];
    const int64_t half = (int64_t)1 << (shift - 1);
    int64_t best = INT64_MIN;
    Py_ssize_t j = 0;
#if HAVE_X86
    if (vector)
        for (; j + 4 <= seen; j += 4) {
            double scores[4];
            dot4_avx2(query, keys + j * D, D, scores);
            for (int n = 0; n < 4; n++) {
                int64_t logit = ((int64_t)scores[n] * multiplier + half) >> shift;
                logits[j + n] = logit;
                if (logit > best) best = logit;
            }
        }
#endif
    for (; j < seen; j++) {
        int64_t logit = ((int64_t)dot_plain(query, keys + j * D, D) * multiplier + half) >> shift;
        logits[j] = logit;
        if (logit > best) best = logit;
    }
    for (Py_ssize_t d = 0; d < D; d++) acc[d] = 0;
    int64_t total = 0;
    j = 0;
#if HAVE_X86
    if (vector)
        for (; j + 4 <= seen; j += 4) {
            double weights[4];
            for (int n = 0; n < 4; n++) {
                int64_t gap = best - logits[j + n];
                if (gap > task->table_length - 1) gap = task->table_length - 1;
                weights[n] = (double)task->table[gap];
                total += task->table[gap];
            }
            mix4_avx2(acc, values + j * D, weights, D);
        }
#endif
    for (; j < seen; j++) {
        int64_t gap = best - logits[j];
        if (gap > task->table_length - 1) gap = task->table_length - 1;
        int64_t weight = task->table[gap];
        total += weight;
        if (weight) mix_plain(acc, values + j * D, (double)weight, D);
    }
    for (Py_ssize_t d = 0; d < D; d++) out[d] = floor_divide(2 * (int64_t)acc[d] + total, 2 * total);
}

static void *attention_worker(void *argument) {
    const AttentionTask *task = argument;
    const Py_ssize_t D = task->D;
    int vector = 0;
#if HAVE_X86
    vector = !task->plain && avx2_available() && D % 4 == 0;
#endif
    void *failed = NULL;
#if HAVE_X86
    if (vector && D % 16 == 0) { /* the query rows of one position share its keys and values */
        const Py_ssize_t group = task->Rq / task->Tq; /* query heads per key-value head */
        double *scores = PyMem_RawMalloc(sizeof(double) * 8 * (task->Tk > 0 ? task->Tk : 1)); /* and logits */
        double *buffers = PyMem_RawMalloc(sizeof(double) * 8 * D);
        int16_t *halves = PyMem_RawMalloc(sizeof(int16_t) * 8 * D);
        int16_t *weights = PyMem_RawMalloc(sizeof(int16_t) * 8 * (task->Tk + 2));
        if (!scores || !buffers || !halves || !weights) failed = (void *)1;
        /* work items: (pair, position), positions dealt round-robin so the longer ones spread out */
        for (Py_ssize_t item = task->worker; !failed && item < task->B * task->H * task->Tq; item += task->workers) {
            const Py_ssize_t pair = item / task->Tq, t = item % task->Tq;
            const Py_ssize_t seen = task->Tk - task->Tq + t + 1;
            for (Py_ssize_t first = 0; first < group; first += 4) {
                Py_ssize_t rows[4];
                int R = group - first < 4 ? (int)(group - first) : 4;
                for (int r = 0; r < R; r++) rows[r] = (first + r) * task->Tq + t;
                attend_shared(task, pair, rows, R, seen, scores, buffers, buffers + 4 * D, halves, halves + 4 * D, weights,
                              weights + 4 * (task->Tk + 2));
            }
        }
        PyMem_RawFree(scores);
        PyMem_RawFree(buffers);
        PyMem_RawFree(halves);
        PyMem_RawFree(weights);
        return failed;
    }
#endif
    int64_t *logits = PyMem_RawMalloc(sizeof(int64_t) * (task->Tk > 0 ? task->Tk : 1));
    double *query = PyMem_RawMalloc(sizeof(double) * D * 2);
    double *keys = PyMem_RawMalloc(sizeof(double) * D * (task->Tk > 0 ? task->Tk : 1));
    double *values = PyMem_RawMalloc(sizeof(double) * D * (task->Tk > 0 ? task->Tk : 1));
    if (!logits || !query || !keys || !values) {
        failed = (void *)1;
        goto done;
    }
    Py_ssize_t converted_head = -1, converted = 0; /* keys and values of one (batch, head) as doubles */
    const Py_ssize_t chunks = (task->Rq + QUERY_ROWS - 1) / QUERY_ROWS;
    for (Py_ssize_t work = task->worker; work < task->B * task->H * chunks; work += task->workers) {
        const Py_ssize_t pair = work / chunks, first = (work % chunks) * QUERY_ROWS;
        const Py_ssize_t last = first + QUERY_ROWS < task->Rq ? first + QUERY_ROWS : task->Rq;
        Py_ssize_t needed = 0; /* keys the chunk's rows see */
        for (Py_ssize_t row = first; row < last; row++) {
            Py_ssize_t seen = task->Tk - task->Tq + row % task->Tq + 1;
            if (seen > needed) needed = seen;
        }
        if (pair != converted_head) converted_head = pair, converted = 0;
        if (needed > converted) {
            const Py_ssize_t base = pair * task->capacity;
            to_doubles(task->k + base * D, task->k_exponent + base, converted, needed, D, keys);
            to_doubles(task->v + base * D, task->v_exponent + base, converted, needed, D, values);
            converted = needed;
        }
        for (Py_ssize_t row = first; row < last; row++)
            attend_row(task, pair * task->Rq + row, keys, values, logits, query, query + D, vector);
    }
done:
    PyMem_RawFree(logits);
    PyMem_RawFree(query);
    PyMem_RawFree(keys);
    PyMem_RawFree(values);
    return failed;
}

/* Without the GIL; -1 when memory runs out. */
static int run_attention(AttentionTask task, int threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if ((double)task.B * task.H * task.Rq * task.Tk * task.D < 1e6) threads = 1;
    AttentionTask tasks[MAX_THREADS];
    for (int i = 0; i < threads; i++) {
        tasks[i] = task;
        tasks[i].worker = i;
        tasks[i].workers = threads;
    }
    return run_parallel(attention_worker, tasks, sizeof(AttentionTask), threads) ? -1 : 0;
}

/* The attention kernel alone, for tests: q (B * H * Rq * D int64), keys and values (B * H * capacity
 * * D int16 with an int32 exponent each), per-head multiplier and shift, the weight table. */
static PyObject *attention(PyObject *self, PyObject *args) {
    PyObject *q_object, *k_object, *ke_object, *v_object, *ve_object, *m_object, *s_object, *t_object, *out_object;
    Py_ssize_t B, H, Rq, Tq, Tk, capacity, D, table_length;
    int threads, plain;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOnnnnnnnnii", &q_object, &k_object, &ke_object, &v_object, &ve_object,
                          &m_object, &s_object, &t_object, &out_object, &B, &H, &Rq, &Tq, &Tk, &capacity, &D,
                          &table_length, &threads, &plain))
        return NULL;
    if (B < 1 || H < 1 || Tq < 1 || Rq % Tq || Tk < Tq || capacity < Tk || D < 1 || table_length < 1) {
        PyErr_SetString(PyExc_ValueError, "inconsistent attention shapes");
        return NULL;
    }
    Buffers buffers = {.count = 0};
    AttentionTask task = {.B = B, .H = H, .Rq = Rq, .Tq = Tq, .Tk = Tk, .capacity = capacity, .D = D,
                          .table_length = table_length, .plain = plain};
    if (!(task.q = take(&buffers, q_object, 8, B * H * Rq * D, 0, "q")) ||
        !(task.k = take(&buffers, k_object, 2, B * H * capacity * D, 0, "keys")) ||
        !(task.k_exponent = take(&buffers, ke_object, 4, B * H * capacity, 0, "key exponents")) ||
        !(task.v = take(&buffers, v_object, 2, B * H * capacity * D, 0, "values")) ||
        !(task.v_exponent = take(&buffers, ve_object, 4, B * H * capacity, 0, "value exponents")) ||
        !(task.multiplier = take(&buffers, m_object, 8, H, 0, "multipliers")) ||
        !(task.shift = take(&buffers, s_object, 8, H, 0, "shifts")) ||
        !(task.table = take(&buffers, t_object, 8, table_length, 0, "table")) ||
        !(task.out = take(&buffers, out_object, 8, B * H * Rq * D, 1, "out"))) {
        release(&buffers);
        return NULL;
    }
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = run_attention(task, threads);
    Py_END_ALLOW_THREADS
    release(&buffers);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* Rotary positions in place, GGUF layout: in each head of `width` entries (starting at column
 * `begin` of rows of `columns`), the pair (2i, 2i + 1) turns by the angle of frequency i at the row's
 * position: round((a cos - b sin) / 2**bits), round((b cos + a sin) / 2**bits). Row n of the T rows
 * of a sequence is at position start + n % T. */
static void rotate_range(int64_t *x, const int64_t *cos, const int64_t *sin, Py_ssize_t first, Py_ssize_t last,
                         Py_ssize_t columns, Py_ssize_t begin, Py_ssize_t heads, Py_ssize_t width, Py_ssize_t T,
                         Py_ssize_t start, int bits) {
    const Py_ssize_t half = width / 2;
    const int64_t rounding = (int64_t)1 << (bits - 1);
    for (Py_ssize_t n = first; n < last; n++) {
        const int64_t *c = cos + (start + n % T) * half, *s = sin + (start + n % T) * half;
        for (Py_ssize_t h = 0; h < heads; h++) {
            int64_t *pair = x + n * columns + begin + h * width;
            for (Py_ssize_t i = 0; i < half; i++) {
                int64_t a = pair[2 * i], b = pair[2 * i + 1];
                pair[2 * i] = (a * c[i] - b * s[i] + rounding) >> bits;
                pair[2 * i + 1] = (b * c[i] + a * s[i] + rounding) >> bits;
            }
        }
    }
}

static void rotate_rows(int64_t *x, const int64_t *cos, const int64_t *sin, Py_ssize_t N, Py_ssize_t columns,
                        Py_ssize_t begin, Py_ssize_t heads, Py_ssize_t width, Py_ssize_t T, Py_ssize_t start, int bits) {
    rotate_range(x, cos, sin, 0, N, columns, begin, heads, width, T, start, bits);
}

static PyObject *rotate(PyObject *self, PyObject *args) {
    PyObject *x_object, *cos_object, *sin_object;
    Py_ssize_t N, columns, begin, heads, width, T, start, table_rows;
    int bits;
    if (!PyArg_ParseTuple(args, "OOOnnnnnnnni", &x_object, &cos_object, &sin_object, &N, &columns, &begin, &heads,
                          &width, &T, &start, &table_rows, &bits))
        return NULL;
    if (T <= 0 || N % T || begin + heads * width > columns || width % 2 || start + T > table_rows || bits < 1) {
        PyErr_SetString(PyExc_ValueError, "inconsistent rotation shapes");
        return NULL;
    }
    Buffers buffers = {.count = 0};
    int64_t *x;
    const int64_t *cos, *sin;
    Py_ssize_t half = width / 2;
    if (!(x = take(&buffers, x_object, 8, N * columns, 1, "x")) ||
        !(cos = take(&buffers, cos_object, 8, table_rows * half, 0, "cos")) ||
        !(sin = take(&buffers, sin_object, 8, table_rows * half, 0, "sin"))) {
        release(&buffers);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rotate_rows(x, cos, sin, N, columns, begin, heads, width, T, start, bits);
    Py_END_ALLOW_THREADS
    release(&buffers);
    Py_RETURN_NONE;
}

/* SwiGLU to int16 rows: rows of [gate | up] (hidden each), silu(gate) = round(gate * sigmoid / 2**bits)
 * with sigmoid = table[clamp(round(gate * 2**index_shift), -middle, middle) + middle], the product
 * silu * up as int16 rows with exponents base_exponent + shift. */
typedef struct {
    const int64_t *table;
    Py_ssize_t middle;
    int index_shift, bits, base_exponent;
} Swiglu;

static void swiglu_rows(const int64_t *x, const Swiglu *swiglu, int16_t *out, int32_t *exponent, Py_ssize_t N,
                        Py_ssize_t hidden, int64_t *row, int plain) {
    const int64_t *table = swiglu->table, rounding = (int64_t)1 << (swiglu->bits - 1);
    const Py_ssize_t middle = swiglu->middle;
    for (Py_ssize_t n = 0; n < N; n++) {
        const int64_t *gate = x + n * 2 * hidden, *up = gate + hidden;
        for (Py_ssize_t i = 0; i < hidden; i++) {
            int64_t index = round_shift(gate[i], swiglu->index_shift);
            index = index < -middle ? -middle : index > middle ? middle : index;
            int64_t silu = (gate[i] * table[index + middle] + rounding) >> swiglu->bits;
            row[i] = silu * up[i];
        }
        exponent[n] = swiglu->base_exponent + to_int16(row, hidden, out + n * hidden, plain);
    }
}

static PyObject *swiglu(PyObject *self, PyObject *args) {
    PyObject *x_object, *table_object, *out_object, *exponent_object;
    Py_ssize_t N, hidden, middle;
    int index_shift, bits, base_exponent, plain;
    if (!PyArg_ParseTuple(args, "OOOOnnniiip", &x_object, &table_object, &out_object, &exponent_object, &N, &hidden,
                          &middle, &index_shift, &bits, &base_exponent, &plain))
        return NULL;
    Buffers buffers = {.count = 0};
    const int64_t *x, *table;
    int16_t *out;
    int32_t *exponent;
    if (!(x = take(&buffers, x_object, 8, N * 2 * hidden, 0, "x")) ||
        !(table = take(&buffers, table_object, 8, 2 * middle + 1, 0, "table")) ||
        !(out = take(&buffers, out_object, 2, N * hidden, 1, "out")) ||
        !(exponent = take(&buffers, exponent_object, 4, N, 1, "exponent"))) {
        release(&buffers);
        return NULL;
    }
    int64_t *row = PyMem_RawMalloc(sizeof(int64_t) * (hidden > 0 ? hidden : 1));
    if (!row) {
        release(&buffers);
        return PyErr_NoMemory();
    }
    Swiglu swiglu = {table, middle, index_shift, bits, base_exponent};
    Py_BEGIN_ALLOW_THREADS
    swiglu_rows(x, &swiglu, out, exponent, N, hidden, row, plain);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(row);
    release(&buffers);
    Py_RETURN_NONE;
}


/* Integer logits -> integer weights summing to 2**total_bits, in place (twin: exact.integer_rows):
 * table[min(best - logit, last)], scaled through a 62-bit reciprocal of the row's sum, and the
 * first best token takes what the flooring lost. Rows are independent: threads split them. */
typedef struct {
    int64_t *logits;
    const int64_t *table;
    Py_ssize_t begin, end, V, table_length;
    int total_bits, doubles;
} OutputRowsTask;

static void *output_rows_worker(void *argument) {
    const OutputRowsTask *task = argument;
    const Py_ssize_t V = task->V;
    for (Py_ssize_t n = task->begin; n < task->end && V > 0; n++) {
        int64_t *row = task->logits + n * V;
        Py_ssize_t first = 0;
        for (Py_ssize_t v = 1; v < V; v++)
            if (row[v] > row[first]) first = v;
        const int64_t best = row[first];
        int64_t total = 0;
        for (Py_ssize_t v = 0; v < V; v++) {
            int64_t gap = best - row[v];
            if (gap > task->table_length - 1) gap = task->table_length - 1;
            row[v] = task->table[gap];
            total += row[v];
        }
        const int64_t reciprocal = ((int64_t)1 << 62) / total;
        int64_t sum = 0;
        for (Py_ssize_t v = 0; v < V; v++) {
            row[v] = (row[v] * reciprocal) >> (62 - task->total_bits);
            sum += row[v];
        }
        row[first] += ((int64_t)1 << task->total_bits) - sum;
        if (task->doubles) /* the same integers as the float64 the coder takes, in place (exact below 2**53) */
            for (Py_ssize_t v = 0; v < V; v++) {
                const double value = (double)row[v];
                memcpy(row + v, &value, sizeof value);
            }
    }
    return NULL;
}

static PyObject *output_rows(PyObject *self, PyObject *args) {
    PyObject *logits_object, *table_object;
    Py_ssize_t N, V, table_length;
    int total_bits, threads, doubles;
    if (!PyArg_ParseTuple(args, "OOnnniii", &logits_object, &table_object, &N, &V, &table_length, &total_bits,
                          &threads, &doubles))
        return NULL;
    if (table_length <= 0 || total_bits < 1 || total_bits > 40) {
        PyErr_SetString(PyExc_ValueError, "bad table or total");
        return NULL;
    }
    Buffers buffers = {.count = 0};
    int64_t *logits;
    const int64_t *table;
    if (!(logits = take(&buffers, logits_object, 8, N * V, 1, "logits")) ||
        !(table = take(&buffers, table_object, 8, table_length, 0, "table"))) {
        release(&buffers);
        return NULL;
    }
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > N) threads = N > 0 ? (int)N : 1;
    OutputRowsTask tasks[MAX_THREADS];
    for (int i = 0; i < threads; i++)
        tasks[i] = (OutputRowsTask){logits,     table,        N * i / threads, N * (i + 1) / threads,
                                    V,          table_length, total_bits,      doubles};
    Py_BEGIN_ALLOW_THREADS
    run_parallel(output_rows_worker, tasks, sizeof(OutputRowsTask), threads);
    Py_END_ALLOW_THREADS
    release(&buffers);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------ */
/* One transformer block in one call                                                           */
/* ------------------------------------------------------------------------------------------ */

/* A matrix tuple (codes, scales, minimums or None, row_exponent, limits or None, R, K, signed)
 * into a task's weights; NULL with an exception set when it does not parse. */
static LinearTask *take_matrix(Buffers *buffers, PyObject *matrix, LinearTask *task, int plain, int int8_inputs) {
    PyObject *codes, *scales, *minimums, *row_exponent, *limits;
    Py_ssize_t R, K;
    int signed_codes;
    if (!PyArg_ParseTuple(matrix, "OOOOOnnp", &codes, &scales, &minimums, &row_exponent, &limits, &R, &K,
                          &signed_codes))
        return NULL;
    if (K <= 0 || R <= 0 || K % BLOCK || R % ROWS_PER_GROUP) {
        PyErr_SetString(PyExc_ValueError, "a matrix must have R a multiple of 8 and K of 32");
        return NULL;
    }
    *task = (LinearTask){.K = K, .R = R, .signed_codes = signed_codes, .plain = plain, .int8_inputs = int8_inputs};
    Py_ssize_t blocks = R * (K / BLOCK);
    if (!(task->codes = take(buffers, codes, 1, R / ROWS_PER_GROUP * (K / BLOCK) * code_bytes(signed_codes), 0,
                             "codes")) ||
        !(task->scales = take(buffers, scales, 4, blocks, 0, "scales")) ||
        !(task->row_exponent = take(buffers, row_exponent, 4, R, 0, "row_exponent")) ||
        (minimums != Py_None && !(task->minimums = take(buffers, minimums, 4, blocks, 0, "minimums"))) ||
        (limits != Py_None && !(task->limits = take(buffers, limits, 8, R, 0, "limits"))))
        return NULL;
    return task;
}

static const Norm *take_norm(Buffers *buffers, PyObject *tuple, Norm *norm, Py_ssize_t C) {
    PyObject *gain;
    long long eps_fixed, numerator;
    if (!PyArg_ParseTuple(tuple, "OLiLii", &gain, &eps_fixed, &norm->eps_exponent, &numerator, &norm->fraction_bits,
                          &norm->gain_exponent) ||
        !(norm->gain = take(buffers, gain, 8, C, 0, "gain")))
        return NULL;
    norm->eps_fixed = eps_fixed;
    norm->numerator = numerator;
    return norm;
}

/* Row-wise steps of a block (norms, rotary positions, the cache's int16 rows, SwiGLU, requantising)
 * split between threads by rows: every row's integers depend on that row alone. */
typedef struct {
    const int64_t *x;
    int64_t *rotated; /* rotary positions: x in place */
    const Norm *norm;
    const Swiglu *swiglu;
    const int64_t *cos, *sin;
    int16_t *out, *keys, *values;
    int32_t *exponent, *key_exponent, *value_exponent;
    int64_t *q;
    Py_ssize_t C, B, T, start, columns, heads, width, Hq, Hkv, capacity, position, group;
    int bits, base_exponent, plain;
} RowsContext;

typedef void (*RowsFunction)(const RowsContext *context, Py_ssize_t begin, Py_ssize_t end, int64_t *row);

typedef struct {
    RowsFunction run;
    const RowsContext *context;
    Py_ssize_t begin, end;
    int64_t *row; /* this part's scratch row */
} RowsTask;

static void *rows_worker(void *argument) {
    const RowsTask *task = argument;
    task->run(task->context, task->begin, task->end, task->row);
    return NULL;
}

/* run over rows [0, N), in parts of at least ROWS_PER_PART rows, part i with the scratch row at
 * rows + i * width. */
#define ROWS_PER_PART 16
static void parallel_rows(RowsFunction run, const RowsContext *context, Py_ssize_t N, int threads, int64_t *rows,
                          Py_ssize_t width) {
    Py_ssize_t parts = N / ROWS_PER_PART < threads ? N / ROWS_PER_PART : threads;
    if (parts < 1) parts = 1;
    RowsTask tasks[MAX_THREADS];
    for (Py_ssize_t i = 0; i < parts; i++)
        tasks[i] = (RowsTask){run, context, N * i / parts, N * (i + 1) / parts, rows + i * width};
    if (parts == 1)
        rows_worker(tasks);
    else
        run_parallel(rows_worker, tasks, sizeof(RowsTask), (int)parts);
}

static void norm_part(const RowsContext *c, Py_ssize_t begin, Py_ssize_t end, int64_t *row) {
    norm_rows(c->x + begin * c->C, c->norm, c->out + begin * c->C, c->exponent + begin, end - begin, c->C, row,
              c->plain);
}

static void swiglu_part(const RowsContext *c, Py_ssize_t begin, Py_ssize_t end, int64_t *row) {
    swiglu_rows(c->x + begin * 2 * c->C, c->swiglu, c->out + begin * c->C, c->exponent + begin, end - begin, c->C,
                row, c->plain);
}

static void quantise_part(const RowsContext *c, Py_ssize_t begin, Py_ssize_t end, int64_t *row) {
    quantise(c->x + begin * c->C, c->out + begin * c->C, c->exponent + begin, end - begin, c->C, c->base_exponent,
             c->plain);
}

/* rotary positions on the q and k heads, then keys and values into the cache and the queries as
 * (B, Hkv, group * T, D): a key-value head's query heads become more query rows */
static void attention_inputs_part(const RowsContext *c, Py_ssize_t begin, Py_ssize_t end, int64_t *row) {
    rotate_range(c->rotated, c->cos, c->sin, begin, end, c->columns, 0, c->heads, c->width, c->T, c->start, c->bits);
    const Py_ssize_t D = c->width;
    for (Py_ssize_t n = begin; n < end; n++) {
        const Py_ssize_t b = n / c->T, t = n % c->T;
        const int64_t *qkv = c->rotated + n * c->columns;
        for (Py_ssize_t kv = 0; kv < c->Hkv; kv++) {
            Py_ssize_t at = (b * c->Hkv + kv) * c->capacity + c->position + t;
            c->key_exponent[at] = to_int16(qkv + (c->Hq + kv) * D, D, c->keys + at * D, c->plain);
            c->value_exponent[at] = to_int16(qkv + (c->Hq + c->Hkv + kv) * D, D, c->values + at * D, c->plain);
            for (Py_ssize_t g = 0; g < c->group; g++)
                memcpy(c->q + (((b * c->Hkv + kv) * c->group + g) * c->T + t) * D, qkv + (kv * c->group + g) * D,
                       sizeof(int64_t) * D);
        }
    }
}

/* The working buffers of a block call, carved from one arena that is kept between calls (fresh
 * memory every call cost page faults and page clearing: several percent of a full pass). One
 * block call at a time uses it. */
typedef struct {
    int16_t *h, *y16, *p16;
    int32_t *h_exponent, *y_exponent, *p_exponent;
    int64_t *qkv, *q, *attended, *y, *gate_up, *row; /* row: a scratch row (of the wider of C and hidden) a thread */
} Scratch;

static void *carve(char **at, size_t bytes) { /* 64-byte aligned pieces */
    char *start = *at;
    *at += (bytes + 63) & ~(size_t)63;
    return start;
}

/* Call with arena.lock held; 0 when out of memory. */
static int take_scratch(Scratch *scratch, Py_ssize_t N, Py_ssize_t C, Py_ssize_t hidden, Py_ssize_t Rqkv,
                        Py_ssize_t heads_width, int threads) {
    const Py_ssize_t wide = C > hidden ? C : hidden;
    const size_t sizes[] = {sizeof(int16_t) * N * wide, sizeof(int16_t) * N * heads_width, sizeof(int16_t) * N * hidden,
                            sizeof(int32_t) * N, sizeof(int32_t) * N, sizeof(int32_t) * N,
                            sizeof(int64_t) * N * Rqkv, sizeof(int64_t) * N * heads_width,
                            sizeof(int64_t) * N * heads_width, sizeof(int64_t) * N * heads_width,
                            sizeof(int64_t) * N * 2 * hidden, sizeof(int64_t) * wide * threads};
    size_t total = 64;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) total += (sizes[i] + 63) & ~(size_t)63;
    if (total > arena.size) {
        PyMem_RawFree(arena.memory);
        arena.memory = PyMem_RawMalloc(total);
        arena.size = arena.memory ? total : 0;
        if (!arena.memory) return 0;
    }
    char *at = (char *)(((uintptr_t)arena.memory + 63) & ~(uintptr_t)63);
    void **pieces[] = {(void **)&scratch->h, (void **)&scratch->y16, (void **)&scratch->p16,
                       (void **)&scratch->h_exponent, (void **)&scratch->y_exponent, (void **)&scratch->p_exponent,
                       (void **)&scratch->qkv, (void **)&scratch->q, (void **)&scratch->attended, (void **)&scratch->y,
                       (void **)&scratch->gate_up, (void **)&scratch->row};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) *pieces[i] = carve(&at, sizes[i]);
    return 1;
}

/* The block of gguf_llama._Block.__call__ on B sequences of T positions, every step the same
 * integers as the separate kernels that function calls: norm, q/k/v product, rotary positions,
 * keys and values appended to the cache at `position`, attention over the `position + T` cached
 * positions, output product added to x, norm, gate/up product, SwiGLU, down product added to x.
 * One call instead of about twenty Python-level operations per layer and step. */
static PyObject *block(PyObject *self, PyObject *args) {
    PyObject *layer, *x_object, *cos_object, *sin_object, *keys_object, *key_exponent_object, *values_object;
    PyObject *value_exponent_object;
    Py_ssize_t B, T, start, table_rows, position, capacity;
    int threads, plain, int8_inputs;
    if (!PyArg_ParseTuple(args, "OOnnnOOnOOOOnnipp", &layer, &x_object, &B, &T, &start, &cos_object, &sin_object,
                          &table_rows, &keys_object, &key_exponent_object, &values_object, &value_exponent_object,
                          &position, &capacity, &threads, &plain, &int8_inputs))
        return NULL;
    PyObject *norm1, *qkv_matrix, *multiplier_object, *shift_object, *table_object, *o_matrix, *norm2;
    PyObject *gate_up_matrix, *sigmoid_object, *down_matrix;
    Py_ssize_t Hq, Hkv, D, C, hidden, sigmoid_middle;
    int v_exponent, rope_bits, sigmoid_index_shift, sigmoid_bits, swiglu_exponent;
    if (!PyArg_ParseTuple(layer, "nnnnnOOiOOOiOOOOniiiO", &C, &Hq, &Hkv, &D, &hidden, &norm1, &qkv_matrix, &rope_bits,
                          &multiplier_object, &shift_object, &table_object, &v_exponent, &o_matrix, &norm2,
                          &gate_up_matrix, &sigmoid_object, &sigmoid_middle, &sigmoid_index_shift, &sigmoid_bits,
                          &swiglu_exponent, &down_matrix))
        return NULL;
    const Py_ssize_t N = B * T, group = Hkv > 0 ? Hq / Hkv : 0, Rqkv = (Hq + 2 * Hkv) * D;
    if (B <= 0 || T <= 0 || Hkv <= 0 || Hq % Hkv || D <= 0 || D % 2 || C <= 0 || hidden <= 0 || position < 0 ||
        position + T > capacity || start < 0 || start + T > table_rows) {
        PyErr_SetString(PyExc_ValueError, "inconsistent block shapes");
        return NULL;
    }
    Buffers buffers = {.count = 0};
    LinearTask qkv, o, gate_up, down;
    Norm first_norm, second_norm;
    int64_t *x;
    const int64_t *cos, *sin, *multiplier, *shift, *attention_table, *sigmoid;
    int16_t *keys, *values;
    int32_t *key_exponent, *value_exponent;
    Py_ssize_t table_length = 0;
    if (PyObject_Length(table_object) < 1) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "an empty attention table");
        return NULL;
    }
    table_length = PyObject_Length(table_object);
    if (!take_norm(&buffers, norm1, &first_norm, C) || !take_norm(&buffers, norm2, &second_norm, C) ||
        !take_matrix(&buffers, qkv_matrix, &qkv, plain, int8_inputs) ||
        !take_matrix(&buffers, o_matrix, &o, plain, int8_inputs) ||
        !take_matrix(&buffers, gate_up_matrix, &gate_up, plain, int8_inputs) ||
        !take_matrix(&buffers, down_matrix, &down, plain, int8_inputs) ||
        !(x = take(&buffers, x_object, 8, N * C, 1, "x")) ||
        !(cos = take(&buffers, cos_object, 8, table_rows * (D / 2), 0, "cos")) ||
        !(sin = take(&buffers, sin_object, 8, table_rows * (D / 2), 0, "sin")) ||
        !(keys = take(&buffers, keys_object, 2, B * Hkv * capacity * D, 1, "keys")) ||
        !(key_exponent = take(&buffers, key_exponent_object, 4, B * Hkv * capacity, 1, "key_exponent")) ||
        !(values = take(&buffers, values_object, 2, B * Hkv * capacity * D, 1, "values")) ||
        !(value_exponent = take(&buffers, value_exponent_object, 4, B * Hkv * capacity, 1, "value_exponent")) ||
        !(multiplier = take(&buffers, multiplier_object, 8, Hkv, 0, "multiplier")) ||
        !(shift = take(&buffers, shift_object, 8, Hkv, 0, "shift")) ||
        !(attention_table = take(&buffers, table_object, 8, table_length, 0, "attention table")) ||
        !(sigmoid = take(&buffers, sigmoid_object, 8, 2 * sigmoid_middle + 1, 0, "sigmoid table"))) {
        release(&buffers);
        return NULL;
    }
    if (qkv.K != C || qkv.R != Rqkv || o.K != Hq * D || o.R != C || gate_up.K != C || gate_up.R != 2 * hidden ||
        down.K != hidden || down.R != C) {
        release(&buffers);
        PyErr_SetString(PyExc_ValueError, "the block's matrices do not fit its shapes");
        return NULL;
    }
    Scratch scratch;
    int failed;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    const Py_ssize_t wide = C > hidden ? C : hidden;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&arena.lock);
    failed = !take_scratch(&scratch, N, C, hidden, Rqkv, Hq * D, threads);
    if (!failed) {
        /* attention: norm, q k v, rotary positions (q and k heads are adjacent columns) */
        const RowsContext norm = {.x = x, .norm = &first_norm, .out = scratch.h, .exponent = scratch.h_exponent, .C = C,
                                  .plain = plain};
        parallel_rows(norm_part, &norm, N, threads, scratch.row, wide);
        qkv.x = scratch.h, qkv.x_exponent = scratch.h_exponent, qkv.out = scratch.qkv, qkv.T = N;
        failed = run_linear(qkv, threads);
    }
    if (!failed) {
        const RowsContext inputs = {.rotated = scratch.qkv, .cos = cos, .sin = sin, .keys = keys, .values = values,
                                    .key_exponent = key_exponent, .value_exponent = value_exponent, .q = scratch.q,
                                    .B = B, .T = T, .start = start, .columns = Rqkv, .heads = Hq + Hkv, .width = D,
                                    .Hq = Hq, .Hkv = Hkv, .capacity = capacity, .position = position, .group = group,
                                    .bits = rope_bits, .plain = plain};
        parallel_rows(attention_inputs_part, &inputs, N, threads, scratch.row, wide);
        AttentionTask attention_task = {.q = scratch.q, .k = keys, .v = values, .k_exponent = key_exponent,
                                        .v_exponent = value_exponent, .out = scratch.attended,
                                        .multiplier = multiplier, .shift = shift, .table = attention_table,
                                        .B = B, .H = Hkv, .Rq = group * T, .Tq = T, .Tk = position + T,
                                        .capacity = capacity, .D = D, .table_length = table_length, .plain = plain};
        failed = run_attention(attention_task, threads);
    }
    if (!failed) {
        /* heads back to (N, Hq * D), as int16 rows in the values' unit; the output product joins x */
        for (Py_ssize_t b = 0; b < B; b++)
            for (Py_ssize_t head = 0; head < Hq; head++)
                for (Py_ssize_t t = 0; t < T; t++)
                    memcpy(scratch.y + ((b * T + t) * Hq + head) * D, scratch.attended + ((b * Hq + head) * T + t) * D,
                           sizeof(int64_t) * D);
        const RowsContext heads = {.x = scratch.y, .out = scratch.y16, .exponent = scratch.y_exponent, .C = Hq * D,
                                   .base_exponent = -v_exponent, .plain = plain};
        parallel_rows(quantise_part, &heads, N, threads, scratch.row, wide);
        o.x = scratch.y16, o.x_exponent = scratch.y_exponent, o.out = x, o.T = N, o.accumulate = 1;
        failed = run_linear(o, threads);
    }
    if (!failed) { /* feed-forward: norm, gate and up, SwiGLU, down product joins x */
        const RowsContext norm = {.x = x, .norm = &second_norm, .out = scratch.h, .exponent = scratch.h_exponent, .C = C,
                                  .plain = plain};
        parallel_rows(norm_part, &norm, N, threads, scratch.row, wide);
        gate_up.x = scratch.h, gate_up.x_exponent = scratch.h_exponent, gate_up.out = scratch.gate_up, gate_up.T = N;
        failed = run_linear(gate_up, threads);
    }
    if (!failed) {
        Swiglu swiglu = {sigmoid, sigmoid_middle, sigmoid_index_shift, sigmoid_bits, swiglu_exponent};
        const RowsContext activation = {.x = scratch.gate_up, .swiglu = &swiglu, .out = scratch.p16,
                                        .exponent = scratch.p_exponent, .C = hidden, .plain = plain};
        parallel_rows(swiglu_part, &activation, N, threads, scratch.row, wide);
        down.x = scratch.p16, down.x_exponent = scratch.p_exponent, down.out = x, down.T = N, down.accumulate = 1;
        failed = run_linear(down, threads);
    }
    pthread_mutex_unlock(&arena.lock);
    Py_END_ALLOW_THREADS
    release(&buffers);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *has_avx2(PyObject *self, PyObject *unused) { return PyBool_FromLong(avx2_available()); }

static PyMethodDef methods[] = {
    {"linear", linear, METH_VARARGS,
     "linear(x, x_exponent, codes, scales, minimums, row_exponent, out, T, K, R, signed_codes, accumulate, threads, "
     "plain, limits, int8_inputs): out[t, r] (+)= clamp(round(sum_k w[r, k] x[t, k] * 2**(row_exponent[r] + "
     "x_exponent[t])), limits[r]); with int8_inputs, 4-bit matrices take x as int8 blocks"},
    {"rms_norm", rms_norm, METH_VARARGS,
     "rms_norm(x, gain, out, exponent, T, C, eps_fixed, eps_exponent, numerator, fraction_bits, gain_exponent, plain)"},
    {"quantise_rows", quantise_rows, METH_VARARGS, "quantise_rows(x, out, exponent, T, C, base_exponent, plain)"},
    {"attention", attention, METH_VARARGS,
     "attention(q, keys, key_exponent, values, value_exponent, multiplier, shift, table, out, B, H, Rq, Tq, Tk, "
     "capacity, D, table_length, threads, plain): the attention kernel of `block` alone"},
    {"rotate", rotate, METH_VARARGS,
     "rotate(x, cos, sin, N, columns, begin, heads, width, T, start, table_rows, bits): rotary positions in place"},
    {"swiglu", swiglu, METH_VARARGS,
     "swiglu(x, table, out, exponent, N, hidden, middle, index_shift, bits, base_exponent, plain)"},
    {"output_rows", output_rows, METH_VARARGS,
     "output_rows(logits, table, N, V, table_length, total_bits, threads, doubles): integer logits to coder weights, "
     "in place, as int64 or (doubles) as the same integers in float64"},
    {"block", block, METH_VARARGS,
     "block(layer, x, B, T, start, cos, sin, table_rows, keys, key_exponent, values, value_exponent, position, "
     "capacity, threads, plain, int8_inputs): one transformer block on x (B * T rows) in place, keys and values cached"},
    {"has_avx2", has_avx2, METH_NOARGS, "True when this CPU runs the AVX2 path"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_quantized", "Integer kernels of the GGUF exact engine.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__quantized(void) {
    pthread_atfork(NULL, NULL, pool_after_fork);
    return PyModule_Create(&module);
}
