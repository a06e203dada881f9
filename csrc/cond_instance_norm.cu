// Conditional instance normalisation++ (CIN++): forward and backward kernels.
//
// For sample n with level l = level_index[n], channel c and the M = H*W pixels p
// (NCSN appendix A as the reference code computes it; the truth is
// fastncsn.ops.cond_instance_norm_plus_ref):
//
//   mu_c = mean_p x_cp          r_c = 1 / sqrt(var_p x_cp + eps)   (biased variance)
//   m    = mean_c mu_c          q   = 1 / sqrt(var_c mu_c + eps)   (unbiased; q = 0 if C == 1)
//   t_c  = (mu_c - m) q         y_cp = gamma_c ((x_cp - mu_c) r_c + alpha_c t_c) + beta_c
//
// with gamma | alpha | beta the row l of the fp32 weight, and ELU(y) when asked.
//
// Each kernel has two phases over a sample's [C, M] matrix:
//   1. per channel: statistics (forward: mu, r; backward: S = sum g, P = r sum g (x - mu));
//   2. per element: needs a reduction over *all* channels of the sample (m and q;
//      backward also sum dt and sum dt t), then writes out / dx.
// Fused plan: one block per sample runs both phases (x is read twice; the
// second read follows the first in the same block and mostly hits L2).  Split
// plan: two launches over (sample, channel group) blocks, for batches smaller
// than the number of SMs.
//
// Statistics in fp32 for every input dtype: each thread folds chunks of kUnroll
// pixels (exact two-pass mean and centred sum of squares inside a chunk) into a
// running (count, mean, M2) by Chan's formula, then a fixed tree merges the
// threads of a channel.  All reductions are fixed trees, the weight gradient is
// written per sample and summed per level in ascending sample order: forward
// and backward are bitwise reproducible (no atomics).
//
// Backward, with g = dL/dy (times ELU'(y), y recomputed from x and the saved
// statistics), S_c = sum_p g, P_c = r_c sum_p g (x - mu_c), dt_c = gamma_c alpha_c S_c:
//   dgamma = P + alpha t S, dalpha = gamma t S, dbeta = S
//   dmu_c  = q (dt_c - mean_k dt_k - t_c sum_k(dt_k t_k) / (C - 1))
//   dx_cp  = r_c gamma_c (g_cp - S_c / M - h_cp P_c / M) + dmu_c / M,  h = (x - mu) r.
#include "common.cuh"

#ifndef FASTNCSN_CIN_THREADS
#define FASTNCSN_CIN_THREADS 512
#endif

