// Device code of the SCC kernels: no host-only includes, so that NVRTC (CuPy) compiles this
// file as it is, and nvcc compiles it through launchers.cu for the torch extension.
// Each kernel is scc::<name>_kernel; its host launcher is scc::launch_<name> (launchers.cu).
//
// Layouts (all contiguous, row-major):
//   logits        (B, C, N)  float / __half / __nv_bfloat16   N = number of spatial samples
//   target        (B, N) integer label map (unsigned char, int, long long)
//                 or (B, C, N) float (dense one-hot / soft target): template parameter L = float
//   stats         per band, _stats.STATS: (count, mean_u, mean_v, mean_d, m2_uu, m2_vv, m2_uv, m2_dd)
//   coefficients  per band, _stats.COEFFICIENTS: (c_mean, c_uu, c_uv, c_dd, mean_u, mean_v, mean_d)
//   S, D          (B*C', M) complex64 rfftn half spectra (M = half-grid bins) of each slice's base
//                 and of d = x - t; base_is_x (B*C') bool says whether the base is the prediction x
//                 (then X = S, Y = S - D) or the target t (then X = S + D, Y = S): _spectra.py says why
// Output channels are offset..C-1 (offset = 1 drops the background channel).
// Every reduction has a fixed order (block partials, combined afterwards by torch): the results
// are bitwise reproducible for a given shape and launch configuration.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace scc {

// Block size of every kernel: launchers must use exactly this (shared arrays are sized by it).
constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;
// Bins per thread and pass in band_stats_kernel, and bands held in shared memory per pass.
constexpr int BAND_ITEMS = 4;
constexpr int BAND_CHUNK = 32;
// Values per entry of the tables above (_stats.STATS, _stats.COEFFICIENTS, _stats.PARSEVAL_SUMS).
constexpr int NUM_STATS = 8;
constexpr int NUM_COEFFICIENTS = 7;
constexpr int NUM_PARSEVAL_SUMS = 6;

enum Activation { ACT_NONE = 0, ACT_SOFTMAX = 1, ACT_SIGMOID = 2 };

// ---------------------------------------------------------------------------------------------
// scalar conversions (intrinsics only: torch builds with the __CUDA_NO_HALF_CONVERSIONS__ family)

__device__ __forceinline__ float value_of(float x) { return x; }
__device__ __forceinline__ float value_of(__half x) { return __half2float(x); }
__device__ __forceinline__ float value_of(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ long long value_of(unsigned char x) { return x; }
__device__ __forceinline__ long long value_of(int x) { return x; }
__device__ __forceinline__ long long value_of(long long x) { return x; }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

template <typename L> struct IsLabelMap { static constexpr bool value = true; };
template <> struct IsLabelMap<float> { static constexpr bool value = false; };

// ---------------------------------------------------------------------------------------------
// vectorised tiles: VEC consecutive samples per thread, one 16-byte load when aligned

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC >= 16 ? 16 : sizeof(T) * VEC) Pack {
    T v[VEC];
};

// Rows start at multiples of N elements, so they are all aligned iff the base is and VEC | N.
template <typename T, int VEC>
__device__ __forceinline__ bool rows_aligned(const T* base, long long n) {
    return reinterpret_cast<unsigned long long>(base) % alignof(Pack<T, VEC>) == 0 && n % VEC == 0;
}

template <int VEC, typename T, typename Out>
__device__ __forceinline__ void load_tile(Out (&out)[VEC], const T* row, long long n0, long long n,
                                          bool aligned, Out fill) {
    if (aligned && n0 + VEC <= n) {
        const Pack<T, VEC> pack = *reinterpret_cast<const Pack<T, VEC>*>(row + n0);
#pragma unroll
        for (int i = 0; i < VEC; ++i) out[i] = value_of(pack.v[i]);
    } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) out[i] = n0 + i < n ? value_of(row[n0 + i]) : fill;
    }
}

