// handheld's own kernels for the two ExecuTorch LLM ops that handheld's CPU programs call:
//   llama::update_cache.out  writes a step's keys or values into the cache at start_pos;
//   llama::custom_sdpa.out   causal attention of the step's queries over cache slots [0, start_pos + T) only,
//                            so a decode step costs what the context holds, not what the cache could hold.
// The wheel ships these kernels only inside a library that needs libtorch and Python, so the native runner
// (host, aarch64 under qemu, phones) carries this file instead. Same schemas and semantics as ExecuTorch's ops
// (query [B, T, Hq, D], caches [B, S, Hkv, D], grouped-query heads, float32); no attention mask, no dropout.

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

// x86-64: one copy of each hot loop per vector width, chosen at load time (the runner runs on any x86 CPU).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HANDHELD_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HANDHELD_VECTOR_CLONES
#endif

namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

constexpr int64_t kRowsPerItem = 4;  // query rows of one head that share each key row while it is in registers

bool require(KernelRuntimeContext& ctx, bool ok, const char* what) {
  if (!ok) {
    ET_LOG(Error, "%s", what);
    ctx.fail(Error::InvalidArgument);
  }
  return ok;
}

Tensor& update_cache_out(KernelRuntimeContext& ctx, const Tensor& value, const Tensor& cache, const int64_t start_pos,
                         Tensor& out) {
  const bool fits = value.dim() == 4 && cache.dim() == 4 && value.scalar_type() == cache.scalar_type() &&
                    value.size(0) == cache.size(0) && value.size(2) == cache.size(2) &&
                    value.size(3) == cache.size(3) && start_pos >= 0 && start_pos + value.size(1) <= cache.size(1);
  if (!require(ctx, fits, "llama::update_cache: the value does not fit the cache at start_pos")) return out;
  const size_t row_bytes = value.size(2) * value.size(3) * value.element_size();
  const auto* src = static_cast<const char*>(value.const_data_ptr());
  auto* dst = static_cast<char*>(cache.mutable_data_ptr());
  const int64_t steps = value.size(1), slots = cache.size(1);
  for (int64_t b = 0; b < value.size(0); ++b) {
    std::memcpy(dst + (b * slots + start_pos) * row_bytes, src + b * steps * row_bytes, steps * row_bytes);
  }
  return out;
}

// Everything below is inlined into `attend_item`, which is compiled once per vector width: a call per key
// through the clones' dispatch would cost more than the key's arithmetic.
#define HANDHELD_INLINE inline __attribute__((always_inline))

// exp(x) for x <= 0 to float32 precision: x = n ln2 + r, e^r by its Taylor polynomial, 2^n in the exponent bits.
// Branch-free so the softmax loop vectorizes (std::exp does not, and prefill takes millions of them).
HANDHELD_INLINE float exp_nonpositive(float x) {
  x = x > -87.0f ? x : -87.0f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const float n = (x * 1.44269504f + kRound) - kRound;
  const float r = x - n * 0.693147181f;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, sizeof bits);
  bits += static_cast<int32_t>(n) << 23;
  std::memcpy(&p, &bits, sizeof p);
  return p;
}

// kDim > 0: the head size known when compiling (64 and 128 cover Llama 3.2 and SmolLM2), so loops unroll.
template <int64_t kDim>
HANDHELD_INLINE float dot(const float* a, const float* b, int64_t n) {
  const int64_t len = kDim > 0 ? kDim : n;
  float acc[16] = {};  // independent partial sums: the loop vectorizes without reassociating one sum
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    for (int k = 0; k < 16; ++k) acc[k] += a[i + k] * b[i + k];
  }
  for (int k = 0; i + k < len; ++k) acc[k] += a[i + k] * b[i + k];
  for (int width = 8; width > 0; width /= 2) {  // pairwise: a few shuffles, not 16 dependent additions
    for (int k = 0; k < width; ++k) acc[k] += acc[k + width];
  }
  return acc[0];
}

// Scores to probabilities in place (unnormalized); returns their sum.
HANDHELD_INLINE float softmax_numerators(float* scores, int64_t n) {
  float peak = scores[0];
  for (int64_t j = 1; j < n; ++j) peak = scores[j] > peak ? scores[j] : peak;
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = exp_nonpositive(scores[j] - peak);
    sum += scores[j];
  }
  return sum;
}

// o = inverse * sum_j weights[j] * values[j]; with kDim known the sum stays in registers across the keys.
template <int64_t kDim>
HANDHELD_INLINE void weighted_values(float* o, const float* weights, float inverse, const float* values,
                                     int64_t stride, int64_t n, int64_t d) {
  if constexpr (kDim > 0) {
    float acc[kDim] = {};
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t c = 0; c < kDim; ++c) acc[c] += weights[j] * values[j * stride + c];
    }
    for (int64_t c = 0; c < kDim; ++c) o[c] = acc[c] * inverse;
  } else {
    std::fill(o, o + d, 0.0f);
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t c = 0; c < d; ++c) o[c] += weights[j] * values[j * stride + c];
    }
    for (int64_t c = 0; c < d; ++c) o[c] *= inverse;
  }
}