namespace fastncsn {
namespace {

using detail::block_sum;
using detail::ceil_div;
using detail::from_float;
using detail::to_float;

constexpr int kThreads = FASTNCSN_CIN_THREADS;  // threads per block, a power of two
constexpr int kUnroll = 4;                       // pixels per chunk and thread
constexpr int64_t kMinGroupChannels = 16;        // channels per group of the automatic split plan
constexpr int kLevelSumThreads = 256;

enum Phase : int { kPhase1 = 1, kPhase2 = 2, kBoth = 3 };

// Arguments of both kernels (the pointers one of them does not use are null).
template <typename T>
struct CinArgs {
  const T* x;            // [N, C, H, W] input
  const T* dy;           // backward: gradient of the output (x's strides)
  T* y;                  // forward: output; backward: dx (x's strides)
  const void* level;     // [N] int32 or int64
  const float* weight;   // [L, K] rows gamma | alpha | beta
  float* mu;             // [N, C]
  float* rstd;           // [N, C]
  float* sum_g;          // backward: [N, C] S
  float* sum_gh;         // backward: [N, C] P
  float* part;           // backward: [N, K] per-sample weight-gradient rows
  CinShape s;
  int64_t k;             // weight columns, 2C or 3C
  int64_t chans_per_block;
  int tps;               // threads per channel in a tile (power of two dividing kThreads)
  bool pixels_fast;      // consecutive threads take consecutive pixels (NCHW), else channels
};

// Where a thread works in a block's tile of tcs channels x all pixels.
struct Lanes {
  int tc;   // channel lane, [0, tcs)
  int tp;   // pixel lane, [0, tps)
  int tcs;  // channels per tile
  int tps;  // threads per channel
  int slot; // this thread's index into per-tile shared arrays (tc * tps + tp)
};

__device__ __forceinline__ Lanes make_lanes(int tps, bool pixels_fast) {
  const int t = static_cast<int>(threadIdx.x);
  const int tcs = static_cast<int>(blockDim.x) / tps;
  const int tc = pixels_fast ? t / tps : t % tcs;
  const int tp = pixels_fast ? t % tps : t / tcs;
  return Lanes{tc, tp, tcs, tps, tc * tps + tp};
}

// The channels [lo, hi) of this block (grid axis 1 counts channel groups).
struct ChannelRange {
  int64_t lo, hi;
};

__device__ __forceinline__ ChannelRange channel_range(int64_t chans_per_block, int64_t C) {
  const int64_t lo = static_cast<int64_t>(blockIdx.y) * chans_per_block;
  return ChannelRange{lo, lo + chans_per_block < C ? lo + chans_per_block : C};
}

__device__ __forceinline__ int64_t level_of(const void* level, bool int64, int64_t n) {
  return int64 ? static_cast<const int64_t*>(level)[n] : static_cast<int64_t>(static_cast<const int32_t*>(level)[n]);
}

// (count, sum, centred sum of squares) of a set of values.  The sum (not the mean) is
// carried so that the channel mean is one pairwise sum divided once: the mean term
// t = (mu - m) q amplifies the rounding of mu by |mu| / |mu - m|.
struct Moments {
  float n, sum, m2;
};

// Chan et al.: a <- a merged with b.
__device__ __forceinline__ void merge(Moments& a, const Moments& b) {
  if (b.n == 0.0f) return;
  if (a.n == 0.0f) {
    a = b;
    return;
  }
  const float delta = b.sum / b.n - a.sum / a.n;
  a.m2 += b.m2 + delta * delta * (a.n * b.n / (a.n + b.n));
  a.sum += b.sum;
  a.n += b.n;
}

// This thread's moments of one channel: pixels tp, tp + tps, ... in chunks of kUnroll
// (exact two-pass statistics inside a chunk).
template <typename T>
__device__ Moments thread_moments(const T* xc, int64_t hw, int64_t stride_p, int tp, int tps) {
  Moments acc{0.0f, 0.0f, 0.0f};
  for (int64_t p0 = tp; p0 < hw; p0 += static_cast<int64_t>(kUnroll) * tps) {
    float v[kUnroll];
    float sum = 0.0f;
    int cnt = 0;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t p = p0 + static_cast<int64_t>(u) * tps;
      v[u] = p < hw ? to_float(xc[p * stride_p]) : 0.0f;
      sum += v[u];
      cnt += p < hw ? 1 : 0;
    }
    const float mean = sum / static_cast<float>(cnt);
    float m2 = 0.0f;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const float d = v[u] - mean;
      if (p0 + static_cast<int64_t>(u) * tps < hw) m2 += d * d;
    }
    merge(acc, Moments{static_cast<float>(cnt), sum, m2});
  }
  return acc;
}

// m and q of one sample from its C channel means (every thread gets them).
struct ChannelMean {
  float m, q;
};

__device__ ChannelMean channel_mean_stats(const float* mu_row, int64_t C, float eps, float* red) {
  float acc = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) acc += mu_row[c];
  const float m = block_sum(acc, red) / static_cast<float>(C);
  float acc2 = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float d = mu_row[c] - m;
    acc2 += d * d;
  }
  const float ss = block_sum(acc2, red);
  const float q = C > 1 ? 1.0f / sqrtf(ss / static_cast<float>(C - 1) + eps) : 0.0f;
  return ChannelMean{m, q};
}

// Per-channel affine coefficients: y = (x - mu) * scale + bias.
struct Coeffs {
  float mean, rstd, gamma, alpha, t, scale, bias;
};