template <int VEC, typename T>
__device__ __forceinline__ void store_tile(T* row, const float (&values)[VEC], long long n0, long long n,
                                           bool aligned) {
    if (aligned && n0 + VEC <= n) {
        Pack<T, VEC> pack;
#pragma unroll
        for (int i = 0; i < VEC; ++i) pack.v[i] = from_float<T>(values[i]);
        *reinterpret_cast<Pack<T, VEC>*>(row + n0) = pack;
    } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i)
            if (n0 + i < n) row[n0 + i] = from_float<T>(values[i]);
    }
}

// ---------------------------------------------------------------------------------------------
// reductions

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_down_sync(0xffffffffu, x, offset);
    return x;  // complete in lane 0
}

// The same in every lane, bitwise: each butterfly step adds the same two values (a + b = b + a).
__device__ __forceinline__ float warp_all_sum(float x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

__device__ __forceinline__ int warp_min(int x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x = min(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;  // in every lane
}

// Sums of NV values over the block, complete in thread 0; every thread of the block must call it.
template <int NV>
__device__ __forceinline__ void block_sum(float (&v)[NV]) {
    __shared__ float scratch[NV][WARPS];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        v[j] = warp_sum(v[j]);
        if (lane == 0) scratch[j][warp] = v[j];
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
        for (int j = 0; j < NV; ++j) v[j] = warp_sum(lane < WARPS ? scratch[j][lane] : 0.f);
    }
    __syncthreads();  // scratch is reused by the next call
}

// ---------------------------------------------------------------------------------------------
// one tile of VEC samples of batch item b: labels, validity, softmax statistics, p and t per channel

template <typename T, typename L, int VEC>
struct Tile {
    long long n0, n;
    int num_classes;
    const T* logits;  // batch item b: (C, N)
    const L* target;  // batch item b: (N) labels or (C, N) dense
    bool logits_aligned, target_aligned;
    int activation;
    bool valid[VEC];  // inside the data and not ignore_index
    long long label[VEC];
    float max_logit[VEC], inv_denominator[VEC];

    __device__ void init(const T* logits_b, const L* target_b, int c, long long n_, long long n0_, int act,
                         bool has_ignore, long long ignore_index, bool x_aligned, bool t_aligned) {
        logits = logits_b;
        target = target_b;
        num_classes = c;
        n = n_;
        n0 = n0_;
        activation = act;
        logits_aligned = x_aligned;
        target_aligned = t_aligned;
        if constexpr (IsLabelMap<L>::value) load_tile<VEC>(label, target, n0, n, target_aligned, -1LL);
#pragma unroll
        for (int i = 0; i < VEC; ++i)
            valid[i] = n0 + i < n && !(IsLabelMap<L>::value && has_ignore && label[i] == ignore_index);
        if (activation == ACT_SOFTMAX) {
            // online softmax statistics over the classes: running max and rescaled sum
            float sum[VEC];
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                max_logit[i] = -__int_as_float(0x7f800000);
                sum[i] = 0.f;
            }
            for (int k = 0; k < num_classes; ++k) {
                float x[VEC];
                load_tile<VEC>(x, logits + k * n, n0, n, logits_aligned, 0.f);
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    if (x[i] > max_logit[i]) {
                        sum[i] = sum[i] * expf(max_logit[i] - x[i]) + 1.f;
                        max_logit[i] = x[i];
                    } else {
                        sum[i] += expf(x[i] - max_logit[i]);  // NaN logits propagate here
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < VEC; ++i) inv_denominator[i] = 1.f / sum[i];
        }
    }

    // activated prediction of channel c; when `masked`, times 0 outside the valid samples (as the
    // reference does: a NaN or Inf logit at an ignored sample still makes the loss NaN)
    __device__ void prob(float (&p)[VEC], int c, bool masked) const {
        load_tile<VEC>(p, logits + c * n, n0, n, logits_aligned, 0.f);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            if (activation == ACT_SOFTMAX) p[i] = expf(p[i] - max_logit[i]) * inv_denominator[i];
            else if (activation == ACT_SIGMOID) p[i] = 1.f / (1.f + expf(-p[i]));
            if (masked && !valid[i]) p[i] *= 0.f;
        }
    }

    // target of channel c (one-hot of the label map, or the dense value), zero outside the valid samples
    __device__ void truth(float (&t)[VEC], int c) const {
        if constexpr (IsLabelMap<L>::value) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) t[i] = valid[i] && label[i] == c ? 1.f : 0.f;
        } else {
            load_tile<VEC>(t, target + c * n, n0, n, target_aligned, 0.f);
#pragma unroll
            for (int i = 0; i < VEC; ++i) t[i] = valid[i] ? t[i] : 0.f;
        }
    }
};

