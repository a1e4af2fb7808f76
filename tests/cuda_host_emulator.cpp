// Runs the CUDA kernels of csrc/kernels.cuh on the CPU, for tests on machines without a GPU.
//
// Compiled by the host compiler: every CUDA thread of a block is a std::thread, blocks run one
// after another (so a function-local __shared__ array can be a static), __syncthreads() is a
// barrier of the block and a warp shuffle is an exchange through a barrier of the warp's 32
// threads. Slow, and exact about what the kernels compute: indexing, masking, reductions.
// Built as a shared library by tests/cuda_utils.py (-I csrc -I <CUDA include>); its
// extern "C" launchers mirror those of launchers.cu, with the dtypes as codes (scc::Scalar,
// scc::Target) and ActivationArgs spelled out.

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>
#include <vector_types.h>

// CUDA's attributes mean nothing to the host compiler; a block's shared array is one static
#undef __global__
#undef __device__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

namespace emulator {

thread_local uint3 thread_index, block_index;
dim3 grid_size;

struct Warp {
    std::barrier<> barrier{32};
    long long slot[32];
};
std::barrier<>* block_barrier;
std::vector<std::unique_ptr<Warp>> warps;

template <typename V>
V exchange(V value, int source_lane) {
    Warp& warp = *warps[thread_index.x / 32];
    const int lane = thread_index.x % 32;
    std::memcpy(&warp.slot[lane], &value, sizeof(V));
    warp.barrier.arrive_and_wait();
    V out;
    std::memcpy(&out, &warp.slot[source_lane], sizeof(V));
    warp.barrier.arrive_and_wait();  // the slots are reused by the next exchange
    return out;
}

// Runs kernel<<<grid, threads>>>(args...) to completion.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, unsigned threads, Args... args) {
    grid_size = grid;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                std::barrier<> block(threads);
                block_barrier = &block;
                warps.clear();
                for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Warp>());
                std::vector<std::thread> pool;
                for (unsigned t = 0; t < threads; ++t)
                    pool.emplace_back([=] {
                        thread_index = uint3{t, 0, 0};
                        block_index = uint3{x, y, z};
                        kernel(args...);
                    });
                for (auto& thread : pool) thread.join();
            }
}

}  // namespace emulator

#define threadIdx emulator::thread_index
#define blockIdx emulator::block_index
#define gridDim emulator::grid_size

inline void __syncthreads() { emulator::block_barrier->arrive_and_wait(); }
template <typename V>
V __shfl_down_sync(unsigned, V value, int delta) {
    const int lane = threadIdx.x % 32;
    return emulator::exchange(value, lane + delta < 32 ? lane + delta : lane);
}
template <typename V>
V __shfl_xor_sync(unsigned, V value, int mask) {
    return emulator::exchange(value, (threadIdx.x % 32) ^ mask);
}
inline float __int_as_float(int bits) {
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}
using std::max;
using std::min;

#include "kernels.cuh"

namespace {

template <typename T>
struct Type {
    using type = T;
};

template <typename T, typename Fn>
void with_target(int target_kind, Fn fn) {
    switch (target_kind) {
        case 0: return fn(Type<T>{}, Type<unsigned char>{});
        case 1: return fn(Type<T>{}, Type<int>{});
        case 2: return fn(Type<T>{}, Type<long long>{});
        default: return fn(Type<T>{}, Type<float>{});
    }
}

template <typename Fn>
void with_types(int scalar, int target_kind, Fn fn) {
    switch (scalar) {
        case 0: return with_target<float>(target_kind, fn);
        case 1: return with_target<__half>(target_kind, fn);
        default: return with_target<__nv_bfloat16>(target_kind, fn);
    }
}

}  // namespace

extern "C" {

void launch_parseval_forward(int scalar, int target_kind, const void* logits, const void* target, float* partials,
                             int batch, int blocks, int classes, long long n, int offset, int activation,
                             int has_ignore, long long ignore_index) {
    with_types(scalar, target_kind, [&](auto t, auto l) {
        using T = typename decltype(t)::type;
        using L = typename decltype(l)::type;
        emulator::launch(scc::parseval_forward_kernel<T, L>, dim3(batch, blocks), scc::THREADS, (const T*)logits,
                         (const L*)target, partials, classes, n, offset, activation, has_ignore, ignore_index);
    });
}

void launch_activate(int scalar, int target_kind, const void* logits, const void* target, const bool* base_is_x,
                     float* base, float* d, int batch, int blocks, int classes, long long n, int offset,
                     int activation, int has_ignore, long long ignore_index) {
    with_types(scalar, target_kind, [&](auto t, auto l) {
        using T = typename decltype(t)::type;
        using L = typename decltype(l)::type;
        emulator::launch(scc::activate_kernel<T, L>, dim3(batch, blocks), scc::THREADS, (const T*)logits,
                         (const L*)target, base_is_x, base, d, classes, n, offset, activation, has_ignore,
                         ignore_index);
    });
}

void launch_activation_backward(int scalar, int target_kind, const void* logits, const void* target,
                                const float* coefficients, const float* grad_x, void* grad_input, int batch,
                                int blocks, int classes, long long n, int offset, int activation, int has_ignore,
                                long long ignore_index, float root_n) {
    with_types(scalar, target_kind, [&](auto t, auto l) {
        using T = typename decltype(t)::type;
        using L = typename decltype(l)::type;
        emulator::launch(scc::activation_backward_kernel<T, L>, dim3(batch, blocks), scc::THREADS, (const T*)logits,
                         (const L*)target, coefficients, grad_x, (T*)grad_input, classes, n, offset, activation,
                         has_ignore, ignore_index, root_n);
    });
}

void launch_band_stats(const float2* S, const float2* D, const bool* base_is_x, const int* band, const float* weight,
                       float* partials, long long slices, int blocks, long long m_bins, int num_bands, int amplitude) {
    emulator::launch(scc::band_stats_kernel, dim3(slices, blocks), scc::THREADS, S, D, base_is_x, band, weight,
                     partials, m_bins, num_bands, amplitude);
}

void launch_spectral_grad(const float2* S, const float2* D, const bool* base_is_x, const int* band,
                          const float* coefficients, float2* G, int blocks, long long slices, long long m_bins,
                          int num_bands, int amplitude) {
    emulator::launch(scc::spectral_grad_kernel, dim3(blocks), scc::THREADS, S, D, base_is_x, band, coefficients, G,
                     slices, m_bins, num_bands, amplitude);
}

}  // extern "C"
