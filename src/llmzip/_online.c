/* The online model's per-token work (online.py), compiled: the secondary estimate and the mixed
 * row, and the match model's predictions and observations. online.py holds the state in numpy
 * arrays and its own Python loops are the definition; these give the same integers (tests compare
 * them), so a file decodes the same whichever ran. Rows are float64 holding exact integers below
 * 2**31; every product below is an integer one, in int64 or uint64.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "_buffers.h"
#include <stdint.h>

/* online.py's constants, which fix the rule (docs/FORMAT.md, "The online model") */
#define ROW_TOTAL_BITS 30
#define PROBABILITY_BITS 16
#define MATCH_CHECK 32
#define HASH_BITS 22
#define POSITION_LIMIT 2147483647LL
#define LENGTH_CONTEXTS 24
#define STRETCH_FRACTION 256
#define STRETCH_NODES 25
#define PRIOR_WEIGHT (4 * STRETCH_FRACTION)
#define CELLS (LENGTH_CONTEXTS * STRETCH_NODES)
#define LOG2_MANTISSA_BITS 10
#define TOKEN_BITS 20
#define HASH_MULTIPLIER 0x9E3779B97F4A7C15ULL
#define MAX_ORDERS 8

/* ------------------------------------------------------------------------------------------ */
/* The secondary estimate and the mixed row                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    const int64_t *hits, *trials;   /* [CELLS]: the shared table */
    int64_t *own_hits, *own_trials; /* [chunks][CELLS]: each chunk's observations not yet folded in */
    const int64_t *log2_mantissa;   /* [1 << LOG2_MANTISSA_BITS] */
    const int64_t *priors;          /* [STRETCH_NODES] */
} Estimate;

static inline int bit_length(uint64_t value) { return value ? 64 - __builtin_clzll(value) : 0; }

static inline int64_t log2_fixed(const Estimate *estimate, int64_t n) { /* n >= 1 */
    const int exponent = bit_length((uint64_t)n) - 1;
    const int64_t mantissa = exponent < LOG2_MANTISSA_BITS ? (n << LOG2_MANTISSA_BITS >> exponent) - 1024
                                                           : (n >> (exponent - LOG2_MANTISSA_BITS)) - 1024;
    return (int64_t)exponent * STRETCH_FRACTION + estimate->log2_mantissa[mantissa];
}

static inline int64_t length_context(int64_t length) {
    return length < 16 ? length : (12 + length / 4 < LENGTH_CONTEXTS - 1 ? 12 + length / 4 : LENGTH_CONTEXTS - 1);
}

static inline int64_t node_estimate(const Estimate *estimate, Py_ssize_t chunk, int64_t cell, int64_t node) {
    const int64_t hits = estimate->hits[cell] + estimate->own_hits[chunk * CELLS + cell];
    const int64_t trials = estimate->trials[cell] + estimate->own_trials[chunk * CELLS + cell];
    return ((hits << PROBABILITY_BITS) + estimate->priors[node] * PRIOR_WEIGHT) / (trials + PRIOR_WEIGHT);
}

/* OnlineModel.target: the candidate's probability in 2**-16 (0: leave the row), its cell and fraction. */
static int64_t target(const Estimate *estimate, Py_ssize_t chunk, int64_t length, int64_t weight, int64_t *cell,
                      int64_t *fraction) {
    const int64_t rest = ((int64_t)1 << ROW_TOTAL_BITS) - weight;
    *cell = *fraction = 0;
    if (weight <= 0 || rest <= 0) return 0;
    int64_t stretch = log2_fixed(estimate, weight) - log2_fixed(estimate, rest) + (STRETCH_NODES / 2) * STRETCH_FRACTION;
    if (stretch >= (STRETCH_NODES - 1) * STRETCH_FRACTION) return 0;
    if (stretch < 0) stretch = 0;
    const int64_t node = stretch / STRETCH_FRACTION;
    *fraction = stretch % STRETCH_FRACTION;
    *cell = length_context(length) * STRETCH_NODES + node;
    const int64_t low = node_estimate(estimate, chunk, *cell, node), high = node_estimate(estimate, chunk, *cell + 1, node + 1);
    const int64_t probability = (low * (STRETCH_FRACTION - *fraction) + high * *fraction) / STRETCH_FRACTION;
    const int64_t most = ((int64_t)1 << PROBABILITY_BITS) - 1;
    return probability < 1 ? 1 : probability > most ? most : probability;
}