template <typename T>
struct VecOf {
    static constexpr int value = 16 / sizeof(T);
};

// ---------------------------------------------------------------------------------------------
// complex spectrum, one band (SPEC's Parseval identity): one pass over the data, no transform.
// grid (B, G); partials (B, G, C', 6) of _stats.PARSEVAL_SUMS, zero-initialised: the origin sample's
// x and t (written by the thread that owns it), then sums of x², t², x·t and (x - t)² over every
// sample but the origin (which alone carries the spectrum's mean). Block (b, g) adds its tiles to
// row (b, g). These sums are the centred moments themselves: nothing is subtracted afterwards.

template <typename T, typename L>
__global__ void __launch_bounds__(THREADS)
parseval_forward_kernel(const T* __restrict__ logits, const L* __restrict__ target, float* __restrict__ partials,
                        int num_classes, long long n, int offset, int activation, int has_ignore,
                        long long ignore_index) {
    constexpr int VEC = VecOf<T>::value;
    const int b = blockIdx.x;
    const int channels = num_classes - offset;
    const T* logits_b = logits + (long long)b * num_classes * n;
    const L* target_b = target + (long long)b * (IsLabelMap<L>::value ? 1 : num_classes) * n;
    float* out = partials + ((long long)b * gridDim.y + blockIdx.y) * channels * NUM_PARSEVAL_SUMS;
    const bool x_aligned = rows_aligned<T, VEC>(logits, n), t_aligned = rows_aligned<L, VEC>(target, n);

    // the tile loop bound is the same for the whole block: block_sum needs every thread
    for (long long tile = blockIdx.y; tile * THREADS * VEC < n; tile += gridDim.y) {
        const long long n0 = (tile * THREADS + threadIdx.x) * VEC;
        Tile<T, L, VEC> tl;
        tl.init(logits_b, target_b, num_classes, n, n0, activation, has_ignore, ignore_index, x_aligned,
                t_aligned);
        for (int c = offset; c < num_classes; ++c) {
            float p[VEC], t[VEC], acc[4] = {0.f, 0.f, 0.f, 0.f};
            tl.prob(p, c, true);
            tl.truth(t, c);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                if (n0 + i == 0) continue;  // the origin: o[0], o[1] below
                // the difference as a sample of its own: near convergence it is all that r depends on
                const float d = p[i] - t[i];
                acc[0] += p[i] * p[i];
                acc[1] += t[i] * t[i];
                acc[2] += p[i] * t[i];
                acc[3] += d * d;
            }
            block_sum(acc);
            float* o = out + (c - offset) * NUM_PARSEVAL_SUMS;
            if (threadIdx.x == 0) {  // thread 0 also owns sample 0 when n0 == 0
                if (n0 == 0) {
                    o[0] = p[0];
                    o[1] = t[0];
                }
#pragma unroll
                for (int q = 0; q < 4; ++q) o[2 + q] += acc[q];
            }
        }
    }
}

