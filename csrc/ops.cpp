// The torch binding of the fastncsn CUDA kernels: the module fastncsn._C.
//
// Loading the module registers the custom ops fastncsn_cuda::* (schemas in
// TORCH_LIBRARY below, the one place they are written; CUDA kernels in
// TORCH_LIBRARY_IMPL).  fastncsn/ops/cuda.py adds the fake (meta) kernels and
// autograd in Python and holds the public wrappers.  This file only checks
// arguments, allocates, brings operands to the state's layout, and calls the
// raw-pointer launchers of fastncsn_kernels.h on the current stream.
#include <Python.h>

#include <array>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include "fastncsn_kernels.h"

namespace {

using at::Tensor;

// Error messages are assembled from plain strings.  On the H100 image (torch 2.11, g++ 13.3) a
// TORCH_CHECK whose message streamed a shape or an integer crashed the process (segfault while the
// error was raised) instead of raising ValueError; messages made of strings alone raised cleanly
// (seen 2026-11-22).  So every non-string piece goes through txt() first.
std::string txt(int64_t v) { return std::to_string(v); }
std::string txt(double v) { return std::to_string(v); }
std::string txt(at::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}
std::string txt(const at::Device& d) {
  if (d.is_cuda()) return "cuda:" + std::to_string(static_cast<int>(d.index()));
  return d.is_cpu() ? std::string("cpu") : std::string("a non-CUDA device");
}
std::string txt(at::ScalarType t) { return std::string(c10::toString(t)); }

fastncsn::DType kernel_dtype(const Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return fastncsn::DType::kFloat32;
    case at::kBFloat16: return fastncsn::DType::kBFloat16;
    case at::kHalf: return fastncsn::DType::kFloat16;
    default:
      TORCH_CHECK_TYPE(false, name, ": expected a float32, bfloat16 or float16 tensor, got ", txt(t.scalar_type()));
  }
}

void check_cuda_tensor(const Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", txt(t.device()));
  TORCH_CHECK_VALUE(t.device() == device, name, ": expected a tensor on ", txt(device), " (x's device), got ", txt(t.device()));
}

// Multiprocessor count per device, read once (no query inside a captured region after the first call).
int num_sms(c10::DeviceIndex device) {
  static std::array<int, 64> cache{};
  static std::mutex lock;
  std::lock_guard<std::mutex> guard(lock);
  int& n = cache.at(static_cast<size_t>(device));
  if (n == 0) {
    const cudaError_t err = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
    TORCH_CHECK(err == cudaSuccess, "fastncsn_cuda: cannot read the SM count: ", cudaGetErrorString(err));
  }
  return n;
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "fastncsn_cuda::", op, ": CUDA error: ", cudaGetErrorString(err));
}

// Channels-last if x is channels-last dense and not also contiguous, else contiguous
// (the rule of fastncsn/ops/common.py dense_format).
at::MemoryFormat dense_format(const Tensor& x) {
  if (x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast))
    return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

bool is_dense(const Tensor& x) {
  return x.is_contiguous() || (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast));
}

fastncsn::CinPlan cin_plan(int64_t plan) {
  TORCH_CHECK_VALUE(plan >= -1 && plan <= 1, "plan: expected -1 (auto), 0 (fused) or 1 (split), got ", txt(plan));
  return static_cast<fastncsn::CinPlan>(plan);
}

bool elu_of(c10::string_view activation) {
  TORCH_CHECK_VALUE(activation == "none" || activation == "elu", "activation: expected 'none' or 'elu', got '",
                    std::string(activation), "'");
  return activation == "elu";
}

// Checks the CIN++ operands; returns the launch shape of the dense tensor xd.
fastncsn::CinShape cin_shape(const Tensor& x, const Tensor& xd, const Tensor& level_index, const Tensor& weight,
                             double eps, bool elu) {
  TORCH_CHECK_VALUE(x.dim() == 4, "x: expected a 4-D tensor [N, C, H, W], got ", txt(x.sizes()));
  kernel_dtype(x, "x");
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  check_cuda_tensor(level_index, "level_index", x.device());
  TORCH_CHECK_TYPE(level_index.scalar_type() == at::kLong || level_index.scalar_type() == at::kInt,
                   "level_index: expected an int64 or int32 tensor, got ", txt(level_index.scalar_type()));
  TORCH_CHECK_VALUE(level_index.dim() == 1 && level_index.size(0) == n, "level_index: expected shape [", txt(n),
                    "], got ", txt(level_index.sizes()));
  check_cuda_tensor(weight, "weight", x.device());
  TORCH_CHECK_TYPE(weight.is_floating_point(), "weight: expected a floating-point tensor, got ", txt(weight.scalar_type()));
  TORCH_CHECK_VALUE(weight.dim() == 2 && (weight.size(1) == 2 * c || weight.size(1) == 3 * c),
                    "weight: expected [num_levels, 3*C] (gamma|alpha|beta) or [num_levels, 2*C] with C=", txt(c),
                    ", got ", txt(weight.sizes()));
  TORCH_CHECK_VALUE(eps >= 0, "eps: expected a non-negative epsilon, got ", txt(eps));
  const int64_t stride_p = w > 1 ? xd.stride(3) : (h > 1 ? xd.stride(2) : 1);
  return fastncsn::CinShape{n, c, h * w, xd.stride(0), xd.stride(1), stride_p, weight.size(0),
                            weight.size(1) == 3 * c, level_index.scalar_type() == at::kLong, elu,
                            static_cast<float>(eps)};
}

