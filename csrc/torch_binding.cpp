// The torch extension scc_kernels._C: its launch_<kernel> functions check the tensors, then call
// scc::launch_<kernel> of launchers.cu (which launches scc::<kernel>_kernel of kernels.cuh) on
// PyTorch's current stream. Shapes and launch sizes are chosen by the Python glue
// (scc_kernels/backends/_cuda_launch.py), which also serves the CuPy launcher.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // what at::cuda::getCurrentCUDAStream is, without cuBLAS/cuSPARSE headers

#include <cmath>
#include <optional>

#include "launchers.h"

namespace {

void check(const at::Tensor& t, const char* name, std::optional<at::ScalarType> dtype = std::nullopt) {
    TORCH_CHECK(t.is_cuda(), "scc_kernels: ", name, " must be a CUDA tensor");
    TORCH_CHECK(t.is_contiguous(), "scc_kernels: ", name, " must be contiguous");
    if (dtype)
        TORCH_CHECK(t.scalar_type() == *dtype, "scc_kernels: ", name, " must be ", *dtype, ", got ", t.scalar_type());
}

void check_launch(cudaError_t error) {
    TORCH_CHECK(error == cudaSuccess, "scc_kernels: kernel launch failed: ", cudaGetErrorString(error));
}

scc::Scalar scalar_of(const at::Tensor& logits) {
    switch (logits.scalar_type()) {
        case at::kFloat: return scc::Scalar::f32;
        case at::kHalf: return scc::Scalar::f16;
        case at::kBFloat16: return scc::Scalar::bf16;
        default:
            TORCH_CHECK(false, "scc_kernels: logits must be float32, float16 or bfloat16, got ", logits.scalar_type());
    }
}

// A label map (B, N) of uint8 / int32 / int64, or a dense float32 target shaped like the logits.
scc::Target target_of(const at::Tensor& logits, const at::Tensor& target) {
    if (target.dim() == 3) {
        TORCH_CHECK(target.sizes() == logits.sizes(), "scc_kernels: dense target must match the logits' shape");
        check(target, "target", at::kFloat);
        return scc::Target::dense_f32;
    }
    TORCH_CHECK(target.dim() == 2 && target.size(0) == logits.size(0) && target.size(1) == logits.size(2),
                "scc_kernels: label map must be (B, N)");
    check(target, "target");
    switch (target.scalar_type()) {
        case at::kByte: return scc::Target::u8;
        case at::kInt: return scc::Target::i32;
        case at::kLong: return scc::Target::i64;
        default: TORCH_CHECK(false, "scc_kernels: label map must be uint8, int32 or int64, got ", target.scalar_type());
    }
}

// logits (B, C, N); blocks: grid y of the activation kernels
scc::ActivationArgs activation_args(const at::Tensor& logits, int64_t offset, int64_t activation,
                                    std::optional<int64_t> ignore_index, int64_t blocks) {
    check(logits, "logits");
    TORCH_CHECK(logits.dim() == 3, "scc_kernels: logits must be (B, C, N)");
    TORCH_CHECK(offset == 0 || offset == 1, "scc_kernels: offset must be 0 or 1");
    TORCH_CHECK(activation >= 0 && activation <= 2, "scc_kernels: unknown activation code ", activation);
    TORCH_CHECK(blocks >= 1 && blocks <= 65535, "scc_kernels: blocks must be in [1, 65535]");
    const int64_t n = logits.size(2);
    return scc::ActivationArgs{static_cast<int>(logits.size(0)), static_cast<int>(logits.size(1)), n,
                               static_cast<int>(offset), static_cast<int>(activation), ignore_index.has_value(),
                               ignore_index.value_or(0), static_cast<float>(std::sqrt(static_cast<double>(n))),
                               static_cast<int>(blocks)};
}

const float2* complex_ptr(const at::Tensor& t, const char* name) {
    check(t, name, at::kComplexFloat);
    return reinterpret_cast<const float2*>(t.data_ptr());
}

void launch_parseval_forward(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& partials,
                             int64_t offset, int64_t activation, std::optional<int64_t> ignore_index) {
    const c10::cuda::CUDAGuard guard(logits.device());
    const auto args = activation_args(logits, offset, activation, ignore_index, partials.size(1));
    check(partials, "partials", at::kFloat);
    TORCH_CHECK(partials.dim() == 4 && partials.size(0) == args.batch &&
                    partials.size(2) == args.num_classes - offset && partials.size(3) == 6,
                "scc_kernels: partials must be (B, G, C', 6)");
    check_launch(scc::launch_parseval_forward(scalar_of(logits), target_of(logits, target), logits.data_ptr(),
                                              target.data_ptr(), partials.data_ptr<float>(), args,
                                              c10::cuda::getCurrentCUDAStream()));
}

// base_is_x (B, C') bool; base (x or the target, per slice) and d = x - target (B, C', N) float32
void launch_activate(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& base_is_x,
                     const at::Tensor& base, const at::Tensor& d, int64_t offset, int64_t activation,
                     std::optional<int64_t> ignore_index, int64_t blocks) {
    const c10::cuda::CUDAGuard guard(logits.device());
    const auto args = activation_args(logits, offset, activation, ignore_index, blocks);
    check(base_is_x, "base_is_x", at::kBool);
    check(base, "base", at::kFloat);
    check(d, "d", at::kFloat);
    TORCH_CHECK(base_is_x.sizes() == at::IntArrayRef({args.batch, args.num_classes - offset}),
                "scc_kernels: base_is_x must be (B, C')");
    const std::vector<int64_t> shape{args.batch, args.num_classes - offset, args.n};
    TORCH_CHECK(base.sizes() == shape && d.sizes() == shape, "scc_kernels: base and d must be (B, C', N)");
    check_launch(scc::launch_activate(scalar_of(logits), target_of(logits, target), logits.data_ptr(),
                                      target.data_ptr(), base_is_x.data_ptr<bool>(), base.data_ptr<float>(),
                                      d.data_ptr<float>(), args, c10::cuda::getCurrentCUDAStream()));
}

// Exactly one of coefficients (B, C', 7) and grad_x (B, C', N) is given.
void launch_activation_backward(const at::Tensor& logits, const at::Tensor& target,
                                const std::optional<at::Tensor>& coefficients, const std::optional<at::Tensor>& grad_x,
                                const at::Tensor& grad_input, int64_t offset, int64_t activation,
                                std::optional<int64_t> ignore_index, int64_t blocks) {
    const c10::cuda::CUDAGuard guard(logits.device());
    const auto args = activation_args(logits, offset, activation, ignore_index, blocks);
    TORCH_CHECK(coefficients.has_value() != grad_x.has_value(), "scc_kernels: give one of coefficients and grad_x");
    const int64_t channels = args.num_classes - offset;
    if (coefficients) {
        check(*coefficients, "coefficients", at::kFloat);
        TORCH_CHECK(coefficients->sizes() == at::IntArrayRef({args.batch, channels, 7}),
                    "scc_kernels: coefficients must be (B, C', 7)");
    } else {
        check(*grad_x, "grad_x", at::kFloat);
        TORCH_CHECK(grad_x->sizes() == at::IntArrayRef({args.batch, channels, args.n}),
                    "scc_kernels: grad_x must be (B, C', N)");
    }
    check(grad_input, "grad_input", logits.scalar_type());
    TORCH_CHECK(grad_input.sizes() == logits.sizes(), "scc_kernels: grad_input must be shaped like the logits");
    check_launch(scc::launch_activation_backward(
        scalar_of(logits), target_of(logits, target), logits.data_ptr(), target.data_ptr(),
        coefficients ? coefficients->data_ptr<float>() : nullptr, grad_x ? grad_x->data_ptr<float>() : nullptr,
        grad_input.data_ptr(), args, c10::cuda::getCurrentCUDAStream()));
}

// Half spectra (S slices, M bins) of the base and of the difference, and which base, per slice.
void check_spectra(const at::Tensor& S, const at::Tensor& D, const at::Tensor& base_is_x) {
    TORCH_CHECK(S.dim() == 2 && D.sizes() == S.sizes(), "scc_kernels: S and D must be (slices, M)");
    check(base_is_x, "base_is_x", at::kBool);
    TORCH_CHECK(base_is_x.numel() == S.size(0), "scc_kernels: base_is_x needs one entry per slice");
}

// S, D (slices, M) complex64; base_is_x (slices,) bool; band (M,) int32; weight (M,) float32;
// partials (slices, G, K, 8).
void launch_band_stats(const at::Tensor& S, const at::Tensor& D, const at::Tensor& base_is_x, const at::Tensor& band,
                       const at::Tensor& weight, const at::Tensor& partials, bool amplitude) {
    const c10::cuda::CUDAGuard guard(S.device());
    check_spectra(S, D, base_is_x);
    const int64_t slices = S.size(0), m_bins = S.size(1);
    check(band, "band", at::kInt);
    check(weight, "weight", at::kFloat);
    TORCH_CHECK(band.numel() == m_bins && weight.numel() == m_bins, "scc_kernels: band and weight need M entries");
    check(partials, "partials", at::kFloat);
    TORCH_CHECK(partials.dim() == 4 && partials.size(0) == slices && partials.size(3) == 8,
                "scc_kernels: partials must be (slices, G, K, 8)");
    TORCH_CHECK(partials.size(1) >= 1 && partials.size(1) <= 65535, "scc_kernels: G must be in [1, 65535]");
    check_launch(scc::launch_band_stats(complex_ptr(S, "S"), complex_ptr(D, "D"), base_is_x.data_ptr<bool>(),
                                        band.data_ptr<int>(), weight.data_ptr<float>(), partials.data_ptr<float>(),
                                        slices, m_bins, static_cast<int>(partials.size(2)), amplitude,
                                        static_cast<int>(partials.size(1)), c10::cuda::getCurrentCUDAStream()));
}

// G (slices, M) complex64, the gradient of the prediction's half spectrum, from S, D, base_is_x
// (as launch_band_stats takes them), band (M,) and coefficients (slices, K, 7).
void launch_spectral_grad(const at::Tensor& S, const at::Tensor& D, const at::Tensor& base_is_x, const at::Tensor& band,
                          const at::Tensor& coefficients, const at::Tensor& G, bool amplitude, int64_t blocks) {
    const c10::cuda::CUDAGuard guard(S.device());
    check_spectra(S, D, base_is_x);
    TORCH_CHECK(G.sizes() == S.sizes(), "scc_kernels: G must be (slices, M)");
    const int64_t slices = S.size(0), m_bins = S.size(1);
    check(band, "band", at::kInt);
    TORCH_CHECK(band.numel() == m_bins, "scc_kernels: band needs M entries");
    check(coefficients, "coefficients", at::kFloat);
    TORCH_CHECK(coefficients.dim() == 3 && coefficients.size(0) == slices && coefficients.size(2) == 7,
                "scc_kernels: coefficients must be (slices, K, 7)");
    check(G, "G", at::kComplexFloat);
    TORCH_CHECK(blocks >= 1 && blocks <= 2147483647LL, "scc_kernels: blocks out of range");
    check_launch(scc::launch_spectral_grad(
        complex_ptr(S, "S"), complex_ptr(D, "D"), base_is_x.data_ptr<bool>(), band.data_ptr<int>(),
        coefficients.data_ptr<float>(), reinterpret_cast<float2*>(G.data_ptr()), slices, m_bins,
        static_cast<int>(coefficients.size(1)), amplitude, static_cast<int>(blocks),
        c10::cuda::getCurrentCUDAStream()));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "scc_kernels CUDA kernels (see csrc/kernels.cuh)";
    m.def("launch_parseval_forward", &launch_parseval_forward);
    m.def("launch_activate", &launch_activate);
    m.def("launch_activation_backward", &launch_activation_backward);
    m.def("launch_band_stats", &launch_band_stats);
    m.def("launch_spectral_grad", &launch_spectral_grad);
}
