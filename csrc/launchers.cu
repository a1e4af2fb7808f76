// Host launchers scc::launch_<kernel>: raw pointers and a stream in, one launch of
// scc::<kernel>_kernel (kernels.cuh) out. Only CUDA headers here, so the torch extension
// (torch_binding.cpp) is the only file that sees torch.
#include "launchers.h"
#include "kernels.cuh"

namespace scc {
namespace {

template <typename T>
struct Type {
    using type = T;
};

// Calls fn(Type<logits type>, Type<target type>) for the runtime dtypes.
template <typename T, typename Fn>
cudaError_t with_target(Target target_kind, Fn fn) {
    switch (target_kind) {
        case Target::u8: return fn(Type<T>{}, Type<unsigned char>{});
        case Target::i32: return fn(Type<T>{}, Type<int>{});
        case Target::i64: return fn(Type<T>{}, Type<long long>{});
        case Target::dense_f32: return fn(Type<T>{}, Type<float>{});
    }
    return cudaErrorInvalidValue;
}

template <typename Fn>
cudaError_t with_types(Scalar scalar, Target target_kind, Fn fn) {
    switch (scalar) {
        case Scalar::f32: return with_target<float>(target_kind, fn);
        case Scalar::f16: return with_target<__half>(target_kind, fn);
        case Scalar::bf16: return with_target<__nv_bfloat16>(target_kind, fn);
    }
    return cudaErrorInvalidValue;
}

dim3 grid_of(const ActivationArgs& a) { return dim3(a.batch, a.blocks); }

}  // namespace

cudaError_t launch_parseval_forward(Scalar scalar, Target target_kind, const void* logits, const void* target,
                                    float* partials, const ActivationArgs& a, cudaStream_t stream) {
    return with_types(scalar, target_kind, [&](auto t, auto l) {
        using T = typename decltype(t)::type;
        using L = typename decltype(l)::type;
        parseval_forward_kernel<T, L><<<grid_of(a), THREADS, 0, stream>>>(
            static_cast<const T*>(logits), static_cast<const L*>(target), partials, a.num_classes, a.n,
            a.offset, a.activation, a.has_ignore, a.ignore_index);
        return cudaGetLastError();
    });
}

cudaError_t launch_activate(Scalar scalar, Target target_kind, const void* logits, const void* target,
                            const bool* base_is_x, float* base, float* d, const ActivationArgs& a,
                            cudaStream_t stream) {
    return with_types(scalar, target_kind, [&](auto t, auto l) {
        using T = typename decltype(t)::type;
        using L = typename decltype(l)::type;
        activate_kernel<T, L><<<grid_of(a), THREADS, 0, stream>>>(static_cast<const T*>(logits),
                                                                  static_cast<const L*>(target), base_is_x, base, d,
                                                                  a.num_classes, a.n, a.offset, a.activation,
                                                                  a.has_ignore, a.ignore_index);
        return cudaGetLastError();
    });
}

cudaError_t launch_activation_backward(Scalar scalar, Target target_kind, const void* logits,
                                       const void* target, const float* coefficients, const float* grad_x,
                                       void* grad_input, const ActivationArgs& a, cudaStream_t stream) {
    return with_types(scalar, target_kind, [&](auto t, auto l) {
        using T = typename decltype(t)::type;
        using L = typename decltype(l)::type;
        activation_backward_kernel<T, L><<<grid_of(a), THREADS, 0, stream>>>(
            static_cast<const T*>(logits), static_cast<const L*>(target), coefficients, grad_x,
            static_cast<T*>(grad_input), a.num_classes, a.n, a.offset, a.activation, a.has_ignore,
            a.ignore_index, a.root_n);
        return cudaGetLastError();
    });
}

cudaError_t launch_band_stats(const float2* S, const float2* D, const bool* base_is_x, const int* band,
                              const float* weight, float* partials, long long slices, long long m_bins,
                              int num_bands, bool amplitude, int blocks, cudaStream_t stream) {
    band_stats_kernel<<<dim3(slices, blocks), THREADS, 0, stream>>>(S, D, base_is_x, band, weight, partials, m_bins,
                                                                    num_bands, amplitude);
    return cudaGetLastError();
}

cudaError_t launch_spectral_grad(const float2* S, const float2* D, const bool* base_is_x, const int* band,
                                 const float* coefficients, float2* G, long long slices, long long m_bins,
                                 int num_bands, bool amplitude, int blocks, cudaStream_t stream) {
    spectral_grad_kernel<<<blocks, THREADS, 0, stream>>>(S, D, base_is_x, band, coefficients, G, slices, m_bins,
                                                         num_bands, amplitude);
    return cudaGetLastError();
}

}  // namespace scc