// ----------------------------------------------------------------------------- CIN++

std::tuple<Tensor, Tensor, Tensor> cin_plus_fwd(const Tensor& x, const Tensor& level_index, const Tensor& weight,
                                                double eps, c10::string_view activation, int64_t plan) {
  TORCH_CHECK_VALUE(x.is_cuda(), "x: expected a CUDA tensor, got one on ", txt(x.device()));
  const bool elu = elu_of(activation);
  const at::MemoryFormat fmt = dense_format(x);
  const Tensor xd = x.contiguous(fmt);
  const fastncsn::CinShape shape = cin_shape(x, xd, level_index, weight, eps, elu);
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor out = at::empty(xd.sizes(), xd.options().memory_format(fmt));
  Tensor mu = at::empty({shape.n, shape.c}, x.options().dtype(at::kFloat));
  Tensor rstd = at::empty({shape.n, shape.c}, x.options().dtype(at::kFloat));
  if (xd.numel() == 0) return {out, mu, rstd};
  const Tensor w32 = weight.to(at::kFloat).contiguous();
  const Tensor levels = level_index.contiguous();
  check_launch(fastncsn::cin_plus_fwd(xd.data_ptr(), out.data_ptr(), levels.data_ptr(), w32.data_ptr<float>(),
                                      mu.data_ptr<float>(), rstd.data_ptr<float>(), kernel_dtype(x, "x"), shape,
                                      cin_plan(plan), num_sms(x.device().index()),
                                      c10::cuda::getCurrentCUDAStream(x.device().index()).stream()),
               "cin_plus_fwd");
  return {out, mu, rstd};
}

std::tuple<Tensor, Tensor> cin_plus_bwd(const Tensor& grad_out, const Tensor& x, const Tensor& level_index,
                                        const Tensor& weight, const Tensor& mu, const Tensor& rstd, double eps,
                                        c10::string_view activation, int64_t plan) {
  TORCH_CHECK_VALUE(x.is_cuda(), "x: expected a CUDA tensor, got one on ", txt(x.device()));
  const bool elu = elu_of(activation);
  const at::MemoryFormat fmt = dense_format(x);
  const Tensor xd = x.contiguous(fmt);
  const fastncsn::CinShape shape = cin_shape(x, xd, level_index, weight, eps, elu);
  check_cuda_tensor(grad_out, "grad_out", x.device());
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes(), "grad_out: expected shape ", txt(x.sizes()), ", got ", txt(grad_out.sizes()));
  const auto check_stats = [&](const Tensor& t, const char* name) {
    check_cuda_tensor(t, name, x.device());
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == shape.n && t.size(1) == shape.c, name, ": expected shape [",
                      txt(shape.n), ", ", txt(shape.c), "], got ", txt(t.sizes()));
  };
  check_stats(mu, "mu");
  check_stats(rstd, "rstd");
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor grad_x = at::empty(xd.sizes(), xd.options().memory_format(fmt));
  if (xd.numel() == 0) return {grad_x, at::zeros_like(weight, at::MemoryFormat::Contiguous)};
  // autograd may hand in expanded (stride 0) or other-dtype gradients: bring them to x's layout
  Tensor dy = grad_out;
  if (dy.strides() != xd.strides() || dy.scalar_type() != x.scalar_type())
    dy = at::empty(xd.sizes(), xd.options().memory_format(fmt)).copy_(grad_out);
  const int64_t k = weight.size(1);
  const Tensor w32 = weight.to(at::kFloat).contiguous();
  const Tensor levels = level_index.contiguous();
  const Tensor mu32 = mu.to(at::kFloat).contiguous(), rstd32 = rstd.to(at::kFloat).contiguous();
  const auto f32 = x.options().dtype(at::kFloat);
  Tensor sums = at::empty({2, shape.n, shape.c}, f32);
  Tensor part = at::empty({shape.n, k}, f32);
  Tensor grad_w = at::empty({weight.size(0), k}, f32);
  check_launch(fastncsn::cin_plus_bwd(dy.data_ptr(), xd.data_ptr(), grad_x.data_ptr(), levels.data_ptr(),
                                      w32.data_ptr<float>(), mu32.data_ptr<float>(), rstd32.data_ptr<float>(),
                                      sums[0].data_ptr<float>(), sums[1].data_ptr<float>(), part.data_ptr<float>(),
                                      grad_w.data_ptr<float>(), kernel_dtype(x, "x"), shape, cin_plan(plan),
                                      num_sms(x.device().index()),
                                      c10::cuda::getCurrentCUDAStream(x.device().index()).stream()),
               "cin_plus_bwd");
  return {grad_x, grad_w.to(weight.scalar_type())};
}

