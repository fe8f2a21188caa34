/* One fused pass of a zeroth-order step over bf16 weights (see zotune/kernels/__init__.py).
 *
 * For every chunk c of the pass, element i of the chunk goes through, in registers:
 *
 *   x = θ[i]
 *   for each leg l:   x = bf16(fma(s_l, T[(o_l + i) mod N] · b[i], x))      round to nearest even
 *   if update:        w = κ · x
 *                     for each move m: w = fma(a_m, T[(p_m + i) mod N] · b[i], w)   (fp32)
 *                     x = SR(w) with the 16-bit integer R[(r + i) mod M]
 *   θ[i] = x
 *
 * T is the direction sampler's bf16 noise table (N values), R the stochastic-rounding table
 * (M int32 values in [0, 2**16)), s_l / a_m the signed scales of the chunk. b[i] is 1, or bit
 * i mod 8 of byte ⌊i/8⌋ of the chunk's packed mask where it has one (Sparse-MeZO's m ⊙ z):
 * the product T·b is exact (z or a signed zero, as torch's z * m), and fma(s, ±0, x) = x for
 * every x but −0, so a masked-out value stays put as on the torch path. Every operation
 * is an IEEE fp32 operation with one defined rounding (fma is exact before its rounding, the
 * bf16 rounding is integer arithmetic on the pattern), so the result does not depend on the
 * CPU, the compiler's vectorisation or the thread count.
 *
 * SR(w) for bf16: add the 16-bit integer to w's fp32 pattern and clear the low 16 bits; the
 * carry into the kept bits happens with probability (low bits) / 2**16 — exact stochastic
 * rounding (zotune/stochastic_rounding.py states the edge cases).
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#define BLOCK 512

/* The update of a pass (update = 0: none): θ = SR(κ·x + Σ moves), chunk c's bits read from
 * R[(bits_offsets[c] + i) mod M] for its element i. */
typedef struct {
    int update;
    float keep;
    const int32_t *bits;
    int64_t bits_mask;
    const int64_t *bits_offsets; /* [nchunks] */
} update_t;

typedef struct {
    int64_t nchunks;
    uint16_t **params;
    const int64_t *lens;
    const uint16_t *table;
    int64_t table_mask;
    int64_t nlegs;
    const int64_t *leg_offsets; /* [nchunks * nlegs] */
    const float *leg_scales;
    int64_t nmoves;
    const int64_t *move_offsets; /* [nchunks * nmoves] */
    const float *move_scales;
    update_t up;
    const uint8_t *const *masks; /* [nchunks] packed bits, or NULL (no chunk masked) */
} pass_t;

