// Device helpers shared by the fastncsn kernels: element conversions, block
// reductions, the Philox noise stream, and the launch macro.
//
// Host emulation: tests/csrc_host/host_emulation.h compiles these .cu files as
// plain C++ (g++, FASTNCSN_HOST_EMULATION defined) and runs every CUDA thread of
// a block as a std::thread, so the kernel logic is checked on a machine without
// a GPU.  The only hooks are the two macros below; kernels therefore use
// __syncthreads and __shared__ arrays, never warp shuffles or warp-synchronous code.
#pragma once

#include <math.h>

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fastncsn_kernels.h"

#ifdef FASTNCSN_HOST_EMULATION
#define FASTNCSN_LAUNCH(kernel, grid, block, stream, ...) \
  ::fastncsn_emu::launch((grid), (block), [&] { kernel(__VA_ARGS__); })
#define FASTNCSN_LAUNCH_STATUS() cudaSuccess
#else
// `kernel` is a pointer to a __global__ function (a template instance named with commas
// cannot pass through a macro argument).
#define FASTNCSN_LAUNCH(kernel, grid, block, stream, ...) \
  kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#define FASTNCSN_LAUNCH_STATUS() cudaGetLastError()
#endif

#define FASTNCSN_HD __host__ __device__ __forceinline__

namespace fastncsn {
namespace detail {

// ----------------------------------------------------------------------------- element types

template <typename T>
FASTNCSN_HD float to_float(T v);
template <>
FASTNCSN_HD float to_float<float>(float v) { return v; }
template <>
FASTNCSN_HD float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
FASTNCSN_HD float to_float<__half>(__half v) { return __half2float(v); }

// round to nearest even, as torch's .to(dtype)
template <typename T>
FASTNCSN_HD T from_float(float v);
template <>
FASTNCSN_HD float from_float<float>(float v) { return v; }
template <>
FASTNCSN_HD __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
FASTNCSN_HD __half from_float<__half>(float v) { return __float2half_rn(v); }

// Four consecutive elements, aligned so that one vector instruction moves them.
template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

// Calls f(T1, T2) with the C++ types of two runtime dtypes (both fp32, bf16 or fp16).
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
    case DType::kFloat16: return f(__half{});
  }
  return cudaErrorInvalidValue;
}

FASTNCSN_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ----------------------------------------------------------------------------- block reductions

// Sum of v over the block, the same bits on every call with the same inputs (a
// fixed tree).  `red` is a __shared__ array of blockDim.x floats; blockDim.x is a
// power of two.  Every thread of the block must call it.
__device__ __forceinline__ float block_sum(float v, float* red) {
  const unsigned t = threadIdx.x;
  red[t] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) red[t] += red[t + s];
    __syncthreads();
  }
  const float total = red[0];
  __syncthreads();  // red may be reused right away
  return total;
}

// ----------------------------------------------------------------------------- Philox noise

// Philox4x32-10 (Salmon et al. 2011) keyed by the 64-bit seed, counter
// (counter_lo, counter_hi, 0, 0): what triton.language.randint4x computes for an
// int64 offset, and fastncsn.ops.langevin.philox4x32.
struct Philox4 {
  uint32_t v[4];
};

FASTNCSN_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

FASTNCSN_HD Philox4 philox4x32_10(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi_b = mulhi32(0xCD9E8D57u, c2), lo_b = 0xCD9E8D57u * c2;
    const uint32_t hi_a = mulhi32(0xD2511F53u, c0), lo_a = 0xD2511F53u * c0;
    c0 = hi_b ^ c1 ^ k0;
    c2 = hi_a ^ c3 ^ k1;
    c1 = lo_b;
    c3 = lo_a;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// uint32 -> float in [0, 1): Triton's uint_to_uniform_float (int32 v, v < 0 -> -v - 1 = ~v).
FASTNCSN_HD float uint_to_uniform(uint32_t bits) {
  int32_t v = static_cast<int32_t>(bits);
  v = v < 0 ? ~v : v;
  return static_cast<float>(v) * 4.6566127342e-10f;
}

// (r cos 2 pi u2, r sin 2 pi u2), r = sqrt(-2 log max(u1, 1e-7)), with sin/cos
// by polynomials after an exact quadrant reduction -- the evaluation of the
// Triton kernel (fastncsn/ops/triton/langevin.py, _box_muller); agrees with libm sin/cos to
// about 1e-7.
FASTNCSN_HD void box_muller(float u1, float u2, float& z0, float& z1) {
  const float r = sqrtf(-2.0f * logf(fmaxf(u1, 1.0e-7f)));
  const float v = u2 - 0.5f;                 // 2 pi u2 = 2 pi v + pi, v in [-1/2, 1/2)
  const float k = floorf(4.0f * v + 0.5f);   // quadrant of 2 pi v, k in {-2, ..., 2}
  const float a = (v - 0.25f * k) * 6.283185307179586f;  // in [-pi/4, pi/4]
  const float a2 = a * a;
  const float sin_a = a * (1.0f + a2 * (-1.6666666666666666e-1f + a2 * (8.333333333333333e-3f +
                      a2 * (-1.984126984126984e-4f + a2 * 2.755731922398589e-6f))));
  const float cos_a = 1.0f + a2 * (-0.5f + a2 * (4.1666666666666664e-2f + a2 * (-1.388888888888889e-3f +
                      a2 * 2.48015873015873e-5f)));
  const int q = static_cast<int>(k);
  const bool odd = q == 1 || q == -1;
  float sin_v = odd ? cos_a : sin_a;
  float cos_v = odd ? sin_a : cos_a;
  if (q == 2 || q == -2 || q == -1) sin_v = -sin_v;
  if (q == 2 || q == -2 || q == 1) cos_v = -cos_v;
  z0 = -r * cos_v;                           // cos(x + pi) = -cos x
  z1 = -r * sin_v;
}

// The four standard normals of Philox counter `counter`: storage positions
// 4j .. 4j + 3 take z[0..3] for counter offset + j.
FASTNCSN_HD void normals4(uint64_t seed, uint64_t counter, float z[4]) {
  const Philox4 bits = philox4x32_10(seed, counter);
  box_muller(uint_to_uniform(bits.v[0]), uint_to_uniform(bits.v[1]), z[0], z[1]);
  box_muller(uint_to_uniform(bits.v[2]), uint_to_uniform(bits.v[3]), z[2], z[3]);
}

}  // namespace detail
}  // namespace fastncsn