// ----------------------------------------------------------------------------- Langevin step

// `t` in x's storage order: (tensor, holds one sample shared by the batch).  A tensor of x's
// shape or of one sample (x.shape[1:] or [1, *x.shape[1:]]) with other strides or dtype is
// copied; any other shape broadcastable to x is expanded into a full copy.
std::pair<Tensor, bool> same_layout(const Tensor& t, const Tensor& x, const char* name, at::ScalarType dtype) {
  check_cuda_tensor(t, name, x.device());
  if (t.sizes() == x.sizes()) {
    if (t.strides() == x.strides() && t.scalar_type() == dtype) return {t, false};
    return {at::empty_strided(x.sizes(), x.strides(), x.options().dtype(dtype)).copy_(t), false};
  }
  const Tensor one = x.narrow(0, 0, 1);
  if (x.size(0) > 1 && (t.sizes() == x.sizes().slice(1) || t.sizes() == one.sizes())) {
    Tensor r = t.reshape(one.sizes());
    if (r.strides().slice(1) != one.strides().slice(1) || r.scalar_type() != dtype)
      r = at::empty_strided(one.sizes(), one.strides(), x.options().dtype(dtype)).copy_(r);
    return {r, true};
  }
  TORCH_CHECK_VALUE(at::is_expandable_to(t.sizes(), x.sizes()), name, ": expected a shape broadcastable to ",
                    txt(x.sizes()), ", got ", txt(t.sizes()));
  return {at::empty_strided(x.sizes(), x.strides(), x.options().dtype(dtype)).copy_(t.expand(x.sizes())), false};
}

void check_counter(const Tensor& t, const char* name, const Tensor& x) {
  check_cuda_tensor(t, name, x.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, ": expected an int64 tensor, got ", txt(t.scalar_type()));
  TORCH_CHECK_VALUE(t.numel() == 1, name, ": expected one element, got shape ", txt(t.sizes()));
}