/* online.mix_row on a float64 row of exact integers: every entry but the candidate times one factor
 * (entries below rest, the factor below 2**60 / rest: products below 2**60), the candidate the rest.
 * The plain-C definition; mix_row_avx2 gives the same integers. */
static void mix_row_plain(double *row, Py_ssize_t V, int64_t candidate, int64_t factor) {
    int64_t sum = 0;
    for (Py_ssize_t v = 0; v < V; v++) {
        if (v == candidate) continue;
        const int64_t value = ((int64_t)row[v] * factor) >> ROW_TOTAL_BITS;
        row[v] = (double)value;
        sum += value;
    }
    row[candidate] = (double)(((int64_t)1 << ROW_TOTAL_BITS) - sum);
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1

/* Four entries at a time. Doubles below 2**52 become int64 through the bits of x + 2**52 and back
 * the same way; the 64-bit product is two 32 x 32-bit ones (entries below 2**31, the factor's high
 * half below 2**28). The candidate's lane is computed too and its value taken back out of the sum,
 * in the same wrapping uint64 arithmetic, before it gets the rest. */
__attribute__((target("avx2"))) static void mix_row_avx2(double *row, Py_ssize_t V, int64_t candidate,
                                                         int64_t factor) {
    const __m256d magic = _mm256_set1_pd(4503599627370496.0); /* 2**52 */
    const __m256i magic_bits = _mm256_castpd_si256(magic);
    const uint64_t factor_low = (uint64_t)factor & 0xFFFFFFFF, factor_high = (uint64_t)factor >> 32;
    const __m256i low = _mm256_set1_epi64x((int64_t)factor_low), high = _mm256_set1_epi64x((int64_t)factor_high);
    const uint64_t chosen = (uint64_t)row[candidate];
    __m256i sums = _mm256_setzero_si256();
    Py_ssize_t v = 0;
    for (; v + 4 <= V; v += 4) {
        const __m256i x = _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(_mm256_loadu_pd(row + v), magic)), magic_bits);
        const __m256i product = _mm256_add_epi64(_mm256_mul_epu32(x, low), _mm256_slli_epi64(_mm256_mul_epu32(x, high), 32));
        const __m256i value = _mm256_srli_epi64(product, ROW_TOTAL_BITS);
        sums = _mm256_add_epi64(sums, value);
        _mm256_storeu_pd(row + v, _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(value, magic_bits)), magic));
    }
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, sums);
    uint64_t sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    if (candidate < v) /* its lane's value, wrapped as the vector wrapped it */
        sum -= (chosen * factor_low + ((chosen * factor_high) << 32)) >> ROW_TOTAL_BITS;
    for (; v < V; v++) {
        if (v == candidate) continue;
        const int64_t value = ((int64_t)row[v] * factor) >> ROW_TOTAL_BITS;
        row[v] = (double)value;
        sum += (uint64_t)value;
    }
    row[candidate] = (double)(((int64_t)1 << ROW_TOTAL_BITS) - (int64_t)sum);
}
#else
#define HAVE_X86 0
#endif

static void mix_row(double *row, Py_ssize_t V, int64_t candidate, int64_t probability, int plain) {
    const int64_t total = (int64_t)1 << ROW_TOTAL_BITS;
    const int64_t rest = total - (int64_t)row[candidate];
    const int64_t factor = ((total - (probability << (ROW_TOTAL_BITS - PROBABILITY_BITS))) << ROW_TOTAL_BITS) / rest;
#if HAVE_X86
    if (!plain && __builtin_cpu_supports("avx2")) {
        mix_row_avx2(row, V, candidate, factor);
        return;
    }
#endif
    mix_row_plain(row, V, candidate, factor);
}

static void learn(const Estimate *estimate, Py_ssize_t chunk, int64_t cell, int64_t fraction, int hit) {
    int64_t *own_hits = estimate->own_hits + chunk * CELLS, *own_trials = estimate->own_trials + chunk * CELLS;
    const int64_t low = STRETCH_FRACTION - fraction, high = fraction;
    own_trials[cell] += low;
    own_trials[cell + 1] += high;
    if (hit) {
        own_hits[cell] += low;
        own_hits[cell + 1] += high;
    }
}