static inline uint32_t as_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* fp32 -> nearest bf16 (ties to even), returned widened; NaN stays a quiet NaN. */
static inline float round_bf16(float f) {
    uint32_t u = as_bits(f);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    uint32_t nan = (u | 0x00400000u) & 0xFFFF0000u;
    return as_float((u & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded);
}

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Distance from position ``pos`` (in a circular table of mask + 1 values) to its end. */
static inline int64_t to_end(int64_t pos, int64_t mask) { return mask + 1 - (pos & mask); }

/* The longest span of at most n elements from element e of chunk c whose bits do not wrap. */
static inline int64_t bits_span(const update_t *u, int64_t c, int64_t e, int64_t n) {
    return u->update ? min64(n, to_end(u->bits_offsets[c] + e, u->bits_mask)) : n;
}

/* x[i] = SR(w[i]) for the m elements from element e of chunk c. */
static inline void round_block(const update_t *u, int64_t c, int64_t e, int64_t m,
                               const float *w, float *x) {
    const int32_t *r = u->bits + ((u->bits_offsets[c] + e) & u->bits_mask);
    for (int64_t i = 0; i < m; i++)
        x[i] = as_float((as_bits(w[i]) + (uint32_t)r[i]) & 0xFFFF0000u);
}

static inline float bit_at(const uint8_t *packed, int64_t e) {
    return (float)((packed[e >> 3] >> (e & 7)) & 1u);
}

/* kept[i] = bit e + i of the packed mask, as 0/1, for i < m: whole bytes eight at a time. */
static void unpack_bits(const uint8_t *packed, int64_t e, int64_t m, float *kept) {
    int64_t i = 0;
    for (; i < m && ((e + i) & 7); i++) kept[i] = bit_at(packed, e + i);
    for (; i + 8 <= m; i += 8) {
        uint32_t byte = packed[(e + i) >> 3];
        for (int k = 0; k < 8; k++) kept[i + k] = (float)((byte >> k) & 1u);
    }
    for (; i < m; i++) kept[i] = bit_at(packed, e + i);
}

/* The span [start, start + n) of one chunk, within which no table read wraps. */
static void run_span(const pass_t *p, int64_t c, int64_t start, int64_t n) {
    uint16_t *theta = p->params[c] + start;
    const uint8_t *packed = p->masks ? p->masks[c] : NULL;
    float x[BLOCK], w[BLOCK], kept[BLOCK];
    for (int64_t b = 0; b < n; b += BLOCK) {
        int64_t m = min64(BLOCK, n - b);
        for (int64_t i = 0; i < m; i++) x[i] = as_float((uint32_t)theta[b + i] << 16);
        if (packed) unpack_bits(packed, start + b, m, kept);
        for (int64_t l = 0; l < p->nlegs; l++) {
            int64_t o = (p->leg_offsets[c * p->nlegs + l] + start + b) & p->table_mask;
            const uint16_t *z = p->table + o;
            float s = p->leg_scales[c * p->nlegs + l];
            if (packed)
                for (int64_t i = 0; i < m; i++)
                    x[i] = round_bf16(fmaf(s, as_float((uint32_t)z[i] << 16) * kept[i], x[i]));
            else
                for (int64_t i = 0; i < m; i++)
                    x[i] = round_bf16(fmaf(s, as_float((uint32_t)z[i] << 16), x[i]));
        }
        if (p->up.update) {
            for (int64_t i = 0; i < m; i++) w[i] = p->up.keep * x[i];
            for (int64_t k = 0; k < p->nmoves; k++) {
                int64_t o = (p->move_offsets[c * p->nmoves + k] + start + b) & p->table_mask;
                const uint16_t *z = p->table + o;
                float a = p->move_scales[c * p->nmoves + k];
                if (packed)
                    for (int64_t i = 0; i < m; i++)
                        w[i] = fmaf(a, as_float((uint32_t)z[i] << 16) * kept[i], w[i]);
                else
                    for (int64_t i = 0; i < m; i++)
                        w[i] = fmaf(a, as_float((uint32_t)z[i] << 16), w[i]);
            }
            round_block(&p->up, c, start + b, m, w, x);
        }
        for (int64_t i = 0; i < m; i++) theta[b + i] = (uint16_t)(as_bits(x[i]) >> 16);
    }
}

static void run_chunk(const void *pass, int64_t c) {
    const pass_t *p = (const pass_t *)pass;
    int64_t len = p->lens[c];
    int64_t start = 0;
    while (start < len) {
        /* The span ends where the chunk ends, a block ends, or any table read wraps. */
        int64_t n = len - start;
        for (int64_t l = 0; l < p->nlegs; l++)
            n = min64(n, to_end(p->leg_offsets[c * p->nlegs + l] + start, p->table_mask));
        if (p->up.update)
            for (int64_t k = 0; k < p->nmoves; k++)
                n = min64(n, to_end(p->move_offsets[c * p->nmoves + k] + start, p->table_mask));
        n = bits_span(&p->up, c, start, n);
        run_span(p, c, start, n);
        start += n;
    }
}

/* The chunks of a pass, taken one at a time by the threads that share them. */
typedef struct {
    const void *pass;
    void (*run)(const void *pass, int64_t c);
    int64_t nchunks;
    int64_t next;
} queue_t;

static void *take_chunks(void *arg) {
    queue_t *q = (queue_t *)arg;
    for (;;) {
        int64_t c = __atomic_fetch_add(&q->next, 1, __ATOMIC_RELAXED);
        if (c >= q->nchunks) return NULL;
        q->run(q->pass, c);
    }
}

/* run(pass, c) for every chunk c, on this thread and up to nthreads − 1 others (at most one
 * per chunk). */
static void share_chunks(void (*run)(const void *, int64_t), const void *pass, int64_t nchunks,
                         int nthreads) {
    queue_t q = {pass, run, nchunks, 0};
    if (nthreads > 64) nthreads = 64;
    if (nthreads > nchunks) nthreads = (int)nchunks;
    pthread_t threads[64];
    int started = 0;
    for (int t = 1; t < nthreads; t++) {
        if (pthread_create(&threads[started], NULL, take_chunks, &q) != 0) break;
        started++;
    }
    take_chunks(&q);
    for (int t = 0; t < started; t++) pthread_join(threads[t], NULL);
}

int zotune_bf16_pass(int64_t nchunks, uint16_t **params, const int64_t *lens,
                     const uint16_t *table, int64_t table_mask, int64_t nlegs,
                     const int64_t *leg_offsets, const float *leg_scales, int64_t nmoves,
                     const int64_t *move_offsets, const float *move_scales, int update,
                     float keep, const int32_t *bits, int64_t bits_mask,
                     const int64_t *bits_offsets, const uint8_t *const *masks,
                     int nthreads) {
    pass_t p = {nchunks, params, lens, table, table_mask, nlegs, leg_offsets, leg_scales,
                nmoves, move_offsets, move_scales,
                {update, keep, bits, bits_mask, bits_offsets}, masks};
    share_chunks(run_chunk, &p, nchunks, nthreads);
    return 0;
}

/* Threads for an element-wise sweep of n values: one below 2**16 values, at most 64. */
static int range_threads(int64_t n, int nthreads) {
    if (nthreads > 64) nthreads = 64;
    return nthreads < 1 || n < (1 << 16) ? 1 : nthreads;
}

/* fn(part) for each of the count parts (each size bytes), the first on this thread and the
 * others on their own (or on this one where a thread cannot start). */
static void run_parts(void *parts, size_t size, int count, void *(*fn)(void *)) {
    pthread_t threads[64];
    int started = 0;
    for (int t = 1; t < count; t++) {
        void *part = (char *)parts + (size_t)t * size;
        if (pthread_create(&threads[started], NULL, fn, part) != 0) {
            fn(part);
            continue;
        }
        started++;
    }
    fn(parts);
    for (int t = 0; t < started; t++) pthread_join(threads[t], NULL);
}

/* θ[i] = SR(fma(a, u[i], θ[i])) for an fp32 update u (a stateful rule's), bits R[(r + i) mod M]. */
typedef struct {
    uint16_t *theta;
    const float *u;
    int64_t n;
    float a;
    const int32_t *bits;
    int64_t bits_mask;
    int64_t bits_offset;
    int64_t begin, end;
} rounded_t;

static void *add_rounded_range(void *arg) {
    rounded_t *r = (rounded_t *)arg;
    int64_t i = r->begin;
    while (i < r->end) {
        int64_t pos = (r->bits_offset + i) & r->bits_mask;
        int64_t n = min64(r->end - i, r->bits_mask + 1 - pos);
        const int32_t *bits = r->bits + pos;
        uint16_t *theta = r->theta + i;
        const float *u = r->u + i;
        for (int64_t j = 0; j < n; j++) {
            float w = fmaf(r->a, u[j], as_float((uint32_t)theta[j] << 16));
            theta[j] = (uint16_t)((as_bits(w) + (uint32_t)bits[j]) >> 16);
        }
        i += n;
    }
    return NULL;
}

int zotune_bf16_add_rounded(uint16_t *theta, const float *u, int64_t n, float a,
                            const int32_t *bits, int64_t bits_mask, int64_t bits_offset,
                            int nthreads) {
    nthreads = range_threads(n, nthreads);
    rounded_t parts[64];
    int64_t step = (n + nthreads - 1) / nthreads;
    for (int t = 0; t < nthreads; t++) {
        rounded_t part = {theta, u, n, a, bits, bits_mask, bits_offset, t * step,
                          min64(n, (t + 1) * step)};
        parts[t] = part;
    }
    run_parts(parts, sizeof(rounded_t), nthreads, add_rounded_range);
    return 0;
}

/* Adam's update of a bf16 chunk from an fp32 gradient g, its fp32 moments updated in place,
 * in one sweep (the torch ops make ten), with the operations and order of
 * zotune.optim.rules.Adam and DecoupledWeightDecay as torch computes them:
 *
 *   m = lerp(m, g, w1)                            m + w1·(g − m), or g − (g − m)·(1 − w1) for w1 ≥ ½
 *   v = v·β₂ + (w2·g)·g                           w2 = 1 − β₂ (both rounded from double, as torch
 *                                                 rounds its Python scalars)
 *   u = (m / b1) / (√v / b2 + δ) + λ·x            x = θ widened
 *   θ = SR(fma(−lr, u, x)) with the 16-bit integer R[(r + i) mod M]
 */
typedef struct {
    uint16_t *theta;
    const float *g;
    float *m, *v;
    float w1, beta2, w2, bias1, bias2, eps, decay, a;
    const int32_t *bits;
    int64_t bits_mask;
    int64_t bits_offset;
    int64_t begin, end;
} adam_t;

static void *adam_range(void *arg) {
    adam_t *r = (adam_t *)arg;
    int64_t i = r->begin;
    int low = r->w1 < 0.5f;
    float w1c = 1.0f - r->w1;
    while (i < r->end) {
        int64_t pos = (r->bits_offset + i) & r->bits_mask;
        int64_t n = min64(r->end - i, r->bits_mask + 1 - pos);
        const int32_t *bits = r->bits + pos;
        for (int64_t j = i; j < i + n; j++) {
            float g = r->g[j], m = r->m[j];
            m = low ? m + r->w1 * (g - m) : g - (g - m) * w1c;
            float v = r->v[j] * r->beta2 + (r->w2 * g) * g;
            r->m[j] = m;
            r->v[j] = v;
            float x = as_float((uint32_t)r->theta[j] << 16);
            float u = (m / r->bias1) / (sqrtf(v) / r->bias2 + r->eps);
            if (r->decay != 0.0f) u = u + r->decay * x;
            float w = fmaf(r->a, u, x);
            r->theta[j] = (uint16_t)((as_bits(w) + (uint32_t)bits[j - i]) >> 16);
        }
        i += n;
    }
    return NULL;
}

int zotune_bf16_adam_rounded(uint16_t *theta, const float *g, float *m, float *v, int64_t n,
                             float lr, float w1, float beta2, float w2, float bias1, float bias2,
                             float eps, float decay, const int32_t *bits, int64_t bits_mask,
                             int64_t bits_offset, int nthreads) {
    nthreads = range_threads(n, nthreads);
    adam_t parts[64];
    int64_t step = (n + nthreads - 1) / nthreads;
    for (int t = 0; t < nthreads; t++) {
        adam_t part = {theta, g, m, v, w1, beta2, w2, bias1, bias2, eps, decay, -lr,
                       bits, bits_mask, bits_offset, t * step, min64(n, (t + 1) * step)};
        parts[t] = part;
    }
    run_parts(parts, sizeof(adam_t), nthreads, adam_range);
    return 0;
}

/* One fused pass over bf16 matrices whose directions are low-rank products (LOZO's U Vᵀ,
 * SubZero's U Σ Vᵀ), computed in registers instead of as an fp32 block per chunk. Term t of a
 * chunk is a rows × r factor L_t and an r × cols factor R_t (both row-major, so Lₜ Rₜ is the
 * direction) and a scale σ_t; for element e = i·cols + j of the matrix:
 *
 *   z_t = bf16(σ_t · fma(L[i,r−1], R[r−1,j], … fma(L[i,1], R[1,j], L[i,0]·R[0,j])))
 *
 * (the fp32 product block rounded to bf16, as the torch path's draw stores it), then the
 * legs and the update of zotune_bf16_pass with z_t in place of the table slices. The
 * product's summation order is fixed here, where a BLAS picks its own: the two paths can
 * differ in z's last bit in rare elements. */
typedef struct {
    int64_t nchunks;
    uint16_t **params;
    const int64_t *lens, *starts, *cols, *ranks;
    int64_t nterms;
    const float *const *lefts, *const *rights; /* [nchunks * nterms] */
    const float *sigmas;                      /* [nchunks * nterms] */
    int64_t nlegs;
    const int64_t *leg_terms;
    const float *leg_scales;
    int64_t nmoves;
    const int64_t *move_terms;
    const float *move_scales;
    update_t up;
} factored_t;

#define MAX_TERMS 8

/* Elements [e, e + m) of chunk c, all in one row of the matrix, m ≤ BLOCK. */
static void run_factored_span(const factored_t *p, int64_t c, int64_t e, int64_t m) {
    uint16_t *theta = p->params[c] + e;
    int64_t cols = p->cols[c], rank = p->ranks[c];
    int64_t at = p->starts[c] + e, row = at / cols, col = at % cols;
    float x[BLOCK], w[BLOCK], acc[BLOCK], z[MAX_TERMS][BLOCK];
    for (int64_t t = 0; t < p->nterms; t++) {
        const float *l = p->lefts[c * p->nterms + t] + row * rank;
        const float *r = p->rights[c * p->nterms + t] + col;
        float sigma = p->sigmas[c * p->nterms + t];
        for (int64_t i = 0; i < m; i++) acc[i] = l[0] * r[i];
        for (int64_t k = 1; k < rank; k++)
            for (int64_t i = 0; i < m; i++) acc[i] = fmaf(l[k], r[k * cols + i], acc[i]);
        for (int64_t i = 0; i < m; i++) z[t][i] = round_bf16(sigma * acc[i]);
    }
    for (int64_t i = 0; i < m; i++) x[i] = as_float((uint32_t)theta[i] << 16);
    for (int64_t l = 0; l < p->nlegs; l++) {
        const float *zt = z[p->leg_terms[l]];
        float s = p->leg_scales[l];
        for (int64_t i = 0; i < m; i++) x[i] = round_bf16(fmaf(s, zt[i], x[i]));
    }
    if (p->up.update) {
        for (int64_t i = 0; i < m; i++) w[i] = p->up.keep * x[i];
        for (int64_t k = 0; k < p->nmoves; k++) {
            const float *zt = z[p->move_terms[k]];
            float a = p->move_scales[k];
            for (int64_t i = 0; i < m; i++) w[i] = fmaf(a, zt[i], w[i]);
        }
        round_block(&p->up, c, e, m, w, x);
    }
    for (int64_t i = 0; i < m; i++) theta[i] = (uint16_t)(as_bits(x[i]) >> 16);
}

static void run_factored_chunk(const void *pass, int64_t c) {
    const factored_t *p = (const factored_t *)pass;
    int64_t len = p->lens[c], cols = p->cols[c], e = 0;
    while (e < len) {
        /* A span ends where the chunk, a block or a row ends, or the bits wrap. */
        int64_t n = min64(min64(len - e, BLOCK), cols - (p->starts[c] + e) % cols);
        n = bits_span(&p->up, c, e, n);
        run_factored_span(p, c, e, n);
        e += n;
    }
}

int zotune_bf16_factored_pass(int64_t nchunks, uint16_t **params, const int64_t *lens,
                              const int64_t *starts, const int64_t *cols, const int64_t *ranks,
                              int64_t nterms, const float *const *lefts,
                              const float *const *rights, const float *sigmas, int64_t nlegs,
                              const int64_t *leg_terms, const float *leg_scales, int64_t nmoves,
                              const int64_t *move_terms, const float *move_scales, int update,
                              float keep, const int32_t *bits, int64_t bits_mask,
                              const int64_t *bits_offsets, int nthreads) {
    if (nterms > MAX_TERMS) return -1;
    factored_t p = {nchunks, params, lens, starts, cols, ranks, nterms, lefts, rights, sigmas,
                    nlegs, leg_terms, leg_scales, nmoves, move_terms, move_scales,
                    {update, keep, bits, bits_mask, bits_offsets}};
    share_chunks(run_factored_chunk, &p, nchunks, nthreads);
    return 0;
}

/* HiZOO's passes over bf16 weights (zotune/optim/hessian.py) with the fp32 diagonal Hessian
 * estimate H, in one sweep per pass. Chunk c's direction is z = σ_c T[(o_c + i) mod N]; with
 * r = 1/sqrt(H[i]) (fp32 sqrt, then an fp32 division), element i goes through
 *
 *   d = bf16(r · z)                                  the direction the legs move along
 *   for each leg l:   x = bf16(fma(s_l, d, x))       round to nearest even
 *   if update:        H[i] = H[i] · ((z · z) · a + b)   a = α·curvature, b = 1 − α
 *                     g = bf16(((1/sqrt(H[i])) · z) · slope)
 *                     u = g, or bf16(fma(λ, x, g)) with decoupled weight decay λ
 *                     x = SR(fma(−lr, u, x))
 *   θ[i] = x
 *
 * the operations and order of the torch ops the kernel replaces (zotune.optim.hessian; an SGD
 * rule has no state, so it computes in the weights' dtype: g and u are bf16), one IEEE fp32
 * rounding each; σ_c = ±1 is folded into the chunk's leg scales and slope (every step above
 * is odd or even in z, and each rounding is symmetric). */
typedef struct {
    int64_t nchunks;
    uint16_t **params;
    float **hessians;
    const int64_t *lens;
    const uint16_t *table;
    int64_t table_mask;
    const int64_t *offsets; /* [nchunks] */
    int64_t nlegs;
    const float *leg_scales; /* [nchunks * nlegs], signed */
    const float *slopes;     /* [nchunks], signed */
    float a, b, decay, lr;
    update_t up;
} hessian_t;

static void run_hessian_span(const hessian_t *p, int64_t c, int64_t start, int64_t m) {
    /* One loop per operation, so that each vectorises (an element-wise loop with the legs
     * inside ran scalar: five times slower). */
    uint16_t *theta = p->params[c] + start;
    float *h = p->hessians[c] + start;
    const uint16_t *t = p->table + ((p->offsets[c] + start) & p->table_mask);
    const float *scales = p->leg_scales + c * p->nlegs;
    float slope = p->slopes[c], x[BLOCK], w[BLOCK], z[BLOCK], d[BLOCK];
    for (int64_t i = 0; i < m; i++) {
        z[i] = as_float((uint32_t)t[i] << 16);
        d[i] = round_bf16((1.0f / sqrtf(h[i])) * z[i]);
        x[i] = as_float((uint32_t)theta[i] << 16);
    }
    for (int64_t l = 0; l < p->nlegs; l++)
        for (int64_t i = 0; i < m; i++) x[i] = round_bf16(fmaf(scales[l], d[i], x[i]));
    if (p->up.update) {
        for (int64_t i = 0; i < m; i++) {
            h[i] = h[i] * ((z[i] * z[i]) * p->a + p->b);
            d[i] = round_bf16(((1.0f / sqrtf(h[i])) * z[i]) * slope); /* g */
        }
        if (p->decay != 0.0f)
            for (int64_t i = 0; i < m; i++) d[i] = round_bf16(fmaf(p->decay, x[i], d[i]));
        for (int64_t i = 0; i < m; i++) w[i] = fmaf(-p->lr, d[i], x[i]);
        round_block(&p->up, c, start, m, w, x);
    }
    for (int64_t i = 0; i < m; i++) theta[i] = (uint16_t)(as_bits(x[i]) >> 16);
}

static void run_hessian_chunk(const void *pass, int64_t c) {
    const hessian_t *p = (const hessian_t *)pass;
    int64_t len = p->lens[c], start = 0;
    while (start < len) {
        int64_t n = min64(len - start, BLOCK);
        n = min64(n, to_end(p->offsets[c] + start, p->table_mask));
        n = bits_span(&p->up, c, start, n);
        run_hessian_span(p, c, start, n);
        start += n;
    }
}

int zotune_bf16_hessian_pass(int64_t nchunks, uint16_t **params, float **hessians,
                             const int64_t *lens, const uint16_t *table, int64_t table_mask,
                             const int64_t *offsets, int64_t nlegs, const float *leg_scales,
                             const float *slopes, int update, float a, float b, float decay,
                             float lr, const int32_t *bits, int64_t bits_mask,
                             const int64_t *bits_offsets, int nthreads) {
    hessian_t p = {nchunks, params, hessians, lens, table, table_mask, offsets, nlegs,
                   leg_scales, slopes, a, b, decay, lr,
                   {update, 1.0f, bits, bits_mask, bits_offsets}};
    share_chunks(run_hessian_chunk, &p, nchunks, nthreads);
    return 0;
}

/* Sparse-MeZO's mask of one chunk, bit-packed (zotune/enhance/sparse.py, pack_bits' layout):
 * bit k of byte j is |θ[8j + k]| ≤ h, for the n bf16 values of θ (the last byte zero-padded).
 * h is a bf16 value, so the fp32 comparison is torch's bf16 one (NaN compares false). */
int zotune_bf16_pack_small(const uint16_t *theta, int64_t n, float h, uint8_t *out) {
    int64_t whole = n / 8;
    for (int64_t j = 0; j < whole; j++) {
        const uint16_t *v = theta + 8 * j;
        uint32_t byte = 0;
        for (int k = 0; k < 8; k++)
            byte |= (uint32_t)(as_float((uint32_t)(v[k] & 0x7FFFu) << 16) <= h) << k;
        out[j] = (uint8_t)byte;
    }
    if (n > 8 * whole) {
        uint32_t byte = 0;
        for (int64_t k = 0; k < n - 8 * whole; k++)
            byte |= (uint32_t)(as_float((uint32_t)(theta[8 * whole + k] & 0x7FFFu) << 16) <= h)
                    << k;
        out[whole] = (uint8_t)byte;
    }
    return 0;
}