__device__ __forceinline__ Coeffs coeffs(const float* w_row, const float* mu_row, const float* rstd_row,
                                         int64_t C, int64_t c, bool has_beta, ChannelMean cm) {
  Coeffs k;
  k.mean = mu_row[c];
  k.rstd = rstd_row[c];
  k.gamma = w_row[c];
  k.alpha = w_row[C + c];
  k.t = (k.mean - cm.m) * cm.q;
  k.scale = k.gamma * k.rstd;
  k.bias = k.gamma * k.alpha * k.t + (has_beta ? w_row[2 * C + c] : 0.0f);
  return k;
}

__device__ __forceinline__ float elu(float y) { return y > 0.0f ? y : expm1f(y); }

// dL/dy through the ELU, y recomputed from the centred input.
__device__ __forceinline__ float output_grad(float dy, float xc, const Coeffs& k, bool elu_on) {
  if (!elu_on) return dy;
  const float y = xc * k.scale + k.bias;
  return y > 0.0f ? dy : dy * expf(y);
}

// Sums each tile channel's per-thread values over its tps threads (fixed tree);
// afterwards slot tc * tps holds the channel's total.  All threads must call it.
__device__ __forceinline__ void tile_sum(float* a, float* b, const Lanes& ln) {
  __syncthreads();
  for (int half = ln.tps / 2; half > 0; half >>= 1) {
    if (ln.tp < half) {
      a[ln.slot] += a[ln.slot + half];
      b[ln.slot] += b[ln.slot + half];
    }
    __syncthreads();
  }
}

// ----------------------------------------------------------------------------- forward

template <typename T, int kPhase>
__global__ void __launch_bounds__(kThreads) cin_fwd_kernel(CinArgs<T> a) {
  __shared__ float red[kThreads];
  __shared__ float s_n[kThreads];
  __shared__ float s_sum[kThreads];
  __shared__ float s_m2[kThreads];
  const CinShape& s = a.s;
  const int64_t n = blockIdx.x;
  const ChannelRange cr = channel_range(a.chans_per_block, s.c);
  const int64_t c_lo = cr.lo, c_hi = cr.hi;
  const Lanes ln = make_lanes(a.tps, a.pixels_fast);
  const T* x = a.x + n * s.stride_n;
  float* mu_row = a.mu + n * s.c;
  float* rstd_row = a.rstd + n * s.c;

  if (kPhase & kPhase1) {
    for (int64_t c0 = c_lo; c0 < c_hi; c0 += ln.tcs) {
      const int64_t c = c0 + ln.tc;
      Moments mo{0.0f, 0.0f, 0.0f};
      if (c < c_hi) mo = thread_moments(x + c * s.stride_c, s.hw, s.stride_p, ln.tp, ln.tps);
      s_n[ln.slot] = mo.n;
      s_sum[ln.slot] = mo.sum;
      s_m2[ln.slot] = mo.m2;
      __syncthreads();
      for (int half = ln.tps / 2; half > 0; half >>= 1) {
        if (ln.tp < half) {
          Moments mine{s_n[ln.slot], s_sum[ln.slot], s_m2[ln.slot]};
          merge(mine, Moments{s_n[ln.slot + half], s_sum[ln.slot + half], s_m2[ln.slot + half]});
          s_n[ln.slot] = mine.n;
          s_sum[ln.slot] = mine.sum;
          s_m2[ln.slot] = mine.m2;
        }
        __syncthreads();
      }
      if (ln.tp == 0 && c < c_hi) {
        mu_row[c] = s_sum[ln.slot] / static_cast<float>(s.hw);
        rstd_row[c] = 1.0f / sqrtf(s_m2[ln.slot] / static_cast<float>(s.hw) + s.eps);
      }
    }
  }
  if (kPhase == kBoth) __syncthreads();  // phase 2 reads the means of every channel
  if (kPhase & kPhase2) {
    const ChannelMean cm = channel_mean_stats(mu_row, s.c, s.eps, red);
    const float* w_row = a.weight + level_of(a.level, s.level_int64, n) * a.k;
    T* y = a.y + n * s.stride_n;
    for (int64_t c = c_lo + ln.tc; c < c_hi; c += ln.tcs) {
      const Coeffs k = coeffs(w_row, mu_row, rstd_row, s.c, c, s.has_beta, cm);
      const T* xc = x + c * s.stride_c;
      T* yc = y + c * s.stride_c;
      for (int64_t p = ln.tp; p < s.hw; p += ln.tps) {
        float v = (to_float(xc[p * s.stride_p]) - k.mean) * k.scale + k.bias;
        if (s.elu) v = elu(v);
        yc[p * s.stride_p] = from_float<T>(v);
      }
    }
  }
}