// The two signals the transform path transforms, float32 (B, C', N), zero at ignored samples:
// each slice's base (the activated prediction x where base_is_x (B, C'), else the target t) and
// the difference d = x - t, formed here per sample so that its transform keeps its digits when
// the prediction nears the target. grid (B, G).
template <typename T, typename L>
__global__ void __launch_bounds__(THREADS)
activate_kernel(const T* __restrict__ logits, const L* __restrict__ target, const bool* __restrict__ base_is_x,
                float* __restrict__ base, float* __restrict__ d, int num_classes, long long n, int offset,
                int activation, int has_ignore, long long ignore_index) {
    constexpr int VEC = VecOf<T>::value;
    const int b = blockIdx.x;
    const int channels = num_classes - offset;
    const T* logits_b = logits + (long long)b * num_classes * n;
    const L* target_b = target + (long long)b * (IsLabelMap<L>::value ? 1 : num_classes) * n;
    const bool x_aligned = rows_aligned<T, VEC>(logits, n), t_aligned = rows_aligned<L, VEC>(target, n);
    const bool out_aligned = rows_aligned<float, VEC>(base, n) && rows_aligned<float, VEC>(d, n);

    for (long long n0 = ((long long)blockIdx.y * THREADS + threadIdx.x) * VEC; n0 < n;
         n0 += (long long)gridDim.y * THREADS * VEC) {
        Tile<T, L, VEC> tl;
        tl.init(logits_b, target_b, num_classes, n, n0, activation, has_ignore, ignore_index, x_aligned,
                t_aligned);
        for (int c = offset; c < num_classes; ++c) {
            float p[VEC], t[VEC], diff[VEC], chosen[VEC];
            tl.prob(p, c, true);
            tl.truth(t, c);
            const long long slice = (long long)b * channels + c - offset;
            const bool from_x = base_is_x[slice];
            // select element by element: `from_x ? p : t` picks an array, whose address forces both
            // arrays out of registers into local memory
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                diff[i] = p[i] - t[i];
                chosen[i] = from_x ? p[i] : t[i];
            }
            store_tile<VEC>(base + slice * n, chosen, n0, n, out_aligned);
            store_tile<VEC>(d + slice * n, diff, n0, n, out_aligned);
        }
    }
}

