/* Fused CPU kernels of the torch backend's "fused" path: the amplitude spectrum's per-bin work
 * between the transforms, float32, in one pass forward and one backward (two passes over the half
 * spectrum instead of about 25 torch ops).
 *
 * Forward: the self-mirrored columns of S = F(base) and D = F(x - y) are made exactly Hermitian
 * (_spectra.make_hermitian), then one pass forms X, Y from S and D, u = |X|, v = |Y|,
 * d = Re(D conj(X + Y)) / (u + v), stores X (in place of S), v, d and sums each band's u, v, d
 * and their products about a shift (`band_stats`: as exact as centring first, without a second
 * pass). Backward: each bin's gradient X g / |X|, g = dL/du, centring v and d about the
 * forward's band means there.
 * u is not stored: the backward takes |X| again (the same operations, the same value), which
 * costs less than writing and reading it (saved memory is freshly mapped on every call).
 * The formulas are torch_backend._bin_values' and _spectral_backward's.
 *
 * Machine independence (SPEC v3): built with -ffp-contract=off and no -ffast-math, every float
 * operation is the one written here, in this order, on any instruction set. Sums run in double, in
 * LANES lanes: bin k of a row always goes to lane k % LANES of its band, in the order of k, and the
 * lanes are combined in a fixed order, so the compiler vectorises without reordering anything.
 * Rows (slices) are independent: the number of threads never changes a result.
 *
 * Tables per shape (_cpu_kernels.py): band (M,) int32, each half-grid bin's band; weight (M,)
 * float32, its Hermitian weight (1 or 2); chunk_band (ceil(M / LANES),) int32, the band of all
 * LANES bins of a chunk where they share one, else -1 (then bin by bin); mirror_pairs (P, 2)
 * int64, the bins m <= m' of the self-mirrored columns with m' = -m.
 *
 * Plain C with no torch headers: it compiles in about a second and is called through ctypes
 * (scc_kernels/backends/_cpu_kernels.py, which also builds it: `python -m scc_kernels build-cpu`).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 8
#define BLOCK 512 /* bins per block of pass 1: its u, v, d stay in L1 for the sums (a multiple of LANES) */
#define NSTATS 8  /* _stats.STATS */
#define NCOEF 7   /* _stats.COEFFICIENTS */

/* LANES floats, and LANES doubles (the lanes of a sum), as GCC/Clang vector types: the lane
 * arithmetic is spelled out, and each lane is the same IEEE operation on any instruction set. */
typedef float floats __attribute__((vector_size(4 * LANES)));
typedef double doubles __attribute__((vector_size(8 * LANES)));

static inline floats load(const float *p) {
    floats x;
    memcpy(&x, p, sizeof x);
    return x;
}

static inline void store(float *p, floats x) { memcpy(p, &x, sizeof x); }

static inline doubles widen(floats x) { return __builtin_convertvector(x, doubles); }