static int take_estimate(Buffers *buffers, Estimate *estimate, PyObject *hits, PyObject *trials, PyObject *own_hits,
                         PyObject *own_trials, PyObject *log2_mantissa, PyObject *priors, Py_ssize_t *chunks) {
    if (!(estimate->own_hits = take(buffers, own_hits, 8, -1, 1, "own_hits"))) return 0;
    *chunks = buffers->views[buffers->count - 1].len / 8 / CELLS;
    return (estimate->own_trials = take(buffers, own_trials, 8, *chunks * CELLS, 1, "own_trials")) &&
           (estimate->hits = take(buffers, hits, 8, CELLS, 0, "hits")) &&
           (estimate->trials = take(buffers, trials, 8, CELLS, 0, "trials")) &&
           (estimate->log2_mantissa = take(buffers, log2_mantissa, 8, 1 << LOG2_MANTISSA_BITS, 0, "log2 table")) &&
           (estimate->priors = take(buffers, priors, 8, STRETCH_NODES, 0, "priors"));
}

/* mix(rows, N, V, chunks, candidates, lengths, symbols, hits, trials, own_hits, own_trials, log2_mantissa,
 * priors, probabilities, cells, fractions, plain): each row in order mixed in place; with symbols (not None),
 * what row i codes is learnt before row i + 1 is mixed (the encoder's rows of one chunk), else the
 * probabilities, cells and fractions are written for `learn` (the decoder's rows of distinct chunks). */
static PyObject *mix(PyObject *self, PyObject *args) {
    PyObject *rows_object, *chunks_object, *candidates_object, *lengths_object, *symbols_object, *hits, *trials,
        *own_hits, *own_trials, *log2_mantissa, *priors, *probabilities_object, *cells_object, *fractions_object;
    Py_ssize_t N, V, units;
    int plain;
    if (!PyArg_ParseTuple(args, "OnnOOOOOOOOOOOOOp", &rows_object, &N, &V, &chunks_object, &candidates_object,
                          &lengths_object, &symbols_object, &hits, &trials, &own_hits, &own_trials, &log2_mantissa,
                          &priors, &probabilities_object, &cells_object, &fractions_object, &plain))
        return NULL;
    Buffers buffers = {.count = 0};
    Estimate estimate;
    double *rows;
    const int64_t *chunks, *candidates, *lengths, *symbols = NULL;
    int64_t *probabilities, *cells, *fractions;
    if (!take_estimate(&buffers, &estimate, hits, trials, own_hits, own_trials, log2_mantissa, priors, &units) ||
        !(rows = take(&buffers, rows_object, 8, N * V, 1, "rows")) ||
        !(chunks = take(&buffers, chunks_object, 8, N, 0, "chunks")) ||
        !(candidates = take(&buffers, candidates_object, 8, N, 0, "candidates")) ||
        !(lengths = take(&buffers, lengths_object, 8, N, 0, "lengths")) ||
        (symbols_object != Py_None && !(symbols = take(&buffers, symbols_object, 8, N, 0, "symbols"))) ||
        !(probabilities = take(&buffers, probabilities_object, 8, N, 1, "probabilities")) ||
        !(cells = take(&buffers, cells_object, 8, N, 1, "cells")) ||
        !(fractions = take(&buffers, fractions_object, 8, N, 1, "fractions"))) {
        release(&buffers);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < N; i++)
        if (chunks[i] < 0 || chunks[i] >= units || candidates[i] >= V) {
            release(&buffers);
            PyErr_SetString(PyExc_ValueError, "a chunk or candidate out of range");
            return NULL;
        }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < N; i++) {
        double *row = rows + i * V;
        const int64_t candidate = candidates[i];
        probabilities[i] = cells[i] = fractions[i] = 0;
        if (candidate < 0) continue;
        probabilities[i] = target(&estimate, chunks[i], lengths[i], (int64_t)row[candidate], &cells[i], &fractions[i]);
        if (!probabilities[i]) continue;
        mix_row(row, V, candidate, probabilities[i], plain);
        if (symbols) learn(&estimate, chunks[i], cells[i], fractions[i], symbols[i] == candidate);
    }
    Py_END_ALLOW_THREADS
    release(&buffers);
    Py_RETURN_NONE;
}