// Gradient of the logits from the gradient g of the activated prediction (output channels; the
// background channel and ignored samples get g = 0), through the activation's Jacobian.
// g comes from either
//   coefficients (B, C', 7): the Parseval form, g = c_uu*p + c_uv*t + c_dd*(p - t), and
//     sqrt(N)*c_mean at sample 0 (the origin enters the statistics through the means only), or
//   grad_x (B, C', N): the inverse transform of the spectral path (then coefficients is null).
// grid (B, G); grad_input (B, C, N) in the logits' dtype, every element written.
template <typename T, typename L>
__global__ void __launch_bounds__(THREADS)
activation_backward_kernel(const T* __restrict__ logits, const L* __restrict__ target,
                           const float* __restrict__ coefficients, const float* __restrict__ grad_x,
                           T* __restrict__ grad_input, int num_classes, long long n, int offset, int activation,
                           int has_ignore, long long ignore_index, float root_n) {
    constexpr int VEC = VecOf<T>::value;
    const int b = blockIdx.x;
    const int channels = num_classes - offset;
    const T* logits_b = logits + (long long)b * num_classes * n;
    const L* target_b = target + (long long)b * (IsLabelMap<L>::value ? 1 : num_classes) * n;
    T* grad_b = grad_input + (long long)b * num_classes * n;
    const bool x_aligned = rows_aligned<T, VEC>(logits, n), t_aligned = rows_aligned<L, VEC>(target, n);
    const bool g_aligned = grad_x != nullptr && rows_aligned<float, VEC>(grad_x, n);
    const bool out_aligned = rows_aligned<T, VEC>(grad_input, n);

    for (long long n0 = ((long long)blockIdx.y * THREADS + threadIdx.x) * VEC; n0 < n;
         n0 += (long long)gridDim.y * THREADS * VEC) {
        Tile<T, L, VEC> tl;
        tl.init(logits_b, target_b, num_classes, n, n0, activation, has_ignore, ignore_index, x_aligned,
                t_aligned);
        // g and p of channel c (g = 0 for the background channel when it is dropped)
        auto channel = [&](int c, float (&g)[VEC], float (&p)[VEC]) {
            tl.prob(p, c, false);
            if (c < offset) {
#pragma unroll
                for (int i = 0; i < VEC; ++i) g[i] = 0.f;
                return;
            }
            if (coefficients != nullptr) {
                const float* k = coefficients + ((long long)b * channels + c - offset) * NUM_COEFFICIENTS;
                float t[VEC];
                tl.truth(t, c);
#pragma unroll
                for (int i = 0; i < VEC; ++i)
                    g[i] = n0 + i == 0 ? root_n * k[0] : k[1] * p[i] + k[2] * t[i] + k[3] * (p[i] - t[i]);
            } else {
                load_tile<VEC>(g, grad_x + ((long long)b * channels + c - offset) * n, n0, n, g_aligned, 0.f);
            }
#pragma unroll
            for (int i = 0; i < VEC; ++i) g[i] = tl.valid[i] ? g[i] : 0.f;
        };
        float dot[VEC];  // softmax: sum_c p_c * g_c
        if (activation == ACT_SOFTMAX) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) dot[i] = 0.f;
            for (int c = offset; c < num_classes; ++c) {
                float g[VEC], p[VEC];
                channel(c, g, p);
#pragma unroll
                for (int i = 0; i < VEC; ++i) dot[i] += p[i] * g[i];
            }
        }
        for (int c = 0; c < num_classes; ++c) {
            float g[VEC], p[VEC];
            channel(c, g, p);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                if (activation == ACT_SOFTMAX) g[i] = p[i] * (g[i] - dot[i]);
                else if (activation == ACT_SIGMOID) g[i] = g[i] * p[i] * (1.f - p[i]);
            }
            store_tile<VEC>(grad_b + c * n, g, n0, n, out_aligned);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// transform path: band statistics of the half spectra, and the spectral gradient

// X and Y of one bin from S and D: the spectrum formed as a sum is always the larger signal's.
__device__ __forceinline__ void bin_spectra(float2 s, float2 diff, bool x_is_base, float2& x, float2& y) {
    if (x_is_base) {
        x = s;
        y = make_float2(s.x - diff.x, s.y - diff.y);
    } else {
        x = make_float2(s.x + diff.x, s.y + diff.y);
        y = s;
    }
}

// u, v and d = u - v of one bin: real parts, and for the complex spectrum the imaginary parts
// (0 for the amplitude one, whose values are real).
struct BinValues {
    float u, v, d, u_im, v_im, d_im;
};

__device__ __forceinline__ BinValues bin_values(float2 x, float2 y, float2 diff, int amplitude) {
    if (!amplitude) return {x.x, y.x, diff.x, x.y, y.y, diff.y};
    const float u = hypotf(x.x, x.y), v = hypotf(y.x, y.y);
    // d = (|X|² - |Y|²)/(|X| + |Y|) with |X|² - |Y|² = 2·Re(D·conj X) - |D|²: every term of the
    // size of D, so d keeps its digits where u - v would cancel (and d = 0 where X = Y = 0)
    const float power_difference = 2.f * (diff.x * x.x + diff.y * x.y) - (diff.x * diff.x + diff.y * diff.y);
    const float total = u + v;
    return {u, v, total > 0.f ? power_difference / total : 0.f, 0.f, 0.f, 0.f};
}