/* The lanes' sum, in a fixed order. */
static double lanes_sum(doubles lane) {
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/* Pass 0 on one row of a half spectrum Z: Z[m] = (Z[m] + conj(Z[m'])) / 2 and Z[m'] its
 * conjugate for each mirror pair, as _spectra.make_hermitian rounds it. */
static void make_hermitian(float *restrict Z, const int64_t *restrict pairs, int64_t n_pairs) {
    for (int64_t p = 0; p < n_pairs; ++p) {
        const int64_t m = 2 * pairs[2 * p], mirrored = 2 * pairs[2 * p + 1];
        const float re = (Z[m] + Z[mirrored]) / 2, im = (Z[m + 1] - Z[mirrored + 1]) / 2;
        Z[m] = re, Z[m + 1] = im, Z[mirrored] = re, Z[mirrored + 1] = -im;
    }
}

/* u = |X|, v = |Y| and d = (|X|^2 - |Y|^2) / (u + v) of one bin from S, D. X = S + D [base is y],
 * Y = S - D [base is x]: one of the two products is D * 0. */
static inline __attribute__((always_inline)) void bin_values(float sr, float si, float dr, float di, float to_x,
                                                             float to_y, float *xr, float *xi, float *u, float *v,
                                                             float *d) {
    *xr = sr + dr * to_x, *xi = si + di * to_x;
    const float yr = sr - dr * to_y, yi = si - di * to_y;
    *u = sqrtf(*xr * *xr + *xi * *xi), *v = sqrtf(yr * yr + yi * yi);
    const float sum = *u + *v;
    /* |X|^2 - |Y|^2 = Re(D conj(X + Y)): every term of the size of D. Not fmaxf, which does not
     * vectorise (its NaN rule): a NaN sum stays NaN */
    *d = ((yr + *xr) * dr + (yi + *xi) * di) / (sum < FLT_MIN ? FLT_MIN : sum);
}

/* Bins [k0, k1) of one row: u (at k - k0), v, d, and X in place of S where store_x (the base is
 * y; a constant after inlining: a test inside the loop keeps GCC from vectorising it). */
static inline __attribute__((always_inline)) void block_values(int64_t k0, int64_t k1, float *restrict S,
                                                               const float *restrict D, float to_x, float to_y,
                                                               int store_x, float *restrict u, float *restrict v,
                                                               float *restrict d) {
    for (int64_t k = k0; k < k1; ++k) {
        float xr, xi;
        bin_values(S[2 * k], S[2 * k + 1], D[2 * k], D[2 * k + 1], to_x, to_y, &xr, &xi, u + k - k0, v + k, d + k);
        if (store_x) S[2 * k] = xr, S[2 * k + 1] = xi;
    }
}

/* The sums of one band, one row: the weighted sums of (u, v, d) - shift, and of the products
 * (u - shift)^2, (v - shift)^2, (u - shift)(v - shift), (d - shift)^2, LANES lanes each. */
enum { SUM_U, SUM_V, SUM_D, SUM_UU, SUM_VV, SUM_UV, SUM_DD, NSUMS };

/* Adds bins [k, k + LANES) of one band (whole vectors) or bin k alone (lane l) into `a`. */
static inline void add_chunk(doubles *restrict a, doubles w, doubles u, doubles v, doubles d, const double *shift) {
    const doubles su = u - shift[0], sv = v - shift[1], sd = d - shift[2];
    const doubles wu = w * su, wv = w * sv, wd = w * sd;
    a[SUM_U] += wu, a[SUM_V] += wv, a[SUM_D] += wd;
    a[SUM_UU] += wu * su, a[SUM_VV] += wv * sv, a[SUM_UV] += wu * sv, a[SUM_DD] += wd * sd;
}

static inline void add_bin(doubles *restrict a, int l, double w, float u, float v, float d, const double *shift) {
    const double su = u - shift[0], sv = v - shift[1], sd = d - shift[2];
    const double wu = w * su, wv = w * sv, wd = w * sd;
    a[SUM_U][l] += wu, a[SUM_V][l] += wv, a[SUM_D][l] += wd;
    a[SUM_UU][l] += wu * su, a[SUM_VV][l] += wv * sv, a[SUM_UV][l] += wu * sv, a[SUM_DD][l] += wd * sd;
}

/* One row: X in place of S (where the base is y; else S is X), v, d, and each band's sums (NSUMS
 * x LANES per band) into acc, about a shift per band: the u, v, d of its first bin in the row (3
 * per band in `shift`, set where `seen`, per band, is 0). A block at a time, its u in `u`. */
static void row_sums(int64_t bins, float *S, const float *D, int base_is_x, float *restrict v,
                     float *restrict d, const int32_t *restrict band, const float *restrict weight,
                     const int32_t *restrict chunk_band, doubles *restrict acc, double *restrict shift,
                     uint8_t *restrict seen) {
    const float to_x = base_is_x ? 0.0f : 1.0f, to_y = 1.0f - to_x;
    float u[BLOCK]; /* u of bin k at k - k0 */
    for (int64_t k0 = 0; k0 < bins; k0 += BLOCK) {
        const int64_t k1 = k0 + BLOCK < bins ? k0 + BLOCK : bins;
        if (base_is_x) /* two copies of the loop, each vectorised on its own */
            block_values(k0, k1, S, D, to_x, to_y, 0, u, v, d);
        else
            block_values(k0, k1, S, D, to_x, to_y, 1, u, v, d);
        for (int64_t k = k0; k < k1; k += LANES) {
            const int32_t j = chunk_band[k / LANES];
            if (j >= 0) {
                double *at = shift + 3 * j;
                if (!seen[j]) seen[j] = 1, at[0] = u[k - k0], at[1] = v[k], at[2] = d[k];
                add_chunk(acc + NSUMS * j, widen(load(weight + k)), widen(load(u + k - k0)), widen(load(v + k)),
                          widen(load(d + k)), at);
            } else {
                for (int l = 0; l < LANES && k + l < k1; ++l) {
                    const int32_t b = band[k + l];
                    double *at = shift + 3 * b;
                    if (!seen[b]) seen[b] = 1, at[0] = u[k + l - k0], at[1] = v[k + l], at[2] = d[k + l];
                    add_bin(acc + NSUMS * b, l, weight[k + l], u[k + l - k0], v[k + l], d[k + l], at);
                }
            }
        }
    }
}

/* A band's STATS (count, means, centred moments) from its sums about `shift` and its count n:
 * mean = shift + S/n, m2 = S2 - S S'/n. Each difference from the shift is exact in double, and
 * the shift is one of the band's own values, so (mean - shift)^2 <= m2 and S2 <= (n + 1) m2: the
 * subtraction loses at most log2(n + 1) of double's 53 bits, where float32 values carry 24. */
static void band_stats(const doubles *restrict a, const double *restrict shift, double n, float *restrict out) {
    double sum[NSUMS];
    for (int q = 0; q < NSUMS; ++q) sum[q] = lanes_sum(a[q]);
    out[0] = (float)n;
    if (n <= 0) {
        for (int q = 1; q < NSTATS; ++q) out[q] = 0.0f;
        return;
    }
    for (int q = 0; q < 3; ++q) out[1 + q] = (float)(shift[q] + sum[SUM_U + q] / n);
    const double uu = sum[SUM_UU] - sum[SUM_U] * sum[SUM_U] / n, vv = sum[SUM_VV] - sum[SUM_V] * sum[SUM_V] / n;
    const double uv = sum[SUM_UV] - sum[SUM_U] * sum[SUM_V] / n, dd = sum[SUM_DD] - sum[SUM_D] * sum[SUM_D] / n;
    /* a square's sum is >= 0 (an ulp under it is rounding); not fmax, which would hide a NaN */
    out[4] = (float)(uu < 0 ? 0 : uu), out[5] = (float)(vv < 0 ? 0 : vv), out[6] = (float)uv;
    out[7] = (float)(dd < 0 ? 0 : dd);
}

/* Forward of `rows` slices of `bins` half-grid bins each.
 * S, D: (rows, bins) complex, interleaved, made Hermitian in place (pass 0); base_is_x: (rows,)
 * 0/1, or NULL (the base is x in every row), and S becomes X in place (X = S + D where the base
 * is y); v, d: (rows, bins) out; counts: (K,) full-spectrum bins per band; stats: (rows, K, 8)
 * out in _stats.STATS order. Returns 0, or -1 if the per-thread sums could not be allocated. */
int scc_cpu_amplitude_forward(int64_t rows, int64_t bins, float *S, float *D, const uint8_t *base_is_x,
                              float *v, float *d, const int32_t *band, const float *weight,
                              const int32_t *chunk_band, const int64_t *mirror_pairs, int64_t n_pairs,
                              int64_t num_bands, const double *counts, float *stats, int threads) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        doubles *acc = aligned_alloc(sizeof(doubles), NSUMS * num_bands * sizeof(doubles)); /* aligned as the type */
        double *shift = malloc(3 * num_bands * sizeof(double));
        uint8_t *seen = malloc(num_bands);
        failed = acc == NULL || shift == NULL || seen == NULL;
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; ++row) {
            if (failed) continue;
            const int64_t at = row * bins;
            memset(acc, 0, NSUMS * num_bands * sizeof(doubles));
            memset(seen, 0, num_bands);
            make_hermitian(S + 2 * at, mirror_pairs, n_pairs);
            make_hermitian(D + 2 * at, mirror_pairs, n_pairs);
            row_sums(bins, S + 2 * at, D + 2 * at, base_is_x == NULL || base_is_x[row], v + at, d + at,
                     band, weight, chunk_band, acc, shift, seen);
            for (int64_t j = 0; j < num_bands; ++j)
                band_stats(acc + NSUMS * j, shift + 3 * j, counts[j], stats + (row * num_bands + j) * NSTATS);
        }
        free(acc);
        free(shift);
        free(seen);
    }
    return failed ? -1 : 0;
}

