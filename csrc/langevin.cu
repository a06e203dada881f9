// The Langevin update with the Gaussian noise drawn inside the kernel.
//
// One step of (annealed) Langevin dynamics (NCSN eq. 4, Algorithm 1 line 6), in place:
//
//   x <- x + a/2 * score + sqrt(a) * z,    z ~ N(0, I)
//
// then, optionally, x <- known where mask != 0 (inpainting) and a clamp.  The
// truth is fastncsn.ops.langevin_step_ref.
//
// CUDA-graph safety: the step size a (one value or one per sample), the Philox
// seed and offset are read from device memory inside the kernel; a captured
// graph draws new noise on every replay when the caller advances the offset
// tensor on the device by ceil(numel / 4) per step.
//
// Noise stream: thread j handles storage positions 4j .. 4j + 3 and draws the
// four normals of Philox4x32-10(seed, offset + j) by Box-Muller -- the stream of
// fastncsn.ops.langevin_noise_ref and of the Triton kernel
// (fastncsn/ops/triton/langevin.py), evaluated the same way (detail::normals4), so the CUDA
// and Triton backends add the same noise up to float rounding of log/sqrt.
#include "common.cuh"

namespace fastncsn {
namespace {

using detail::ceil_div;
using detail::from_float;
using detail::to_float;
using detail::Vec4;

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 8;

template <typename TX, typename TS>
struct StepArgs {
  TX* x;                 // state, updated in place
  const TS* score;       // x's layout
  const float* noise;    // explicit noise (x's layout) or null: Philox
  const float* step;     // 1 or N step sizes
  const int64_t* seed;   // Philox key (read unless noise is given)
  const int64_t* offset; // Philox counter of storage position 0
  const uint8_t* mask;   // nonzero keeps `known`; x's layout or one sample (mask_bcast); or null
  const TX* known;       // x's layout or one sample (known_bcast)
  LangevinShape s;
  bool vec;              // every array indexed by storage position is aligned for 4-element vectors
};

// Elements e0 .. e0 + 3 of p as floats (zeros past numel).
template <typename T>
__device__ __forceinline__ void load4(const T* p, int64_t e0, int64_t numel, bool vec, float out[4]) {
  if (vec && e0 + 4 <= numel) {
    const Vec4<T> v = *reinterpret_cast<const Vec4<T>*>(p + e0);
#pragma unroll
    for (int u = 0; u < 4; ++u) out[u] = to_float(v.v[u]);
  } else {
#pragma unroll
    for (int u = 0; u < 4; ++u) out[u] = e0 + u < numel ? to_float(p[e0 + u]) : 0.0f;
  }
}

template <typename T>
__device__ __forceinline__ void store4(T* p, int64_t e0, int64_t numel, bool vec, const float in[4]) {
  if (vec && e0 + 4 <= numel) {
    Vec4<T> v;
#pragma unroll
    for (int u = 0; u < 4; ++u) v.v[u] = from_float<T>(in[u]);
    *reinterpret_cast<Vec4<T>*>(p + e0) = v;
  } else {
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (e0 + u < numel) p[e0 + u] = from_float<T>(in[u]);
  }
}

// Number of grid-stride blocks for `groups` four-element groups.
unsigned grid_for(int64_t groups, int num_sms) {
  const int64_t most = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * kBlocksPerSm;
  const int64_t blocks = ceil_div(groups, kThreads);
  return static_cast<unsigned>(blocks < most ? (blocks > 0 ? blocks : 1) : most);
}

template <typename TX, typename TS>
__global__ void __launch_bounds__(kThreads) langevin_step_kernel(StepArgs<TX, TS> a) {
  const LangevinShape& s = a.s;
  const int64_t groups = ceil_div(s.numel, 4);
  const bool philox = a.noise == nullptr;
  const uint64_t seed = philox ? static_cast<uint64_t>(*a.seed) : 0;
  const uint64_t offset = philox ? static_cast<uint64_t>(*a.offset) : 0;
  const float a_all = s.per_sample_step ? 0.0f : a.step[0];
  const bool need_sample = s.per_sample_step || s.mask_bcast || s.known_bcast;
  const bool narrow = s.numel <= 0xffffffffLL;  // 32-bit division suffices
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < groups; j += stride) {
    const int64_t e0 = 4 * j;
    float x[4], sc[4], z[4];
    load4(a.x, e0, s.numel, a.vec, x);
    load4(a.score, e0, s.numel, a.vec, sc);
    if (philox) {
      detail::normals4(seed, offset + static_cast<uint64_t>(j), z);
    } else {
      load4(a.noise, e0, s.numel, a.vec, z);
    }
    int64_t sample[4] = {0, 0, 0, 0}, within[4] = {0, 0, 0, 0};
    if (need_sample) {
      // one division per four elements; the group spans consecutive samples
      const int64_t first = narrow ? static_cast<int64_t>(static_cast<uint32_t>(e0) / static_cast<uint32_t>(s.per_sample))
                                   : e0 / s.per_sample;
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        sample[u] = first;
        within[u] = e0 + u - first * s.per_sample;
        while (within[u] >= s.per_sample) {
          within[u] -= s.per_sample;
          ++sample[u];
        }
      }
    }
    float v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const bool inb = e0 + u < s.numel;
      const float step = s.per_sample_step ? (inb ? a.step[sample[u]] : 0.0f) : a_all;
      v[u] = x[u] + (step * 0.5f) * sc[u] + sqrtf(step) * z[u];
    }
    if (a.mask != nullptr) {
      float kn[4];
      bool keep[4];
      if (s.known_bcast) {
#pragma unroll
        for (int u = 0; u < 4; ++u) kn[u] = e0 + u < s.numel ? to_float(a.known[within[u]]) : 0.0f;
      } else {
        load4(a.known, e0, s.numel, a.vec, kn);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int64_t m = s.mask_bcast ? within[u] : e0 + u;
        keep[u] = e0 + u < s.numel && a.mask[m] != 0;
        if (keep[u]) v[u] = kn[u];
      }
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      if (s.has_lo) v[u] = fmaxf(v[u], s.lo);
      if (s.has_hi) v[u] = fminf(v[u], s.hi);
    }
    store4(a.x, e0, s.numel, a.vec, v);
  }
}