// ----------------------------------------------------------------------------- backward

template <typename T, int kPhase>
__global__ void __launch_bounds__(kThreads) cin_bwd_kernel(CinArgs<T> a) {
  __shared__ float red[kThreads];
  __shared__ float s_g[kThreads];
  __shared__ float s_gh[kThreads];
  const CinShape& s = a.s;
  const int64_t n = blockIdx.x;
  const ChannelRange cr = channel_range(a.chans_per_block, s.c);
  const int64_t c_lo = cr.lo, c_hi = cr.hi;
  const Lanes ln = make_lanes(a.tps, a.pixels_fast);
  const T* x = a.x + n * s.stride_n;
  const T* dy = a.dy + n * s.stride_n;
  const float* mu_row = a.mu + n * s.c;
  const float* rstd_row = a.rstd + n * s.c;
  float* sg_row = a.sum_g + n * s.c;
  float* sgh_row = a.sum_gh + n * s.c;
  const float* w_row = a.weight + level_of(a.level, s.level_int64, n) * a.k;
  const ChannelMean cm = channel_mean_stats(mu_row, s.c, s.eps, red);

  if (kPhase & kPhase1) {
    float* part = a.part + n * a.k;
    for (int64_t c0 = c_lo; c0 < c_hi; c0 += ln.tcs) {
      const int64_t c = c0 + ln.tc;
      float sum_g = 0.0f, sum_gx = 0.0f;
      Coeffs k{};
      if (c < c_hi) {
        k = coeffs(w_row, mu_row, rstd_row, s.c, c, s.has_beta, cm);
        const T* xc = x + c * s.stride_c;
        const T* dyc = dy + c * s.stride_c;
        for (int64_t p = ln.tp; p < s.hw; p += ln.tps) {
          const float xm = to_float(xc[p * s.stride_p]) - k.mean;
          const float g = output_grad(to_float(dyc[p * s.stride_p]), xm, k, s.elu);
          sum_g += g;
          sum_gx += g * xm;
        }
      }
      s_g[ln.slot] = sum_g;
      s_gh[ln.slot] = sum_gx;
      tile_sum(s_g, s_gh, ln);
      if (ln.tp == 0 && c < c_hi) {
        const float S = s_g[ln.slot];
        const float P = s_gh[ln.slot] * k.rstd;
        sg_row[c] = S;
        sgh_row[c] = P;
        part[c] = P + k.alpha * k.t * S;
        part[s.c + c] = k.gamma * k.t * S;
        if (s.has_beta) part[2 * s.c + c] = S;
      }
    }
  }
  if (kPhase == kBoth) __syncthreads();  // phase 2 reads S of every channel
  if (kPhase & kPhase2) {
    float dt = 0.0f, dtt = 0.0f;
    for (int64_t c = threadIdx.x; c < s.c; c += blockDim.x) {
      const float d = w_row[c] * w_row[s.c + c] * sg_row[c];
      dt += d;
      dtt += d * ((mu_row[c] - cm.m) * cm.q);
    }
    const float sum_dt = block_sum(dt, red);
    const float sum_dtt = block_sum(dtt, red);
    const float inv_hw = 1.0f / static_cast<float>(s.hw);
    T* dx = a.y + n * s.stride_n;
    for (int64_t c = c_lo + ln.tc; c < c_hi; c += ln.tcs) {
      const Coeffs k = coeffs(w_row, mu_row, rstd_row, s.c, c, s.has_beta, cm);
      const float S = sg_row[c], P = sgh_row[c];
      const float dmu = s.c > 1 ? cm.q * (k.gamma * k.alpha * S - sum_dt / static_cast<float>(s.c) -
                                          k.t * (sum_dtt / static_cast<float>(s.c - 1)))
                                : 0.0f;
      const float c1 = -k.scale * k.rstd * P * inv_hw;   // dx = g scale + (x - mu) c1 + c0
      const float c0 = (dmu - k.scale * S) * inv_hw;
      const T* xc = x + c * s.stride_c;
      const T* dyc = dy + c * s.stride_c;
      T* dxc = dx + c * s.stride_c;
      for (int64_t p = ln.tp; p < s.hw; p += ln.tps) {
        const float xm = to_float(xc[p * s.stride_p]) - k.mean;
        const float g = output_grad(to_float(dyc[p * s.stride_p]), xm, k, s.elu);
        dxc[p * s.stride_p] = from_float<T>(g * k.scale + xm * c1 + c0);
      }
    }
  }
}