/* The gradient of bins [k, end) of one band: X g / |X| (0 where X = 0), with
 * g = c_mean + c_uu (|X| - mean_u) + c_uv v + c_dd d, c = the band's COEFFICIENTS. */
static inline __attribute__((always_inline)) void band_gradient(int64_t k, int64_t end, const float *restrict x,
                                                                const float *restrict v, const float *restrict d,
                                                                const float *restrict c, float *restrict out) {
    const float c_mean = c[0], c_uu = c[1], c_uv = c[2], c_dd = c[3], mean_u = c[4], mean_v = c[5], mean_d = c[6];
    for (int64_t i = k; i < end; ++i) {
        const float u = sqrtf(x[2 * i] * x[2 * i] + x[2 * i + 1] * x[2 * i + 1]);
        float g = c_mean + (u - mean_u) * c_uu;
        g = g + (v[i] - mean_v) * c_uv;
        g = g + (d[i] - mean_d) * c_dd;
        const float scale = u == 0.0f ? 0.0f : g / u; /* d|X|/dX = X/|X|, and 0 at X = 0 (SPEC §4) */
        out[2 * i] = x[2 * i] * scale;
        out[2 * i + 1] = x[2 * i + 1] * scale;
    }
}

/* Backward: grad_X (rows, bins) complex out from the saved X and centred v, d of the forward and
 * the coefficients (rows, K, 7) in _stats.COEFFICIENTS order. A stretch of chunks of one band at
 * a time (a plain loop, which the compiler vectorises); bin by bin in chunks of several bands. */