void langevin_step_(const Tensor& x, const Tensor& score, const Tensor& step_size, const Tensor& seed, const Tensor& offset,
                    const std::optional<Tensor>& noise, const std::optional<Tensor>& mask,
                    const std::optional<Tensor>& known, std::optional<double> clamp_lo,
                    std::optional<double> clamp_hi) {
  TORCH_CHECK_VALUE(x.is_cuda(), "x: expected a CUDA tensor, got one on ", txt(x.device()));
  TORCH_CHECK_VALUE(x.dim() >= 1, "x: expected a tensor [N, ...], got a 0-d tensor");
  const fastncsn::DType x_dtype = kernel_dtype(x, "x");
  TORCH_CHECK_VALUE(is_dense(x), "x: expected a contiguous or channels-last tensor (the update is in place)");
  check_cuda_tensor(score, "score", x.device());
  TORCH_CHECK_VALUE(score.sizes() == x.sizes(), "score: expected shape ", txt(x.sizes()), ", got ", txt(score.sizes()));
  const fastncsn::DType score_dtype = kernel_dtype(score, "score");
  check_cuda_tensor(step_size, "step_size", x.device());
  TORCH_CHECK_TYPE(step_size.is_floating_point(), "step_size: expected a floating-point tensor, got ",
                   txt(step_size.scalar_type()));
  const int64_t n = x.size(0);
  TORCH_CHECK_VALUE(step_size.numel() == 1 || (step_size.dim() == 1 && step_size.size(0) == n),
                    "step_size: expected one element or shape [", txt(n), "], got ", txt(step_size.sizes()));
  check_counter(seed, "seed", x);
  check_counter(offset, "offset", x);
  TORCH_CHECK_VALUE(mask.has_value() == known.has_value(), "mask, known: pass both or neither");
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.numel() == 0) return;

  const Tensor score_d = same_layout(score, x, "score", score.scalar_type()).first;
  const Tensor step = step_size.to(at::kFloat).reshape({-1}).contiguous();
  Tensor noise_d;
  if (noise.has_value()) {
    TORCH_CHECK_VALUE(noise->sizes() == x.sizes(), "noise: expected shape ", txt(x.sizes()), ", got ", txt(noise->sizes()));
    noise_d = same_layout(*noise, x, "noise", at::kFloat).first;
  }
  Tensor mask_d, known_d;
  bool mask_bcast = false, known_bcast = false;
  if (mask.has_value()) {
    const Tensor m = mask->scalar_type() == at::kBool ? *mask : mask->ne(0);   // nonzero keeps `known`
    std::tie(mask_d, mask_bcast) = same_layout(m, x, "mask", at::kBool);
    mask_d = mask_d.view(at::kByte);
    std::tie(known_d, known_bcast) = same_layout(*known, x, "known", x.scalar_type());
  }
  fastncsn::LangevinShape shape{};
  shape.numel = x.numel();
  shape.per_sample = x.numel() / n;
  shape.per_sample_step = step.numel() > 1;
  shape.mask_bcast = mask_bcast;
  shape.known_bcast = known_bcast;
  shape.has_lo = clamp_lo.has_value();
  shape.has_hi = clamp_hi.has_value();
  shape.lo = static_cast<float>(clamp_lo.value_or(0.0));
  shape.hi = static_cast<float>(clamp_hi.value_or(0.0));
  check_launch(fastncsn::langevin_step(
                   x.data_ptr(), x_dtype, score_d.data_ptr(), score_dtype,
                   noise_d.defined() ? noise_d.data_ptr<float>() : nullptr, step.data_ptr<float>(),
                   seed.data_ptr<int64_t>(), offset.data_ptr<int64_t>(),
                   mask_d.defined() ? mask_d.data_ptr<uint8_t>() : nullptr,
                   known_d.defined() ? known_d.data_ptr() : nullptr, shape, num_sms(x.device().index()),
                   c10::cuda::getCurrentCUDAStream(x.device().index()).stream()),
               "langevin_step_");
}

Tensor langevin_noise(const Tensor& seed, const Tensor& offset, const Tensor& like) {
  TORCH_CHECK_VALUE(like.is_cuda(), "like: expected a CUDA tensor, got one on ", txt(like.device()));
  check_counter(seed, "seed", like);
  check_counter(offset, "offset", like);
  const c10::cuda::CUDAGuard guard(like.device());
  Tensor out = is_dense(like) ? at::empty_like(like, like.options().dtype(at::kFloat), dense_format(like))
                              : at::empty(like.sizes(), like.options().dtype(at::kFloat));
  check_launch(fastncsn::langevin_noise(out.data_ptr<float>(), out.numel(), seed.data_ptr<int64_t>(),
                                        offset.data_ptr<int64_t>(), num_sms(like.device().index()),
                                        c10::cuda::getCurrentCUDAStream(like.device().index()).stream()),
               "langevin_noise");
  return out;
}

}  // namespace

// The schemas: the one place they are written.
TORCH_LIBRARY(fastncsn_cuda, m) {
  m.set_python_module("fastncsn.ops.cuda");  // where the fake kernels and autograd live
  m.def("cin_plus_fwd(Tensor x, Tensor level_index, Tensor weight, float eps, str activation, int plan=-1) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("cin_plus_bwd(Tensor grad_out, Tensor x, Tensor level_index, Tensor weight, Tensor mu, Tensor rstd, "
        "float eps, str activation, int plan=-1) -> (Tensor, Tensor)");
  m.def("langevin_step_(Tensor(a!) x, Tensor score, Tensor step_size, Tensor seed, Tensor offset, Tensor? noise, "
        "Tensor? mask, Tensor? known, float? clamp_lo, float? clamp_hi) -> ()");
  m.def("langevin_noise(Tensor seed, Tensor offset, Tensor like) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastncsn_cuda, CUDA, m) {
  m.impl("cin_plus_fwd", &cin_plus_fwd);
  m.impl("cin_plus_bwd", &cin_plus_bwd);
  m.impl("langevin_step_", &langevin_step_);
  m.impl("langevin_noise", &langevin_noise);
}

// A Python module with nothing in it: importing fastncsn._C loads this library,
// whose static initialisers above register the ops.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastncsn CUDA ops (registered as torch.ops.fastncsn_cuda)",
                               -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