// Chan et al.'s pairwise update: `a` becomes the STATS of the union of the disjoint parts a and
// b. The added terms are non-negative (for m2_uv, products of the two parts' mean shifts), so
// nothing cancels; an empty part (count 0) changes nothing.
__device__ __forceinline__ void fold(float (&a)[NUM_STATS], const float (&b)[NUM_STATS]) {
    if (b[0] == 0.f) return;
    const float count = a[0] + b[0];
    const float share = b[0] / count;  // b's weight in the union's means
    const float scale = a[0] * share;  // n_a·n_b/n
    float shift[3];
#pragma unroll
    for (int q = 0; q < 3; ++q) {
        shift[q] = b[1 + q] - a[1 + q];
        a[1 + q] += shift[q] * share;
    }
    a[0] = count;
    a[4] += b[4] + scale * shift[0] * shift[0];
    a[5] += b[5] + scale * shift[1] * shift[1];
    a[6] += b[6] + scale * shift[0] * shift[1];
    a[7] += b[7] + scale * shift[2] * shift[2];
}

// The lowest band among this lane's bins above `after` (NO_BAND if none).
constexpr int NO_BAND = 0x7fffffff;
__device__ __forceinline__ int next_band(const int (&k)[BAND_ITEMS], int after) {
    int next = NO_BAND;
#pragma unroll
    for (int j = 0; j < BAND_ITEMS; ++j)
        if (k[j] > after) next = min(next, k[j]);
    return next;
}