void scc_cpu_amplitude_backward(int64_t rows, int64_t bins, const float *X, const float *v, const float *d,
                                const int32_t *band, const int32_t *chunk_band, int64_t num_bands,
                                const float *coefficients, float *grad_X, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t at = row * bins;
        const float *x = X + 2 * at, *vr = v + at, *dr = d + at;
        const float *coefficient = coefficients + row * num_bands * NCOEF;
        float *out = grad_X + 2 * at;
        for (int64_t k = 0; k < bins;) {
            const int32_t j = chunk_band[k / LANES];
            int64_t end = k + LANES < bins ? k + LANES : bins;
            if (j >= 0) {
                while (end < bins && chunk_band[end / LANES] == j) end += LANES; /* full chunks only */
                band_gradient(k, end, x, vr, dr, coefficient + NCOEF * j, out);
            } else {
                for (int64_t i = k; i < end; ++i) band_gradient(i, i + 1, x, vr, dr, coefficient + NCOEF * band[i], out);
            }
            k = end;
        }
    }
}

/* The class counts of one label map (labels checked in [0, classes)) into counts (classes,), in
 * LANES lanes (`lanes`: classes x LANES scratch): sample i adds to lane i % LANES of its class. */
static void count_labels(const int64_t *restrict label, int64_t n, int64_t classes, int64_t *restrict lanes,
                         int64_t *restrict counts) {
    memset(lanes, 0, classes * LANES * sizeof(int64_t));
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; ++l) ++lanes[label[i + l] * LANES + l];
    for (int l = 0; i < n; ++i, ++l) ++lanes[label[i] * LANES + l];
    for (int64_t c = 0; c < classes; ++c) {
        counts[c] = 0;
        for (int l = 0; l < LANES; ++l) counts[c] += lanes[c * LANES + l];
    }
}

/* counts (batch, classes): how many samples of each label map hold each class (for
 * functional._flat_target_bands). Returns 0, or -1 if the per-thread lanes could not be allocated. */
int scc_cpu_label_counts(int64_t batch, int64_t classes, int64_t n, const int64_t *labels, int64_t *counts,
                         int threads) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        int64_t *lanes = malloc(classes * LANES * sizeof(int64_t));
        failed = lanes == NULL;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < batch; ++b)
            if (!failed) count_labels(labels + b * n, n, classes, lanes, counts + b * classes);
        free(lanes);
    }
    return failed ? -1 : 0;
}

/* Whether one slice's base is the prediction x: _spectra.base_is_prediction's rule (choose_base)
 * for a label map, x_max <= y_max and sum x^2 <= 4 sum y^2, with y_max = min(count, 1), sum y^2 =
 * count; x_max is 1 after an activation (bounded), else max |x| (NaN if x holds one). Sum x^2 in
 * double, LANES lanes. A NaN fails both comparisons there as in torch: base y. */
static int base_is_x(const float *restrict x, int64_t n, int64_t count, int bounded) {
    doubles lanes = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        const doubles value = widen(load(x + i));
        lanes += value * value;
    }
    double energy = lanes_sum(lanes);
    for (; i < n; ++i) energy += (double)x[i] * x[i];
    float largest = 1.0f;
    if (!bounded) {
        largest = 0.0f;
        for (i = 0; i < n; ++i) {
            const float magnitude = fabsf(x[i]);
            largest = magnitude > largest || magnitude != magnitude ? magnitude : largest;
        }
    }
    return (double)largest <= (count < 1 ? 0.0 : 1.0) && energy <= 4.0 * (double)count;
}

