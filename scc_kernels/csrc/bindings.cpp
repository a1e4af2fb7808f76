// The torch extension scc_kernels._C: checks the tensors, then calls the launchers of
// scc_kernels.cu on PyTorch's current stream. Shapes and launch sizes are chosen by the Python
// glue (scc_kernels/backends/cuda_backend.py), which also serves the CuPy launcher.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // what at::cuda::getCurrentCUDAStream is, without cuBLAS/cuSPARSE headers

#include <cmath>
#include <optional>

#include "scc_kernels.h"

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

void parseval_forward(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& partials, int64_t offset,
                      int64_t activation, std::optional<int64_t> ignore_index) {
    const c10::cuda::CUDAGuard guard(logits.device());
    const auto args = activation_args(logits, offset, activation, ignore_index, partials.size(1));
    check(partials, "partials", at::kFloat);
    TORCH_CHECK(partials.dim() == 4 && partials.size(0) == args.batch &&
                    partials.size(2) == args.num_classes - offset && partials.size(3) == 5,
                "scc_kernels: partials must be (B, G, C', 5)");
    check_launch(scc::launch_parseval_forward(scalar_of(logits), target_of(logits, target), logits.data_ptr(),
                                              target.data_ptr(), partials.data_ptr<float>(), args,
                                              c10::cuda::getCurrentCUDAStream()));
}

void activate(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& x, const at::Tensor& y,
              int64_t offset, int64_t activation, std::optional<int64_t> ignore_index, int64_t blocks) {
    const c10::cuda::CUDAGuard guard(logits.device());
    const auto args = activation_args(logits, offset, activation, ignore_index, blocks);
    check(x, "x", at::kFloat);
    check(y, "y", at::kFloat);
    const std::vector<int64_t> shape{args.batch, args.num_classes - offset, args.n};
    TORCH_CHECK(x.sizes() == shape && y.sizes() == shape, "scc_kernels: x and y must be (B, C', N)");
    check_launch(scc::launch_activate(scalar_of(logits), target_of(logits, target), logits.data_ptr(),
                                      target.data_ptr(), x.data_ptr<float>(), y.data_ptr<float>(), args,
                                      c10::cuda::getCurrentCUDAStream()));
}

// Exactly one of grad_sums (B, C', 5) and grad_x (B, C', N) is given.
void activation_backward(const at::Tensor& logits, const at::Tensor& target,
                         const std::optional<at::Tensor>& grad_sums, const std::optional<at::Tensor>& grad_x,
                         const at::Tensor& grad_input, int64_t offset, int64_t activation,
                         std::optional<int64_t> ignore_index, int64_t blocks) {
    const c10::cuda::CUDAGuard guard(logits.device());
    const auto args = activation_args(logits, offset, activation, ignore_index, blocks);
    TORCH_CHECK(grad_sums.has_value() != grad_x.has_value(), "scc_kernels: give one of grad_sums and grad_x");
    const int64_t channels = args.num_classes - offset;
    if (grad_sums) {
        check(*grad_sums, "grad_sums", at::kFloat);
        TORCH_CHECK(grad_sums->sizes() == at::IntArrayRef({args.batch, channels, 5}),
                    "scc_kernels: grad_sums must be (B, C', 5)");
    } else {
        check(*grad_x, "grad_x", at::kFloat);
        TORCH_CHECK(grad_x->sizes() == at::IntArrayRef({args.batch, channels, args.n}),
                    "scc_kernels: grad_x must be (B, C', N)");
    }
    check(grad_input, "grad_input", logits.scalar_type());
    TORCH_CHECK(grad_input.sizes() == logits.sizes(), "scc_kernels: grad_input must be shaped like the logits");
    check_launch(scc::launch_activation_backward(
        scalar_of(logits), target_of(logits, target), logits.data_ptr(), target.data_ptr(),
        grad_sums ? grad_sums->data_ptr<float>() : nullptr, grad_x ? grad_x->data_ptr<float>() : nullptr,
        grad_input.data_ptr(), args, c10::cuda::getCurrentCUDAStream()));
}