struct Shapes {
  int64_t batch, steps, q_heads, kv_heads, head_dim, slots;
};

struct Item {
  int64_t b, head, t0, rows;
};

// Rows t0.. t0+rows-1 of query head `head` in batch `b`: scores, softmax, weighted values.
template <int64_t kDim>
HANDHELD_INLINE void attend_rows(const float* q, const float* k, const float* v, float* out, const Shapes& s,
                                 const Item& it, int64_t start_pos, bool is_causal, float scale,
                                 std::vector<float>& scores) {
  const int64_t kv_head = it.head / (s.q_heads / s.kv_heads), d = kDim > 0 ? kDim : s.head_dim;
  const int64_t stride = s.kv_heads * d, all_keys = start_pos + s.steps;
  auto keys_of = [&](int64_t row) { return is_causal ? start_pos + it.t0 + row + 1 : all_keys; };
  const int64_t widest = keys_of(it.rows - 1);
  scores.resize(it.rows * widest);
  const float* q_rows = q + ((it.b * s.steps + it.t0) * s.q_heads + it.head) * d;
  const float* k_base = k + (it.b * s.slots * s.kv_heads + kv_head) * d;
  const float* v_base = v + (it.b * s.slots * s.kv_heads + kv_head) * d;
  for (int64_t j = 0; j < widest; ++j) {
    for (int64_t r = 0; r < it.rows; ++r) {
      if (j < keys_of(r)) scores[r * widest + j] = dot<kDim>(q_rows + r * s.q_heads * d, k_base + j * stride, d) * scale;
    }
  }
  for (int64_t r = 0; r < it.rows; ++r) {
    float* row_scores = scores.data() + r * widest;
    const int64_t n = keys_of(r);
    const float inverse = 1.0f / softmax_numerators(row_scores, n);
    float* o = out + ((it.b * s.steps + it.t0 + r) * s.q_heads + it.head) * d;
    weighted_values<kDim>(o, row_scores, inverse, v_base, stride, n, d);
  }
}

HANDHELD_VECTOR_CLONES
void attend_item(const float* q, const float* k, const float* v, float* out, const Shapes& s, const Item& it,
                 int64_t start_pos, bool is_causal, float scale, std::vector<float>& scores) {
  if (s.head_dim == 64) {
    attend_rows<64>(q, k, v, out, s, it, start_pos, is_causal, scale, scores);
  } else if (s.head_dim == 128) {
    attend_rows<128>(q, k, v, out, s, it, start_pos, is_causal, scale, scores);
  } else {
    attend_rows<0>(q, k, v, out, s, it, start_pos, is_causal, scale, scores);
  }
}

bool sdpa_arguments_valid(const Tensor& q, const Tensor& k, const Tensor& v, int64_t start_pos) {
  for (const Tensor* t : {&q, &k, &v}) {
    if (t->dim() != 4 || t->scalar_type() != ScalarType::Float) return false;
  }
  return k.sizes().equals(v.sizes()) && q.size(0) == k.size(0) && q.size(3) == k.size(3) && k.size(2) > 0 &&
         q.size(2) % k.size(2) == 0 && start_pos >= 0 && start_pos + q.size(1) <= k.size(1);
}

Tensor& custom_sdpa_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        const int64_t start_pos, const std::optional<Tensor>& attn_mask, const double dropout_p,
                        const bool is_causal, const std::optional<double> scale, Tensor& out) {
  if (!require(ctx, sdpa_arguments_valid(q, k, v, start_pos),
               "llama::custom_sdpa: float32 query [B,T,Hq,D] and caches [B,S,Hkv,D] with start_pos + T <= S") ||
      !require(ctx, !attn_mask.has_value() && dropout_p == 0.0,
               "llama::custom_sdpa: handheld's kernel takes no attention mask and no dropout") ||
      !require(ctx, executorch::runtime::resize_tensor(out, q.sizes()) == Error::Ok,
               "llama::custom_sdpa: cannot resize the output to the query's shape")) {
    return out;
  }
  const Shapes s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), k.size(1)};
  const float softmax_scale = scale.has_value() ? static_cast<float>(*scale) : 1.0f / std::sqrt(float(s.head_dim));
  const int64_t tiles = (s.steps + kRowsPerItem - 1) / kRowsPerItem;
  const float *qd = q.const_data_ptr<float>(), *kd = k.const_data_ptr<float>(), *vd = v.const_data_ptr<float>();
  float* od = out.mutable_data_ptr<float>();
  executorch::extension::parallel_for(0, s.batch * s.q_heads * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t tile = item % tiles, head = (item / tiles) % s.q_heads, b = item / (tiles * s.q_heads);
      const int64_t t0 = tile * kRowsPerItem;
      const Item it{b, head, t0, std::min(kRowsPerItem, s.steps - t0)};
      attend_item(qd, kd, vd, od, s, it, start_pos, is_causal, softmax_scale, scores);
    }
  });
  return out;
}

}  // namespace

EXECUTORCH_LIBRARY(llama, "update_cache.out", update_cache_out);
EXECUTORCH_LIBRARY(llama, "custom_sdpa.out", custom_sdpa_out);