/* learn_rows(chunks, cells, fractions, probabilities, candidates, symbols, own_hits, own_trials): what
 * `mix` left to learn, once the rows' symbols are known (rows of distinct chunks). */
static PyObject *learn_rows(PyObject *self, PyObject *args) {
    PyObject *objects[8];
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &objects[0], &objects[1], &objects[2], &objects[3], &objects[4],
                          &objects[5], &objects[6], &objects[7]))
        return NULL;
    static const char *names[6] = {"chunks", "cells", "fractions", "probabilities", "candidates", "symbols"};
    Buffers buffers = {.count = 0};
    const int64_t *arrays[6];
    Estimate estimate;
    Py_ssize_t N = -1;
    for (int k = 0; k < 6; k++) {
        if (!(arrays[k] = take(&buffers, objects[k], 8, N, 0, names[k]))) {
            release(&buffers);
            return NULL;
        }
        N = buffers.views[k].len / 8;
    }
    if (!(estimate.own_hits = take(&buffers, objects[6], 8, -1, 1, "own_hits")) ||
        !(estimate.own_trials = take(&buffers, objects[7], 8, buffers.views[6].len / 8, 1, "own_trials"))) {
        release(&buffers);
        return NULL;
    }
    const Py_ssize_t units = buffers.views[6].len / 8 / CELLS;
    const int64_t *chunks = arrays[0], *cells = arrays[1], *fractions = arrays[2], *probabilities = arrays[3];
    for (Py_ssize_t i = 0; i < N; i++)
        if (probabilities[i] && (chunks[i] < 0 || chunks[i] >= units || cells[i] < 0 || cells[i] + 1 >= CELLS ||
                                 fractions[i] < 0 || fractions[i] > STRETCH_FRACTION)) {
            release(&buffers);
            PyErr_SetString(PyExc_ValueError, "a chunk or cell out of range");
            return NULL;
        }
    for (Py_ssize_t i = 0; i < N; i++)
        if (probabilities[i]) learn(&estimate, chunks[i], cells[i], fractions[i], arrays[5][i] == arrays[4][i]);
    release(&buffers);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------ */
/* The match model                                                                             */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    int32_t *tokens;  /* the history, −1 where not yet observed */
    Py_ssize_t size;  /* its positions in use */
    int32_t *tables;  /* [orders][1 << HASH_BITS]: context hash -> the position that followed */
    int orders;
    int64_t order[MAX_ORDERS];
    const int64_t *bases; /* [chunks]: where each chunk of the unit starts in the history */
    int64_t *pointer, *length; /* [chunks]: each chunk's candidate position (−1: none) and match length */
    Py_ssize_t chunks;
} Match;

/* The table slot of each order for the tokens before position `step` of `chunk` (−1 where the chunk
 * holds fewer): the key of n tokens is their ids in 20-bit fields, the nearest lowest, modulo 2**64
 * (online.py's Python integers are masked to 64 bits after the product: the same slot). */
static void slots(const Match *match, Py_ssize_t chunk, int64_t step, int64_t *out) {
    const int32_t *tokens = match->tokens;
    const int64_t end = match->bases[chunk] + step;
    uint64_t keys[MAX_ORDERS + 1], key = 0;
    int64_t longest = 0;
    for (int o = 0; o < match->orders; o++) longest = match->order[o] > longest ? match->order[o] : longest;
    for (int64_t n = 1; n <= longest && n <= step; n++) {
        key |= (uint64_t)(uint32_t)tokens[end - n] << (TOKEN_BITS * (n - 1)); /* n <= 4: shifts below 64 */
        keys[n] = key;
    }
    for (int o = 0; o < match->orders; o++)
        out[o] = match->order[o] <= step ? (int64_t)((keys[match->order[o]] * HASH_MULTIPLIER) >> (64 - HASH_BITS)) : -1;
}