/* The signals to transform for `batch` elements of a label map, channels offset..classes-1, and
 * their bases: base_is_x (batch, classes - offset) out, per slice (`base_is_x`); difference = x - y;
 * and, where some slice's base is y, base = x or y per slice, every row (else base is not
 * written). x = p, y = [label == c], each (batch, classes - offset, n). Returns 1 where base was
 * written, 0 where every base is x, -1 where the per-thread counts could not be allocated. */
int scc_cpu_label_signals(int64_t batch, int64_t classes, int64_t offset, int64_t n, const float *p,
                          const int64_t *labels, int bounded, uint8_t *base_is_x_out, float *base, float *difference,
                          int threads) {
    const int64_t channels = classes - offset;
    int64_t *counts = malloc(batch * classes * sizeof(int64_t));
    if (counts == NULL || scc_cpu_label_counts(batch, classes, n, labels, counts, threads) != 0) {
        free(counts);
        return -1;
    }
    int some_y = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(| : some_y)
    for (int64_t row = 0; row < batch * channels; ++row) {
        const int64_t b = row / channels, c = offset + row % channels;
        const float *restrict x = p + (b * classes + c) * n;
        const int64_t *restrict label = labels + b * n;
        base_is_x_out[row] = (uint8_t)base_is_x(x, n, counts[b * classes + c], bounded);
        some_y |= !base_is_x_out[row];
        float *restrict out = difference + row * n; /* x is still in cache */
        for (int64_t i = 0; i < n; ++i) out[i] = x[i] - (label[i] == c ? 1.0f : 0.0f);
    }
    free(counts);
    if (!some_y) return 0;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t row = 0; row < batch * channels; ++row) {
        const int64_t b = row / channels, c = offset + row % channels;
        const float *restrict x = p + (b * classes + c) * n;
        const int64_t *restrict label = labels + b * n;
        float *restrict chosen = base + row * n;
        if (base_is_x_out[row])
            memcpy(chosen, x, n * sizeof(float));
        else
            for (int64_t i = 0; i < n; ++i) chosen[i] = label[i] == c ? 1.0f : 0.0f;
    }
    return 1;
}

/* The Parseval path's gradient w.r.t. x of samples [i0, i0 + count) of one (b, c) into out:
 * to_x x + to_y y with y = [label == c] (torch_backend._parseval_backward's rounding), and at the
 * origin root_n c_mean. */
static inline void parseval_gradient(int64_t i0, int64_t count, const float *restrict x,
                                     const int64_t *restrict label, int64_t c, const float *restrict coefficient,
                                     float root_n, float *restrict out) {
    const float to_x = coefficient[1] + coefficient[3], to_y = coefficient[2] - coefficient[3];
    for (int64_t i = 0; i < count; ++i) out[i] = to_x * x[i0 + i] + (label[i0 + i] == c ? to_y : 0.0f);
    if (i0 == 0) out[0] = root_n * coefficient[0];
}

/* The softmax's backward over the channels: out (batch, classes, n) = g p - p s with s = the sum
 * over the channels of g p (torch_backend._activation_backward's rounding), from p (batch, classes,
 * n) and the gradient g of channels offset.. (0 below offset): g (batch, classes - offset, n), or,
 * where g is NULL, the Parseval path's from the labels (batch, n) and its coefficients
 * (batch, classes - offset, 7) (`parseval_gradient`). A block of BLOCK samples at a time: its g,
 * g p and s stay in L1 between the loops. */
static void softmax_backward(int64_t batch, int64_t classes, int64_t offset, int64_t n, const float *p,
                             const float *g, const int64_t *labels, const float *coefficients, float root_n,
                             float *out, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < batch; ++b) {
        float sum[BLOCK], computed[BLOCK];
        for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
            const int64_t count = i0 + BLOCK < n ? BLOCK : n - i0;
            for (int64_t i = 0; i < count; ++i) sum[i] = 0.0f;
            for (int64_t c = offset; c < classes; ++c) {
                const float *restrict pc = p + (b * classes + c) * n + i0;
                const int64_t row = b * (classes - offset) + c - offset;
                const float *restrict gc = computed; /* no arithmetic on a NULL g */
                if (g != NULL)
                    gc = g + row * n + i0;
                else
                    parseval_gradient(i0, count, p + (b * classes + c) * n, labels + b * n, c,
                                      coefficients + row * NCOEF, root_n, computed);
                float *restrict oc = out + (b * classes + c) * n + i0;
                for (int64_t i = 0; i < count; ++i) sum[i] += oc[i] = gc[i] * pc[i];
            }
            for (int64_t c = 0; c < classes; ++c) {
                const float *restrict pc = p + (b * classes + c) * n + i0;
                float *restrict oc = out + (b * classes + c) * n + i0;
                if (c < offset) /* g = 0 there */
                    for (int64_t i = 0; i < count; ++i) oc[i] = 0.0f - pc[i] * sum[i];
                else
                    for (int64_t i = 0; i < count; ++i) oc[i] = oc[i] - pc[i] * sum[i];
            }
        }
    }
}