// X, Y (S, M) complex64; band (M,) int32; weight (M,) float32; partials (S, G, K, 5);
// abs_y (S, M) float32 for the amplitude spectrum, absent for the complex one.
void band_stats(const at::Tensor& X, const at::Tensor& Y, const at::Tensor& band, const at::Tensor& weight,
                const at::Tensor& partials, const std::optional<at::Tensor>& abs_y) {
    const c10::cuda::CUDAGuard guard(X.device());
    TORCH_CHECK(X.dim() == 2 && Y.sizes() == X.sizes(), "scc_kernels: X and Y must be (S, M)");
    const int64_t slices = X.size(0), m_bins = X.size(1);
    check(band, "band", at::kInt);
    check(weight, "weight", at::kFloat);
    TORCH_CHECK(band.numel() == m_bins && weight.numel() == m_bins, "scc_kernels: band and weight need M entries");
    check(partials, "partials", at::kFloat);
    TORCH_CHECK(partials.dim() == 4 && partials.size(0) == slices && partials.size(3) == 5,
                "scc_kernels: partials must be (S, G, K, 5)");
    TORCH_CHECK(partials.size(1) >= 1 && partials.size(1) <= 65535, "scc_kernels: G must be in [1, 65535]");
    if (abs_y) {
        check(*abs_y, "abs_y", at::kFloat);
        TORCH_CHECK(abs_y->sizes() == X.sizes(), "scc_kernels: abs_y must be (S, M)");
    }
    check_launch(scc::launch_band_stats(complex_ptr(X, "X"), complex_ptr(Y, "Y"), band.data_ptr<int>(),
                                        weight.data_ptr<float>(), partials.data_ptr<float>(),
                                        abs_y ? abs_y->data_ptr<float>() : nullptr, slices, m_bins,
                                        static_cast<int>(partials.size(2)), abs_y.has_value(),
                                        static_cast<int>(partials.size(1)), c10::cuda::getCurrentCUDAStream()));
}

// G (S, M) complex64 from X (S, M), |Y| (amplitude) or Y (complex), band (M,), grad_sums (S, K, 5).
void spectral_grad(const at::Tensor& X, const std::optional<at::Tensor>& abs_y, const std::optional<at::Tensor>& Y,
                   const at::Tensor& band, const at::Tensor& grad_sums, const at::Tensor& G, int64_t blocks) {
    const c10::cuda::CUDAGuard guard(X.device());
    TORCH_CHECK(X.dim() == 2 && G.sizes() == X.sizes(), "scc_kernels: X and G must be (S, M)");
    TORCH_CHECK(abs_y.has_value() != Y.has_value(), "scc_kernels: give one of abs_y and Y");
    const int64_t slices = X.size(0), m_bins = X.size(1);
    if (abs_y) {
        check(*abs_y, "abs_y", at::kFloat);
        TORCH_CHECK(abs_y->sizes() == X.sizes(), "scc_kernels: abs_y must be (S, M)");
    } else {
        TORCH_CHECK(Y->sizes() == X.sizes(), "scc_kernels: Y must be (S, M)");
    }
    check(band, "band", at::kInt);
    TORCH_CHECK(band.numel() == m_bins, "scc_kernels: band needs M entries");
    check(grad_sums, "grad_sums", at::kFloat);
    TORCH_CHECK(grad_sums.dim() == 3 && grad_sums.size(0) == slices && grad_sums.size(2) == 5,
                "scc_kernels: grad_sums must be (S, K, 5)");
    TORCH_CHECK(blocks >= 1 && blocks <= 2147483647LL, "scc_kernels: blocks out of range");
    check_launch(scc::launch_spectral_grad(
        complex_ptr(X, "X"), abs_y ? abs_y->data_ptr<float>() : nullptr, Y ? complex_ptr(*Y, "Y") : nullptr,
        band.data_ptr<int>(), grad_sums.data_ptr<float>(), reinterpret_cast<float2*>(G.data_ptr()), slices, m_bins,
        static_cast<int>(grad_sums.size(1)), static_cast<int>(blocks), c10::cuda::getCurrentCUDAStream()));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "scc_kernels CUDA kernels (see scc_kernels/csrc/scc_kernels.cuh)";
    m.def("parseval_forward", &parseval_forward);
    m.def("activate", &activate);
    m.def("activation_backward", &activation_backward);
    m.def("band_stats", &band_stats);
    m.def("spectral_grad", &spectral_grad);
}