/* OnlineModel.predict: the candidate token (−1: none) for position `step` of `chunk`, its length in *length. */
static int64_t predict_one(const Match *match, Py_ssize_t chunk, int64_t step, int64_t *length) {
    const int64_t pointer = match->pointer[chunk];
    if (pointer >= 0) {
        *length = match->length[chunk];
        return match->tokens[pointer];
    }
    const int32_t *tokens = match->tokens;
    const int64_t here = match->bases[chunk] + step;
    int64_t slot[MAX_ORDERS];
    slots(match, chunk, step, slot);
    for (int o = 0; o < match->orders; o++) {
        if (slot[o] < 0) continue;
        const int64_t found = match->tables[((int64_t)o << HASH_BITS) + slot[o]];
        if (found < 0) continue;
        int64_t run = 0;
        while (run < MATCH_CHECK && run < step && run < found && tokens[found - 1 - run] == tokens[here - 1 - run]) run++;
        if (run >= match->order[o]) { /* else another context in the same slot */
            match->pointer[chunk] = found;
            match->length[chunk] = *length = run;
            return tokens[found];
        }
    }
    *length = 0;
    return -1;
}

/* OnlineModel.observe: store the token, run the match on, remember the context; the table writes'
 * (index, old value) go to undo when it is not NULL. Returns the writes. */
static Py_ssize_t observe_one(Match *match, Py_ssize_t chunk, int64_t step, int32_t token, int64_t *undo) {
    const int64_t here = match->bases[chunk] + step;
    int32_t *tokens = match->tokens;
    tokens[here] = token;
    const int64_t pointer = match->pointer[chunk];
    if (pointer >= 0) {
        const int64_t following = pointer + 1;
        if (tokens[pointer] == token && following < match->size && tokens[following] != -1) {
            match->pointer[chunk] = following;
            match->length[chunk] += 1;
        } else {
            match->pointer[chunk] = -1;
            match->length[chunk] = 0;
        }
    }
    if (here > POSITION_LIMIT) return 0; /* the tables hold int32 positions: later contexts are not remembered */
    int64_t slot[MAX_ORDERS];
    slots(match, chunk, step, slot);
    Py_ssize_t writes = 0;
    for (int o = 0; o < match->orders; o++) {
        if (slot[o] < 0) continue;
        const int64_t index = ((int64_t)o << HASH_BITS) + slot[o];
        if (undo) {
            undo[2 * writes] = index;
            undo[2 * writes + 1] = match->tables[index];
        }
        writes++;
        match->tables[index] = (int32_t)here;
    }
    return writes;
}

/* The history, tables, orders and the unit's bases, pointers and lengths into a Match. */
static int take_match(Buffers *buffers, Match *match, PyObject *tokens, Py_ssize_t size, PyObject *tables,
                      PyObject *orders, PyObject *bases, PyObject *pointer, PyObject *length) {
    const int64_t *order;
    if (!(match->tokens = take(buffers, tokens, 4, -1, 1, "tokens")) ||
        !(order = take(buffers, orders, 8, -1, 0, "orders")))
        return 0;
    match->orders = (int)(buffers->views[buffers->count - 1].len / 8);
    if (size < 0 || size > buffers->views[0].len / 4 || match->orders < 1 || match->orders > MAX_ORDERS) {
        PyErr_SetString(PyExc_ValueError, "bad history size or orders");
        return 0;
    }
    match->size = size;
    for (int o = 0; o < match->orders; o++) {
        if (order[o] < 1 || order[o] > 4) {
            PyErr_SetString(PyExc_ValueError, "match orders lie in 1..4");
            return 0;
        }
        match->order[o] = order[o];
    }
    if (!(match->tables = take(buffers, tables, 4, (Py_ssize_t)match->orders << HASH_BITS, 1, "tables")) ||
        !(match->bases = take(buffers, bases, 8, -1, 0, "bases")))
        return 0;
    match->chunks = buffers->views[buffers->count - 1].len / 8;
    return (match->pointer = take(buffers, pointer, 8, match->chunks, 1, "pointer")) &&
           (match->length = take(buffers, length, 8, match->chunks, 1, "length"));
}

/* Whether `chunks` (N of them) and `step` lie within the unit and its history. */
static int check_chunks(const Match *match, const int64_t *chunks, Py_ssize_t N, int64_t step) {
    for (Py_ssize_t i = 0; i < N; i++)
        if (chunks[i] < 0 || chunks[i] >= match->chunks || step < 0 || match->bases[chunks[i]] < 0 ||
            match->bases[chunks[i]] + step >= match->size) {
            PyErr_SetString(PyExc_ValueError, "a chunk or step outside the unit");
            return 0;
        }
    return 1;
}

/* predict(tokens, size, tables, orders, bases, pointer, length, chunks, step, candidates, lengths):
 * predict_one for each of `chunks` at `step`, in order. */