void scc_cpu_softmax_backward(int64_t batch, int64_t classes, int64_t offset, int64_t n, const float *p,
                              const float *g, float *out, int threads) {
    softmax_backward(batch, classes, offset, n, p, g, NULL, NULL, 0.0f, out, threads);
}

/* The complex spectrum with one band (path "fused-parseval"), a label map: per (b, c) with c in
 * offset..classes-1, _stats.PARSEVAL_SUMS into sums (batch, classes - offset, 6) double: x[0],
 * y[0], and over the samples but the origin, sum x^2, y^2, x y, (x - y)^2; x = p (batch, classes,
 * n), y = [label == c], x - y rounded to float32 as torch_backend._parseval_stats forms it. A block
 * of BLOCK samples at a time: y first (a plain loop, vectorised), then the sums in LANES lanes. */
void scc_cpu_label_parseval_sums(int64_t batch, int64_t classes, int64_t offset, int64_t n, const float *p,
                                 const int64_t *labels, double *sums, int threads) {
    const int64_t channels = classes - offset;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t row = 0; row < batch * channels; ++row) {
        const int64_t b = row / channels, c = offset + row % channels;
        const float *restrict x = p + (b * classes + c) * n;
        const int64_t *restrict label = labels + b * n;
        doubles xx = {0}, yy = {0}, xy = {0}, dd = {0};
        float y[BLOCK];
        for (int64_t i0 = 1; i0 < n; i0 += BLOCK) { /* the origin apart */
            const int64_t count = i0 + BLOCK < n ? BLOCK : n - i0;
            for (int64_t i = 0; i < count; ++i) y[i] = label[i0 + i] == c ? 1.0f : 0.0f;
            int64_t i = 0;
            for (; i + LANES <= count; i += LANES) {
                const floats xf = load(x + i0 + i), yf = load(y + i);
                const doubles xd = widen(xf), yd = widen(yf), dif = widen(xf - yf);
                xx += xd * xd, yy += yd, xy += xd * yd, dd += dif * dif;
            }
            for (int l = 0; i < count; ++i, ++l) {
                const double xd = x[i0 + i], yd = y[i], dif = x[i0 + i] - y[i];
                xx[l] += xd * xd, yy[l] += yd, xy[l] += xd * yd, dd[l] += dif * dif;
            }
        }
        double *out = sums + row * 6;
        out[0] = x[0], out[1] = label[0] == c ? 1.0 : 0.0;
        out[2] = lanes_sum(xx), out[3] = lanes_sum(yy), out[4] = lanes_sum(xy), out[5] = lanes_sum(dd);
    }
}

/* Its gradient w.r.t. p of channels offset.. into g (batch, classes - offset, n)
 * (`parseval_gradient`), from coefficients (batch, classes - offset, 7) (_stats.COEFFICIENTS). */
void scc_cpu_label_parseval_gradient(int64_t batch, int64_t classes, int64_t offset, int64_t n, const float *p,
                                     const int64_t *labels, const float *coefficients, float root_n, float *g,
                                     int threads) {
    const int64_t channels = classes - offset;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t row = 0; row < batch * channels; ++row) {
        const int64_t b = row / channels, c = offset + row % channels;
        parseval_gradient(0, n, p + (b * classes + c) * n, labels + b * n, c, coefficients + row * NCOEF, root_n,
                          g + row * n);
    }
}

/* The Parseval gradient and the softmax's backward in one pass: out (batch, classes, n). */
void scc_cpu_label_parseval_softmax_backward(int64_t batch, int64_t classes, int64_t offset, int64_t n,
                                             const float *p, const int64_t *labels, const float *coefficients,
                                             float root_n, float *out, int threads) {
    softmax_backward(batch, classes, offset, n, p, NULL, labels, coefficients, root_n, out, threads);
}