// STATS of each slice and band over the full spectrum: every half-grid bin m counts weight[m]
// times (1 or 2, its Hermitian weight). amplitude: u = |X|, v = |Y|; else u = X, v = Y.
// Each warp takes BAND_ITEMS consecutive bins per lane. For every band among them it forms that
// group's count and means (an all-reduce), then the moments about those means (a warp sum), and
// lane 0 folds the group into the warp's shared slot; at the end each band's WARPS slots are
// folded the same way. Every part is centred on its own means: no Σx² - (Σx)²/n anywhere.
// grid (B*C', G); partials (B*C', G, K, 8), every element written (count 0 for a band the block
// has no bin of), combined by _stats.merge.
__global__ void __launch_bounds__(THREADS)
band_stats_kernel(const float2* __restrict__ S, const float2* __restrict__ D, const bool* __restrict__ base_is_x,
                  const int* __restrict__ band, const float* __restrict__ weight, float* __restrict__ partials,
                  long long m_bins, int num_bands, int amplitude) {
    __shared__ float acc[BAND_CHUNK][WARPS][NUM_STATS];
    const long long s = blockIdx.x;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const bool x_is_base = base_is_x[s];
    S += s * m_bins;
    D += s * m_bins;
    float* out = partials + (s * gridDim.y + blockIdx.y) * num_bands * NUM_STATS;

    // bands in chunks of BAND_CHUNK (one pass for K <= BAND_CHUNK): the shared array stays small
    for (int k0 = 0; k0 < num_bands; k0 += BAND_CHUNK) {
        for (int i = threadIdx.x; i < BAND_CHUNK * WARPS * NUM_STATS; i += THREADS) (&acc[0][0][0])[i] = 0.f;
        __syncthreads();
        // the loop bound is the same for the whole warp: the shuffles need all its lanes
        for (long long first = ((long long)blockIdx.y * THREADS + warp * 32) * BAND_ITEMS; first < m_bins;
             first += (long long)gridDim.y * THREADS * BAND_ITEMS) {
            BinValues z[BAND_ITEMS];
            float w[BAND_ITEMS];
            int k[BAND_ITEMS];  // band within this chunk, else -1
#pragma unroll
            for (int j = 0; j < BAND_ITEMS; ++j) {
                const long long m = first + (long long)lane * BAND_ITEMS + j;
                k[j] = m < m_bins ? band[m] : -1;
                if (k[j] < k0 || k[j] >= k0 + BAND_CHUNK) k[j] = -1;
                if (k[j] >= 0) {
                    float2 x, y;
                    const float2 diff = D[m];
                    bin_spectra(S[m], diff, x_is_base, x, y);
                    z[j] = bin_values(x, y, diff, amplitude);
                    w[j] = weight[m];
                }
            }
            // the bands present among the warp's bins, lowest first (warp-uniform)
            for (int kb = warp_min(next_band(k, -1)); kb != NO_BAND; kb = warp_min(next_band(k, kb))) {
                float sums[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                for (int j = 0; j < BAND_ITEMS; ++j)
                    if (k[j] == kb) {
                        sums[0] += w[j];
                        sums[1] += w[j] * z[j].u;
                        sums[2] += w[j] * z[j].v;
                        sums[3] += w[j] * z[j].d;
                    }
#pragma unroll
                for (int q = 0; q < 4; ++q) sums[q] = warp_all_sum(sums[q]);
                float group[NUM_STATS] = {sums[0], sums[1] / sums[0], sums[2] / sums[0], sums[3] / sums[0],
                                          0.f, 0.f, 0.f, 0.f};
#pragma unroll
                for (int j = 0; j < BAND_ITEMS; ++j)
                    if (k[j] == kb) {
                        const float du = z[j].u - group[1], dv = z[j].v - group[2], dd = z[j].d - group[3];
                        group[4] += w[j] * (du * du + z[j].u_im * z[j].u_im);
                        group[5] += w[j] * (dv * dv + z[j].v_im * z[j].v_im);
                        group[6] += w[j] * (du * dv + z[j].u_im * z[j].v_im);
                        group[7] += w[j] * (dd * dd + z[j].d_im * z[j].d_im);
                    }
#pragma unroll
                for (int q = 4; q < NUM_STATS; ++q) group[q] = warp_sum(group[q]);
                if (lane == 0) fold(acc[kb - k0][warp], group);
            }
        }
        __syncthreads();
        const int kb = threadIdx.x;  // one thread per band of the chunk
        if (kb < min(BAND_CHUNK, num_bands - k0)) {
            float total[NUM_STATS];
#pragma unroll
            for (int q = 0; q < NUM_STATS; ++q) total[q] = acc[kb][0][q];
            for (int other = 1; other < WARPS; ++other) fold(total, acc[kb][other]);
#pragma unroll
            for (int q = 0; q < NUM_STATS; ++q) out[(k0 + kb) * NUM_STATS + q] = total[q];
        }
        __syncthreads();
    }
}

// Gradient with respect to the half spectrum X, from the per-band coefficients (B*C', K, 7):
//   grad_re = c_mean + c_uu*(Re u - mean_u) + c_uv*(Re v - mean_v) + c_dd*(Re d - mean_d)
//   amplitude: G = grad_re * X/|X|   (0 where X = 0)
//   complex:   G = grad_re + i*(c_uu*Im u + c_uv*Im v + c_dd*Im d)
// with X, u, v, d as in band_stats_kernel. 1-D grid-stride over slices*M bins.
__global__ void __launch_bounds__(THREADS)
spectral_grad_kernel(const float2* __restrict__ S, const float2* __restrict__ D, const bool* __restrict__ base_is_x,
                     const int* __restrict__ band, const float* __restrict__ coefficients, float2* __restrict__ G,
                     long long slices, long long m_bins, int num_bands, int amplitude) {
    const long long total = slices * m_bins;
    for (long long i = (long long)blockIdx.x * THREADS + threadIdx.x; i < total;
         i += (long long)gridDim.x * THREADS) {
        const long long s = i / m_bins, m = i - s * m_bins;
        const float* c = coefficients + (s * num_bands + band[m]) * NUM_COEFFICIENTS;
        float2 x, y;
        const float2 diff = D[i];
        bin_spectra(S[i], diff, base_is_x[s], x, y);
        const BinValues z = bin_values(x, y, diff, amplitude);
        const float grad_re = c[0] + c[1] * (z.u - c[4]) + c[2] * (z.v - c[5]) + c[3] * (z.d - c[6]);
        if (amplitude) {
            const float scale = z.u > 0.f ? grad_re / z.u : 0.f;
            G[i] = make_float2(scale * x.x, scale * x.y);
        } else {
            G[i] = make_float2(grad_re, c[1] * z.u_im + c[2] * z.v_im + c[3] * z.d_im);
        }
    }
}

}  // namespace scc