static PyObject *predict(PyObject *self, PyObject *args) {
    PyObject *tokens, *tables, *orders, *bases, *pointer, *length, *chunks_object, *candidates_object, *lengths_object;
    Py_ssize_t size;
    long long step;
    if (!PyArg_ParseTuple(args, "OnOOOOOOLOO", &tokens, &size, &tables, &orders, &bases, &pointer, &length,
                          &chunks_object, &step, &candidates_object, &lengths_object))
        return NULL;
    Buffers buffers = {.count = 0};
    Match match;
    const int64_t *chunks;
    int64_t *candidates, *lengths;
    Py_ssize_t N = 0;
    if (!take_match(&buffers, &match, tokens, size, tables, orders, bases, pointer, length) ||
        !(chunks = take(&buffers, chunks_object, 8, -1, 0, "chunks")) ||
        (N = buffers.views[buffers.count - 1].len / 8, !(candidates = take(&buffers, candidates_object, 8, N, 1,
                                                                             "candidates"))) ||
        !(lengths = take(&buffers, lengths_object, 8, N, 1, "lengths")) || !check_chunks(&match, chunks, N, step)) {
        release(&buffers);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < N; i++) candidates[i] = predict_one(&match, chunks[i], step, &lengths[i]);
    release(&buffers);
    Py_RETURN_NONE;
}

/* observe(tokens, size, tables, orders, bases, pointer, length, chunks, step, symbols, undo): observe_one
 * for each of `chunks` at `step`, in order; undo (None, or room for 2 * orders * N int64) receives the
 * table writes' (index, old value) pairs. Returns how many writes there were. */
static PyObject *observe(PyObject *self, PyObject *args) {
    PyObject *tokens, *tables, *orders, *bases, *pointer, *length, *chunks_object, *symbols_object, *undo_object;
    Py_ssize_t size;
    long long step;
    if (!PyArg_ParseTuple(args, "OnOOOOOOLOO", &tokens, &size, &tables, &orders, &bases, &pointer, &length,
                          &chunks_object, &step, &symbols_object, &undo_object))
        return NULL;
    Buffers buffers = {.count = 0};
    Match match;
    const int64_t *chunks, *symbols;
    int64_t *undo = NULL;
    Py_ssize_t N = 0;
    if (!take_match(&buffers, &match, tokens, size, tables, orders, bases, pointer, length) ||
        !(chunks = take(&buffers, chunks_object, 8, -1, 0, "chunks")) ||
        (N = buffers.views[buffers.count - 1].len / 8, !(symbols = take(&buffers, symbols_object, 8, N, 0, "symbols"))) ||
        (undo_object != Py_None && !(undo = take(&buffers, undo_object, 8, 2 * match.orders * N, 1, "undo"))) ||
        !check_chunks(&match, chunks, N, step)) {
        release(&buffers);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < N; i++)
        if (symbols[i] < 0 || symbols[i] > INT32_MAX) {
            release(&buffers);
            PyErr_SetString(PyExc_ValueError, "a token id outside int32");
            return NULL;
        }
    Py_ssize_t writes = 0;
    for (Py_ssize_t i = 0; i < N; i++)
        writes += observe_one(&match, chunks[i], step, (int32_t)symbols[i], undo ? undo + 2 * writes : NULL);
    release(&buffers);
    return PyLong_FromSsize_t(writes);
}

static PyMethodDef methods[] = {
    {"mix", mix, METH_VARARGS,
     "mix(rows, N, V, chunks, candidates, lengths, symbols, hits, trials, own_hits, own_trials, log2_mantissa, "
     "priors, probabilities, cells, fractions, plain): the online model's rows, mixed in place (plain: without "
     "AVX2)"},
    {"predict", predict, METH_VARARGS,
     "predict(tokens, size, tables, orders, bases, pointer, length, chunks, step, candidates, lengths)"},
    {"observe", observe, METH_VARARGS,
     "observe(tokens, size, tables, orders, bases, pointer, length, chunks, step, symbols, undo): table writes"},
    {"learn_rows", learn_rows, METH_VARARGS,
     "learn_rows(chunks, cells, fractions, probabilities, candidates, symbols, own_hits, own_trials)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_online", "The online model's per-token work.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__online(void) { return PyModule_Create(&module); }
