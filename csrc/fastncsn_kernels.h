// Launchers of the fastncsn CUDA kernels, on raw pointers.
//
// The kernels (cond_instance_norm.cu, langevin.cu) include no torch header: they
// compile with a plain `nvcc -c` (that is how CI checks them without a GPU) and
// the torch binding (ops.cpp) only checks arguments, allocates and calls these
// functions.  Every launcher enqueues its kernels on `stream`, never
// synchronises, and returns the error state after its launches
// (cudaGetLastError), cudaSuccess when all went well.
//
// Semantics: the *_ref functions of fastncsn/ops/ are the truth for every op here.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace fastncsn {

//: element type of an activation tensor (x, out, dy, dx, score, known)
enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

//: CIN++ launch plan: one block per sample doing both phases (kFused), or the
//: phases in two launches over (sample, channel group) blocks (kSplit).  kAuto
//: splits when the batch has fewer samples than the GPU has SMs.
enum class CinPlan : int32_t { kAuto = -1, kFused = 0, kSplit = 1 };

// Shape and strides of one CIN++ call.  The pixel index p = h * W + w addresses
// element (n, c, p) at n * stride_n + c * stride_c + p * stride_p (elements), which
// holds for NCHW-contiguous and channels-last-contiguous tensors; x and
// out (forward), x, dy and dx (backward) share these strides.
struct CinShape {
  int64_t n;          // samples
  int64_t c;          // channels
  int64_t hw;         // pixels per channel, H * W
  int64_t stride_n;
  int64_t stride_c;
  int64_t stride_p;
  int64_t num_levels; // rows of weight
  bool has_beta;      // weight is [L, 3C] (gamma | alpha | beta), else [L, 2C]
  bool level_int64;   // level_index is int64 (else int32)
  bool elu;           // fused ELU on the output
  float eps;          // epsilon of both variances
};

// CIN++ forward (NCSN appendix A as the reference code computes it):
//   out[n,c,p] = gamma (h + alpha t_c) + beta, h = (x - mu_c) rstd_c,
//   t_c = (mu_c - m) / sqrt(var_unbiased(mu) + eps)  (0 when C == 1),
// optionally ELU(out).  `weight` is fp32 [L, 2C or 3C] row-major; `mu`, `rstd`
// are written ([N, C] fp32, saved for the backward).  level_index values must
// lie in [0, L) (not checked on the device).
cudaError_t cin_plus_fwd(const void* x, void* out, const void* level_index, const float* weight,
                         float* mu, float* rstd, DType dtype, const CinShape& shape, CinPlan plan,
                         int num_sms, cudaStream_t stream);

// CIN++ backward: dx (x's dtype and strides) and grad_weight ([L, K] fp32,
// K = 2C or 3C, every row written).  Scratch: sum_g and sum_gh [N, C] fp32,
// part [N, K] fp32 (per-sample weight-gradient rows, then summed per level in
// ascending sample order: the result is bitwise reproducible).
cudaError_t cin_plus_bwd(const void* dy, const void* x, void* dx, const void* level_index,
                         const float* weight, const float* mu, const float* rstd, float* sum_g,
                         float* sum_gh, float* part, float* grad_weight, DType dtype,
                         const CinShape& shape, CinPlan plan, int num_sms, cudaStream_t stream);

// One Langevin step in place (NCSN eq. 4): x <- x + a/2 * score + sqrt(a) * z,
// then x <- known where mask != 0, then the clamp.  All arrays are dense and
// share x's storage order (contiguous or channels-last); the batch dimension is
// outermost, so sample = e / per_sample for storage position e.
struct LangevinShape {
  int64_t numel;        // elements of x
  int64_t per_sample;   // numel / N
  bool per_sample_step; // step holds N values (else one)
  bool mask_bcast;      // mask holds one sample, shared by the batch
  bool known_bcast;     // known holds one sample, shared by the batch
  bool has_lo;          // clamp below at lo
  bool has_hi;          // clamp above at hi
  float lo;
  float hi;
};

// z: `noise` (fp32, x's layout) when not null, else Philox: storage position e
// takes component e % 4 of Box-Muller on Philox4x32-10(key *seed, counter
// *offset + e / 4) -- the stream of fastncsn.ops.langevin_noise_ref and of
// the Triton kernel.  step, seed and offset are device pointers read inside
// the kernel (CUDA-graph safe).  mask: uint8 (nonzero keeps known) or null;
// known: x's dtype.
cudaError_t langevin_step(void* x, DType x_dtype, const void* score, DType score_dtype,
                          const float* noise, const float* step, const int64_t* seed,
                          const int64_t* offset, const uint8_t* mask, const void* known,
                          const LangevinShape& shape, int num_sms, cudaStream_t stream);

// The noise langevin_step adds (no noise pointer) for numel elements, fp32,
// written in storage order to `out`.
cudaError_t langevin_noise(float* out, int64_t numel, const int64_t* seed, const int64_t* offset,
                           int num_sms, cudaStream_t stream);

}  // namespace fastncsn
