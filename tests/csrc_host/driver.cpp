// C entry points over the csrc/ launchers for ctypes (tests/test_csrc_emulated.py).
// Built together with csrc/*.cu under FASTNCSN_HOST_EMULATION; pointers are CPU memory.
#include <cstdint>

#include "common.cuh"
#include "fastncsn_kernels.h"

namespace {

fastncsn::CinShape cin_shape(const int64_t* dims, int flags, float eps) {
  // dims: n, c, hw, stride_n, stride_c, stride_p, num_levels; flags: has_beta | level_int64 << 1 | elu << 2
  return fastncsn::CinShape{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6],
                            (flags & 1) != 0, (flags & 2) != 0, (flags & 4) != 0, eps};
}

}  // namespace

extern "C" {

int emu_cin_fwd(const void* x, void* out, const void* level, const float* weight, float* mu, float* rstd,
                int dtype, const int64_t* dims, int flags, float eps, int plan, int num_sms) {
  return static_cast<int>(fastncsn::cin_plus_fwd(x, out, level, weight, mu, rstd,
                                                 static_cast<fastncsn::DType>(dtype), cin_shape(dims, flags, eps),
                                                 static_cast<fastncsn::CinPlan>(plan), num_sms, nullptr));
}

int emu_cin_bwd(const void* dy, const void* x, void* dx, const void* level, const float* weight, const float* mu,
                const float* rstd, float* sum_g, float* sum_gh, float* part, float* grad_weight, int dtype,
                const int64_t* dims, int flags, float eps, int plan, int num_sms) {
  return static_cast<int>(fastncsn::cin_plus_bwd(dy, x, dx, level, weight, mu, rstd, sum_g, sum_gh, part, grad_weight,
                                                 static_cast<fastncsn::DType>(dtype), cin_shape(dims, flags, eps),
                                                 static_cast<fastncsn::CinPlan>(plan), num_sms, nullptr));
}

// sizes: numel, per_sample; flags: per_sample_step | mask_bcast << 1 | known_bcast << 2 | has_lo << 3 | has_hi << 4
int emu_langevin_step(void* x, int x_dtype, const void* score, int score_dtype, const float* noise, const float* step,
                      const int64_t* seed, const int64_t* offset, const uint8_t* mask, const void* known,
                      const int64_t* sizes, int flags, float lo, float hi, int num_sms) {
  const fastncsn::LangevinShape shape{sizes[0], sizes[1], (flags & 1) != 0, (flags & 2) != 0, (flags & 4) != 0,
                                      (flags & 8) != 0, (flags & 16) != 0, lo, hi};
  return static_cast<int>(fastncsn::langevin_step(x, static_cast<fastncsn::DType>(x_dtype), score,
                                                  static_cast<fastncsn::DType>(score_dtype), noise, step, seed, offset,
                                                  mask, known, shape, num_sms, nullptr));
}

int emu_langevin_noise(float* out, int64_t numel, const int64_t* seed, const int64_t* offset, int num_sms) {
  return static_cast<int>(fastncsn::langevin_noise(out, numel, seed, offset, num_sms, nullptr));
}

// The Philox words and normals of one counter (host build of the device helpers).
void emu_philox(uint64_t seed, uint64_t counter, uint32_t* bits, float* z) {
  const fastncsn::detail::Philox4 p = fastncsn::detail::philox4x32_10(seed, counter);
  for (int i = 0; i < 4; ++i) bits[i] = p.v[i];
  fastncsn::detail::normals4(seed, counter, z);
}

}  // extern "C"