__global__ void __launch_bounds__(kThreads) langevin_noise_kernel(float* out, int64_t numel, const int64_t* seed_p,
                                                                  const int64_t* offset_p, bool vec) {
  const int64_t groups = ceil_div(numel, 4);
  const uint64_t seed = static_cast<uint64_t>(*seed_p);
  const uint64_t offset = static_cast<uint64_t>(*offset_p);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < groups; j += stride) {
    float z[4];
    detail::normals4(seed, offset + static_cast<uint64_t>(j), z);
    store4(out, 4 * j, numel, vec, z);
  }
}

bool aligned(const void* p, size_t bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

}  // namespace

cudaError_t langevin_step(void* x, DType x_dtype, const void* score, DType score_dtype, const float* noise,
                          const float* step, const int64_t* seed, const int64_t* offset, const uint8_t* mask,
                          const void* known, const LangevinShape& shape, int num_sms, cudaStream_t stream) {
  if (shape.numel < 0 || (shape.per_sample <= 0 && shape.numel > 0)) return cudaErrorInvalidValue;
  if (shape.numel == 0) return cudaSuccess;
  if (noise == nullptr && (seed == nullptr || offset == nullptr)) return cudaErrorInvalidValue;
  if (step == nullptr || (mask == nullptr) != (known == nullptr)) return cudaErrorInvalidValue;
  const unsigned blocks = grid_for(ceil_div(shape.numel, 4), num_sms);
  return detail::dispatch_dtype(x_dtype, [&](auto x_tag) {
    using TX = decltype(x_tag);
    return detail::dispatch_dtype(score_dtype, [&](auto s_tag) {
      using TS = decltype(s_tag);
      StepArgs<TX, TS> a{};
      a.x = static_cast<TX*>(x);
      a.score = static_cast<const TS*>(score);
      a.noise = noise;
      a.step = step;
      a.seed = seed;
      a.offset = offset;
      a.mask = mask;
      a.known = static_cast<const TX*>(known);
      a.s = shape;
      a.vec = aligned(x, 4 * sizeof(TX)) && aligned(score, 4 * sizeof(TS)) && aligned(noise, 4 * sizeof(float)) &&
              (shape.known_bcast || aligned(known, 4 * sizeof(TX))) && (shape.mask_bcast || aligned(mask, 4));
      auto kernel = &langevin_step_kernel<TX, TS>;
      FASTNCSN_LAUNCH(kernel, dim3(blocks), dim3(kThreads), stream, a);
      return FASTNCSN_LAUNCH_STATUS();
    });
  });
}

cudaError_t langevin_noise(float* out, int64_t numel, const int64_t* seed, const int64_t* offset, int num_sms,
                           cudaStream_t stream) {
  if (numel < 0 || seed == nullptr || offset == nullptr) return cudaErrorInvalidValue;
  if (numel == 0) return cudaSuccess;
  const unsigned blocks = grid_for(ceil_div(numel, 4), num_sms);
  const bool vec = aligned(out, 4 * sizeof(float));
  auto kernel = &langevin_noise_kernel;
  FASTNCSN_LAUNCH(kernel, dim3(blocks), dim3(kThreads), stream, out, numel, seed, offset, vec);
  return FASTNCSN_LAUNCH_STATUS();
}

}  // namespace fastncsn