// out[l, k] = sum of part[n, k] over the samples n with level l, in ascending n
// (one thread per (l, k): bitwise reproducible).  Grid (L, ceil(K / threads)).
__global__ void __launch_bounds__(kLevelSumThreads) level_sum_kernel(const float* part, const void* level,
                                                                     bool level_int64, float* out,
                                                                     int64_t N, int64_t K) {
  const int64_t l = blockIdx.x;
  const int64_t k = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (k >= K) return;
  float acc = 0.0f;
  int64_t n0 = 0;
  for (; n0 + 8 <= N; n0 += 8) {  // eight independent loads in flight
    float v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j)
      v[j] = level_of(level, level_int64, n0 + j) == l ? part[(n0 + j) * K + k] : 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc += v[j];
  }
  for (; n0 < N; ++n0)
    if (level_of(level, level_int64, n0) == l) acc += part[n0 * K + k];
  out[l * K + k] = acc;
}

// ----------------------------------------------------------------------------- launch plan

struct Plan {
  bool split;
  int64_t groups;
  int64_t chans_per_block;
  int tps;
  bool pixels_fast;
};

int64_t pow2_ceil(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

Plan make_plan(const CinShape& s, CinPlan plan, int num_sms) {
  Plan p{};
  p.pixels_fast = !(s.stride_c == 1 && s.c > 1);
  const int64_t sms = num_sms > 0 ? num_sms : 1;
  const int64_t want = clamp64(ceil_div(2 * sms, s.n), 2, 65535);  // aim at two blocks per SM
  p.groups = 1;
  if (plan == CinPlan::kSplit) {
    p.split = true;
    p.groups = want < s.c ? want : s.c;
  } else if (plan == CinPlan::kAuto && s.n < sms) {
    const int64_t most = ceil_div(s.c, kMinGroupChannels);
    p.groups = want < most ? want : most;
    p.split = p.groups > 1;
  }
  p.chans_per_block = ceil_div(s.c, p.groups);
  p.groups = ceil_div(s.c, p.chans_per_block);
  if (p.pixels_fast) {
    // about kUnroll pixels per thread and channel, at least a warp per channel
    p.tps = static_cast<int>(clamp64(pow2_ceil(ceil_div(s.hw, kUnroll)), kThreads < 32 ? kThreads : 32, kThreads));
  } else {
    const int64_t tcs = clamp64(pow2_ceil(p.chans_per_block), 1, kThreads < 64 ? kThreads : 64);
    p.tps = static_cast<int>(kThreads / tcs);
  }
  return p;
}

template <typename T>
CinArgs<T> make_args(const CinShape& s, const Plan& plan) {
  CinArgs<T> a{};
  a.s = s;
  a.k = (s.has_beta ? 3 : 2) * s.c;
  a.chans_per_block = plan.chans_per_block;
  a.tps = plan.tps;
  a.pixels_fast = plan.pixels_fast;
  return a;
}

// Both phases in one launch (fused plan), or phase 1 then phase 2 (split plan).
template <typename Args>
cudaError_t launch_phases(void (*both)(Args), void (*first)(Args), void (*second)(Args), const Args& a,
                          const Plan& plan, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.s.n), static_cast<unsigned>(plan.groups));
  const dim3 block(kThreads);
  if (!plan.split) {
    FASTNCSN_LAUNCH(both, grid, block, stream, a);
    return FASTNCSN_LAUNCH_STATUS();
  }
  FASTNCSN_LAUNCH(first, grid, block, stream, a);
  const cudaError_t err = FASTNCSN_LAUNCH_STATUS();
  if (err != cudaSuccess) return err;
  FASTNCSN_LAUNCH(second, grid, block, stream, a);
  return FASTNCSN_LAUNCH_STATUS();
}

