// Host-side declarations of the launchers in launchers.cu (raw pointers + stream), shared with
// torch_binding.cpp. Shapes and layouts: see kernels.cuh. Each returns the launch's cudaError_t.
#pragma once

#include <cuda_runtime_api.h>

namespace scc {

enum class Scalar { f32, f16, bf16 };            // logits and grad_input
enum class Target { u8, i32, i64, dense_f32 };   // label map (B, N) or dense float (B, C, N)

// What the activation kernels need to know about the problem.
struct ActivationArgs {
    int batch, num_classes;
    long long n;          // spatial samples per slice
    int offset;           // first output channel
    int activation;       // scc::Activation
    bool has_ignore;
    long long ignore_index;
    float root_n;         // sqrt(n), for activation_backward
    int blocks;           // blocks per batch item (grid y)
};

cudaError_t launch_parseval_forward(Scalar scalar, Target target_kind, const void* logits, const void* target,
                                    float* partials, const ActivationArgs& args, cudaStream_t stream);
cudaError_t launch_activate(Scalar scalar, Target target_kind, const void* logits, const void* target,
                            const bool* base_is_x, float* base, float* d, const ActivationArgs& args,
                            cudaStream_t stream);
cudaError_t launch_activation_backward(Scalar scalar, Target target_kind, const void* logits,
                                       const void* target, const float* coefficients, const float* grad_x,
                                       void* grad_input, const ActivationArgs& args, cudaStream_t stream);
cudaError_t launch_band_stats(const float2* S, const float2* D, const bool* base_is_x, const int* band,
                              const float* weight, float* partials, long long slices, long long m_bins,
                              int num_bands, bool amplitude, int blocks, cudaStream_t stream);
cudaError_t launch_spectral_grad(const float2* S, const float2* D, const bool* base_is_x, const int* band,
                                 const float* coefficients, float2* G, long long slices, long long m_bins,
                                 int num_bands, bool amplitude, int blocks, cudaStream_t stream);

}  // namespace scc
