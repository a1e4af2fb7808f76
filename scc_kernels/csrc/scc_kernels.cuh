// Device code of the SCC kernels: no host-only includes, so that NVRTC (CuPy) compiles this
// file as it is, and nvcc compiles it through scc_kernels.cu for the torch extension.
//
// Layouts (all contiguous, row-major):
//   logits      (B, C, N)  float / __half / __nv_bfloat16   N = number of spatial samples
//   target      (B, N) integer label map (unsigned char, int, long long)
//               or (B, C, N) float (dense one-hot / soft target): template parameter L = float
//   sums        the five band sums of _sums.SUMS: (sum_u, sum_v, sum_uv, sum_uu, sum_vv)
//   X, Y        (S, M) complex64 rfftn half spectra, S = B*C' slices, M = half-grid bins
// Output channels are offset..C-1 (offset = 1 drops the background channel).
// Every reduction has a fixed order (block partials, summed afterwards by torch): the results
// are bitwise reproducible for a given shape and launch configuration.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace scc {

// Block size of every kernel: launchers must use exactly this (shared arrays are sized by it).
constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;
// Bins per thread and pass in band_stats, and bands held in shared memory per pass.
constexpr int BAND_ITEMS = 4;
constexpr int BAND_CHUNK = 32;

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

__device__ __forceinline__ int warp_min(int x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x = min(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;  // in every lane
}

__device__ __forceinline__ int warp_max(int x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x = max(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;
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
// grid (B, G); partials (B, G, C', 5), zero-initialised; block (b, g) adds its tiles to row (b, g).

template <typename T, typename L>
__global__ void __launch_bounds__(THREADS)
parseval_forward(const T* __restrict__ logits, const L* __restrict__ target, float* __restrict__ partials,
                 int num_classes, long long n, int offset, int activation, int has_ignore,
                 long long ignore_index, float root_n) {
    constexpr int VEC = VecOf<T>::value;
    const int b = blockIdx.x;
    const int channels = num_classes - offset;
    const T* logits_b = logits + (long long)b * num_classes * n;
    const L* target_b = target + (long long)b * (IsLabelMap<L>::value ? 1 : num_classes) * n;
    float* out = partials + ((long long)b * gridDim.y + blockIdx.y) * channels * 5;
    const bool x_aligned = rows_aligned<T, VEC>(logits, n), t_aligned = rows_aligned<L, VEC>(target, n);

    // the tile loop bound is the same for the whole block: block_sum needs every thread
    for (long long tile = blockIdx.y; tile * THREADS * VEC < n; tile += gridDim.y) {
        const long long n0 = (tile * THREADS + threadIdx.x) * VEC;
        Tile<T, L, VEC> tl;
        tl.init(logits_b, target_b, num_classes, n, n0, activation, has_ignore, ignore_index, x_aligned,
                t_aligned);
        for (int c = offset; c < num_classes; ++c) {
            float p[VEC], t[VEC], acc[3] = {0.f, 0.f, 0.f};
            tl.prob(p, c, true);
            tl.truth(t, c);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                acc[0] += p[i] * t[i];
                acc[1] += p[i] * p[i];
                acc[2] += t[i] * t[i];
            }
            block_sum(acc);
            float* o = out + (c - offset) * 5;
            if (threadIdx.x == 0) {  // thread 0 also owns sample 0 when n0 == 0
                if (n0 == 0) {
                    o[0] = root_n * p[0];
                    o[1] = root_n * t[0];
                }
                o[2] += acc[0];
                o[3] += acc[1];
                o[4] += acc[2];
            }
        }
    }
}

// Activated prediction and target of the output channels as float32, for the transform path:
// x, y (B, C', N), prediction and target zero at ignored samples. grid (B, G).
template <typename T, typename L>
__global__ void __launch_bounds__(THREADS)
activate(const T* __restrict__ logits, const L* __restrict__ target, float* __restrict__ x,
         float* __restrict__ y, int num_classes, long long n, int offset, int activation, int has_ignore,
         long long ignore_index) {
    constexpr int VEC = VecOf<T>::value;
    const int b = blockIdx.x;
    const int channels = num_classes - offset;
    const T* logits_b = logits + (long long)b * num_classes * n;
    const L* target_b = target + (long long)b * (IsLabelMap<L>::value ? 1 : num_classes) * n;
    const bool x_aligned = rows_aligned<T, VEC>(logits, n), t_aligned = rows_aligned<L, VEC>(target, n);
    const bool out_aligned = rows_aligned<float, VEC>(x, n) && rows_aligned<float, VEC>(y, n);

    for (long long n0 = ((long long)blockIdx.y * THREADS + threadIdx.x) * VEC; n0 < n;
         n0 += (long long)gridDim.y * THREADS * VEC) {
        Tile<T, L, VEC> tl;
        tl.init(logits_b, target_b, num_classes, n, n0, activation, has_ignore, ignore_index, x_aligned,
                t_aligned);
        for (int c = offset; c < num_classes; ++c) {
            float p[VEC], t[VEC];
            tl.prob(p, c, true);
            tl.truth(t, c);
            const long long row = ((long long)b * channels + c - offset) * n;
            store_tile<VEC>(x + row, p, n0, n, out_aligned);
            store_tile<VEC>(y + row, t, n0, n, out_aligned);
        }
    }
}

// Gradient of the logits from the gradient g of the activated prediction (output channels; the
// background channel and ignored samples get g = 0), through the activation's Jacobian.
// g comes from either
//   grad_sums (B, C', 5): the Parseval form, g = g_uv*t + 2*g_uu*p (+ sqrt(N)*g_u at sample 0), or
//   grad_x (B, C', N): the inverse transform of the spectral path (then grad_sums is null).
// grid (B, G); grad_input (B, C, N) in the logits' dtype, every element written.
template <typename T, typename L>
__global__ void __launch_bounds__(THREADS)
activation_backward(const T* __restrict__ logits, const L* __restrict__ target,
                    const float* __restrict__ grad_sums, const float* __restrict__ grad_x,
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
            if (grad_sums != nullptr) {
                const float* gs = grad_sums + ((long long)b * channels + c - offset) * 5;
                float t[VEC];
                tl.truth(t, c);
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    g[i] = gs[2] * t[i] + 2.f * gs[3] * p[i];
                    if (n0 + i == 0) g[i] += root_n * gs[0];
                }
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

// The five band sums of each slice over the full spectrum: every half-grid bin m counts weight[m]
// times (1 or 2, its Hermitian weight). amplitude: u = |X|, v = |Y|; else u = X, v = Y.
// grid (S, G); partials (S, G, K, 5), every element written. abs_y (S, M): |Y| for the backward
// (amplitude only, else null).
__global__ void __launch_bounds__(THREADS)
band_stats(const float2* __restrict__ X, const float2* __restrict__ Y, const int* __restrict__ band,
           const float* __restrict__ weight, float* __restrict__ partials, float* __restrict__ abs_y,
           long long m_bins, int num_bands, int amplitude) {
    __shared__ float acc[BAND_CHUNK][WARPS][5];
    const long long s = blockIdx.x;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    X += s * m_bins;
    Y += s * m_bins;
    float* out = partials + (s * gridDim.y + blockIdx.y) * num_bands * 5;

    // bands in chunks of BAND_CHUNK (one pass for K <= BAND_CHUNK): the shared array stays small
    for (int k0 = 0; k0 < num_bands; k0 += BAND_CHUNK) {
        for (int i = threadIdx.x; i < BAND_CHUNK * WARPS * 5; i += THREADS) (&acc[0][0][0])[i] = 0.f;
        __syncthreads();
        // the loop bound is the same for the whole warp: the shuffles need all its lanes
        for (long long base = ((long long)blockIdx.y * THREADS + warp * 32) * BAND_ITEMS; base < m_bins;
             base += (long long)gridDim.y * THREADS * BAND_ITEMS) {
            float stat[BAND_ITEMS][5];
            int k[BAND_ITEMS];
            int lo = 0x7fffffff, hi = -1;  // range of this chunk's bands among the warp's bins
#pragma unroll
            for (int j = 0; j < BAND_ITEMS; ++j) {
                const long long m = base + (long long)lane * BAND_ITEMS + j;
                k[j] = -1;
                if (m < m_bins) {
                    const float2 x = X[m], y = Y[m];
                    const float w = weight[m];
                    if (amplitude) {
                        const float u = hypotf(x.x, x.y), v = hypotf(y.x, y.y);
                        if (abs_y != nullptr && k0 == 0) abs_y[s * m_bins + m] = v;
                        stat[j][0] = w * u;
                        stat[j][1] = w * v;
                        stat[j][2] = w * u * v;
                    } else {
                        stat[j][0] = w * x.x;
                        stat[j][1] = w * y.x;
                        stat[j][2] = w * (x.x * y.x + x.y * y.y);
                    }
                    stat[j][3] = w * (x.x * x.x + x.y * x.y);
                    stat[j][4] = w * (y.x * y.x + y.y * y.y);
                    const int kb = band[m];
                    if (kb >= k0 && kb < k0 + BAND_CHUNK) {
                        k[j] = kb;
                        lo = min(lo, kb);
                        hi = max(hi, kb);
                    }
                }
            }
            lo = warp_min(lo);
            hi = warp_max(hi);
            for (int kb = lo; kb <= hi; ++kb) {
                float v[5] = {0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
                for (int j = 0; j < BAND_ITEMS; ++j)
                    if (k[j] == kb) {
#pragma unroll
                        for (int q = 0; q < 5; ++q) v[q] += stat[j][q];
                    }
#pragma unroll
                for (int q = 0; q < 5; ++q) {
                    v[q] = warp_sum(v[q]);
                    if (lane == 0) acc[kb - k0][warp][q] += v[q];
                }
            }
        }
        __syncthreads();
        const int in_chunk = min(BAND_CHUNK, num_bands - k0);
        for (int i = threadIdx.x; i < in_chunk * 5; i += THREADS) {
            const int kb = i / 5, q = i % 5;
            float total = 0.f;
#pragma unroll
            for (int w = 0; w < WARPS; ++w) total += acc[kb][w][q];
            out[(k0 + kb) * 5 + q] = total;
        }
        __syncthreads();
    }
}

// Gradient with respect to the half spectrum X, from the gradient of the band sums (S, K, 5):
//   amplitude: G = (g_u + g_uv*|Y| + 2*g_uu*|X|) * X/|X|   (0 where X = 0)
//   complex:   G =  g_u + g_uv*Y   + 2*g_uu*X
// abs_y (amplitude) or Y (complex): the other one is null. 1-D grid-stride over S*M bins.
__global__ void __launch_bounds__(THREADS)
spectral_grad(const float2* __restrict__ X, const float* __restrict__ abs_y, const float2* __restrict__ Y,
              const int* __restrict__ band, const float* __restrict__ grad_sums, float2* __restrict__ G,
              long long slices, long long m_bins, int num_bands) {
    const long long total = slices * m_bins;
    for (long long i = (long long)blockIdx.x * THREADS + threadIdx.x; i < total;
         i += (long long)gridDim.x * THREADS) {
        const long long s = i / m_bins, m = i - s * m_bins;
        const float* g = grad_sums + (s * num_bands + band[m]) * 5;
        const float2 x = X[i];
        float2 out;
        if (abs_y != nullptr) {
            const float a = hypotf(x.x, x.y);
            const float scale = a > 0.f ? (g[0] + g[2] * abs_y[i] + 2.f * g[3] * a) / a : 0.f;
            out = make_float2(scale * x.x, scale * x.y);
        } else {
            const float2 y = Y[i];
            out = make_float2(g[0] + g[2] * y.x + 2.f * g[3] * x.x, g[2] * y.y + 2.f * g[3] * x.y);
        }
        G[i] = out;
    }
}

}  // namespace scc