bool shape_ok(const CinShape& s) {
  return s.n >= 0 && s.c >= 0 && s.hw >= 0 && s.n <= 0x7fffffff && s.num_levels <= 0x7fffffff;
}

}  // namespace

cudaError_t cin_plus_fwd(const void* x, void* out, const void* level_index, const float* weight, float* mu,
                         float* rstd, DType dtype, const CinShape& shape, CinPlan plan, int num_sms,
                         cudaStream_t stream) {
  if (!shape_ok(shape)) return cudaErrorInvalidValue;
  if (shape.n == 0 || shape.c == 0 || shape.hw == 0) return cudaSuccess;
  const Plan p = make_plan(shape, plan, num_sms);
  return detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    CinArgs<T> a = make_args<T>(shape, p);
    a.x = static_cast<const T*>(x);
    a.y = static_cast<T*>(out);
    a.level = level_index;
    a.weight = weight;
    a.mu = mu;
    a.rstd = rstd;
    return launch_phases(&cin_fwd_kernel<T, kBoth>, &cin_fwd_kernel<T, kPhase1>, &cin_fwd_kernel<T, kPhase2>, a,
                         p, stream);
  });
}

cudaError_t cin_plus_bwd(const void* dy, const void* x, void* dx, const void* level_index, const float* weight,
                         const float* mu, const float* rstd, float* sum_g, float* sum_gh, float* part,
                         float* grad_weight, DType dtype, const CinShape& shape, CinPlan plan, int num_sms,
                         cudaStream_t stream) {
  if (!shape_ok(shape)) return cudaErrorInvalidValue;
  const int64_t k = (shape.has_beta ? 3 : 2) * shape.c;
  if (shape.num_levels == 0 || k == 0) return cudaSuccess;
  if (shape.n > 0 && shape.hw > 0) {
    const Plan p = make_plan(shape, plan, num_sms);
    const cudaError_t err = detail::dispatch_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      CinArgs<T> a = make_args<T>(shape, p);
      a.x = static_cast<const T*>(x);
      a.dy = static_cast<const T*>(dy);
      a.y = static_cast<T*>(dx);
      a.level = level_index;
      a.weight = weight;
      a.mu = const_cast<float*>(mu);
      a.rstd = const_cast<float*>(rstd);
      a.sum_g = sum_g;
      a.sum_gh = sum_gh;
      a.part = part;
      return launch_phases(&cin_bwd_kernel<T, kBoth>, &cin_bwd_kernel<T, kPhase1>, &cin_bwd_kernel<T, kPhase2>, a,
                           p, stream);
    });
    if (err != cudaSuccess) return err;
  }
  // with no pixel every per-sample row would be zero: sum no sample (the rows stay unwritten)
  const int64_t samples = shape.hw > 0 ? shape.n : 0;
  const dim3 grid(static_cast<unsigned>(shape.num_levels), static_cast<unsigned>(ceil_div(k, kLevelSumThreads)));
  auto kernel = &level_sum_kernel;
  FASTNCSN_LAUNCH(kernel, grid, dim3(kLevelSumThreads), stream, part, level_index, shape.level_int64, grad_weight,
                  samples, k);
  return FASTNCSN_LAUNCH_STATUS();
}

}  // namespace fastncsn
