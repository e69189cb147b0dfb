// handheld's own kernels for the ExecuTorch LLM ops that handheld's CPU programs call:
//   llama::update_cache.out  writes a step's keys or values into the cache at start_pos;
//   llama::custom_sdpa.out   causal attention of the step's queries over cache slots [0, start_pos + T) only,
//                            so a decode step costs what the context holds, not what the cache could hold;
//   llama::custom_quantized_sdpa.out  the same over int8 caches (`--kv-cache int8`).
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
  return x > -80.0f ? p : 0.0f;  // a weight that small is nothing next to the peak's 1, and must not go denormal
}

// 16 floats as one value: one AVX-512 register, two AVX2 ones, four NEON ones; the compiler picks per clone.
typedef float Lanes __attribute__((vector_size(64)));
typedef float HalfLanes __attribute__((vector_size(32)));
typedef float QuarterLanes __attribute__((vector_size(16)));

HANDHELD_INLINE Lanes load_lanes(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof v);  // unaligned load
  return v;
}

HANDHELD_INLINE float lane_sum(Lanes v) {
  const HalfLanes h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                      __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const QuarterLanes q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  return (q[0] + q[2]) + (q[1] + q[3]);
}

// kDim > 0: the head size known when compiling (64 and 128 cover Llama 3.2 and SmolLM2), a multiple of 16.
template <int64_t kDim>
HANDHELD_INLINE float dot(const float* a, const float* b, int64_t n) {
  if constexpr (kDim > 0) {
    Lanes acc = load_lanes(a) * load_lanes(b);
    for (int64_t i = 16; i < kDim; i += 16) acc += load_lanes(a + i) * load_lanes(b + i);
    return lane_sum(acc);
  } else {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
    return sum;
  }
}

// Scores to probabilities in place (unnormalized, relative to the peak score); returns their sum.
HANDHELD_INLINE float softmax_numerators(float* scores, int64_t n, float& peak) {
  peak = scores[0];
  for (int64_t j = 1; j < n; ++j) peak = scores[j] > peak ? scores[j] : peak;
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = exp_nonpositive(scores[j] - peak);
    sum += scores[j];
  }
  return sum;
}

// o = inverse * sum_j weights[j] * values[j]; with kDim known the sums stay in registers across the keys.
template <int64_t kDim>
HANDHELD_INLINE void weighted_values(float* o, const float* weights, float inverse, const float* values,
                                     int64_t stride, int64_t n, int64_t d) {
  if constexpr (kDim > 0) {
    Lanes acc[kDim / 16] = {};
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t i = 0; i < kDim / 16; ++i) acc[i] += weights[j] * load_lanes(values + j * stride + 16 * i);
    }
    for (int64_t i = 0; i < kDim / 16; ++i) {
      const Lanes scaled = acc[i] * inverse;
      std::memcpy(o + 16 * i, &scaled, sizeof scaled);
    }
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
    float peak;
    const float inverse = 1.0f / softmax_numerators(row_scores, n, peak);
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

// Decode (one query per head): the keys are cut into chunks so every thread has work, and each chunk's key and
// value rows are read from memory once for all query heads of their group (they stay in cache between heads).
constexpr int64_t kMaxKeysPerChunk = 128;  // a chunk's key and value rows for every head stay in L2

// Chunks of at most kMaxKeysPerChunk slots (a multiple of 16), at least two per thread so short contexts split too.
int64_t keys_per_chunk(int64_t keys) {
  const int64_t wanted = 2 * std::max<int64_t>(1, executorch::extension::get_thread_count());
  const int64_t size = (keys + wanted - 1) / wanted;
  return std::clamp<int64_t>((size + 15) / 16 * 16, 16, kMaxKeysPerChunk);
}

struct Chunk {
  int64_t b, kv_head, lo, hi;
};

// Per query head of the chunk's group: the chunk's peak score, its sum of exp(score - peak), and its values
// weighted by those exps, kept apart to be merged across chunks.
template <int64_t kDim>
HANDHELD_INLINE void decode_chunk(const float* q, const float* k, const float* v, const Shapes& s, const Chunk& c,
                                  float scale, float* partials, std::vector<float>& scores) {
  const int64_t group = s.q_heads / s.kv_heads, d = kDim > 0 ? kDim : s.head_dim;
  const int64_t stride = s.kv_heads * d, n = c.hi - c.lo, record = d + 2;
  scores.resize(n);
  const float* k_rows = k + ((c.b * s.slots + c.lo) * s.kv_heads + c.kv_head) * d;
  const float* v_rows = v + ((c.b * s.slots + c.lo) * s.kv_heads + c.kv_head) * d;
  for (int64_t g = 0; g < group; ++g) {
    const int64_t head = c.kv_head * group + g;
    const float* query = q + (c.b * s.q_heads + head) * d;
    for (int64_t j = 0; j < n; ++j) scores[j] = dot<kDim>(query, k_rows + j * stride, d) * scale;
    float* rec = partials + (c.b * s.q_heads + head) * record;
    rec[1] = softmax_numerators(scores.data(), n, rec[0]);
    weighted_values<kDim>(rec + 2, scores.data(), 1.0f, v_rows, stride, n, d);
  }
}

// One head's row sits between the other heads' rows, a stride the hardware prefetcher follows poorly: ask ahead.
constexpr int64_t kPrefetchRows = 16;

template <int64_t kDim>
HANDHELD_INLINE void prefetch_row(const float* row) {
  for (int64_t i = 0; i < kDim; i += 16) __builtin_prefetch(row + i);  // one 64-byte line per 16 floats
}

// decode_chunk with the group's query heads side by side: each key and value row is loaded once for all of them.
template <int64_t kDim, int64_t kGroup>
HANDHELD_INLINE void decode_chunk_grouped(const float* q, const float* k, const float* v, const Shapes& s,
                                          const Chunk& c, float scale, float* partials, std::vector<float>& scores) {
  constexpr int64_t kParts = kDim / 16, kRecord = kDim + 2;
  const int64_t stride = s.kv_heads * kDim, n = c.hi - c.lo, first_head = c.b * s.q_heads + c.kv_head * kGroup;
  scores.resize(kGroup * n);
  const float* k_rows = k + ((c.b * s.slots + c.lo) * s.kv_heads + c.kv_head) * kDim;
  const float* v_rows = v + ((c.b * s.slots + c.lo) * s.kv_heads + c.kv_head) * kDim;
  Lanes query[kGroup][kParts];
  for (int64_t g = 0; g < kGroup; ++g) {
    for (int64_t i = 0; i < kParts; ++i) query[g][i] = load_lanes(q + (first_head + g) * kDim + 16 * i) * scale;
  }
  for (int64_t j = 0; j < n; ++j) {
    prefetch_row<kDim>(k_rows + (j + kPrefetchRows) * stride);
    Lanes key[kParts];
    for (int64_t i = 0; i < kParts; ++i) key[i] = load_lanes(k_rows + j * stride + 16 * i);
    for (int64_t g = 0; g < kGroup; ++g) {
      Lanes acc = query[g][0] * key[0];
      for (int64_t i = 1; i < kParts; ++i) acc += query[g][i] * key[i];
      scores[g * n + j] = lane_sum(acc);
    }
  }
  Lanes acc[kGroup][kParts] = {};
  float* records = partials + first_head * kRecord;
  for (int64_t g = 0; g < kGroup; ++g) records[g * kRecord + 1] = softmax_numerators(scores.data() + g * n, n, records[g * kRecord]);
  for (int64_t j = 0; j < n; ++j) {
    prefetch_row<kDim>(v_rows + (j + kPrefetchRows) * stride);
    for (int64_t i = 0; i < kParts; ++i) {
      const Lanes value = load_lanes(v_rows + j * stride + 16 * i);
      for (int64_t g = 0; g < kGroup; ++g) acc[g][i] += scores[g * n + j] * value;
    }
  }
  for (int64_t g = 0; g < kGroup; ++g) {
    for (int64_t i = 0; i < kParts; ++i) std::memcpy(records + g * kRecord + 2 + 16 * i, &acc[g][i], sizeof(Lanes));
  }
}

HANDHELD_VECTOR_CLONES
void decode_chunk_item(const float* q, const float* k, const float* v, const Shapes& s, const Chunk& c, float scale,
                       float* partials, std::vector<float>& scores) {
  const int64_t group = s.q_heads / s.kv_heads;
  if (s.head_dim == 64 && group == 3) {  // SmolLM2, Llama 3.2 3B's group
    decode_chunk_grouped<64, 3>(q, k, v, s, c, scale, partials, scores);
  } else if (s.head_dim == 64 && group == 4) {  // Llama 3.2 1B
    decode_chunk_grouped<64, 4>(q, k, v, s, c, scale, partials, scores);
  } else if (s.head_dim == 128 && group == 3) {  // Llama 3.2 3B
    decode_chunk_grouped<128, 3>(q, k, v, s, c, scale, partials, scores);
  } else if (s.head_dim == 64) {
    decode_chunk<64>(q, k, v, s, c, scale, partials, scores);
  } else if (s.head_dim == 128) {
    decode_chunk<128>(q, k, v, s, c, scale, partials, scores);
  } else {
    decode_chunk<0>(q, k, v, s, c, scale, partials, scores);
  }
}

// out[b, 0, head] from its chunks' records: rescaled to the overall peak, summed, normalized.
void merge_chunks(const std::vector<float>& partials, const Shapes& s, int64_t chunks, float* out) {
  const int64_t d = s.head_dim, record = d + 2, rows = s.batch * s.q_heads;
  for (int64_t row = 0; row < rows; ++row) {
    float peak = -INFINITY;
    for (int64_t c = 0; c < chunks; ++c) peak = std::max(peak, partials[(c * rows + row) * record]);
    float total = 0.0f;
    float* o = out + row * d;
    std::fill(o, o + d, 0.0f);
    for (int64_t c = 0; c < chunks; ++c) {
      const float* rec = partials.data() + (c * rows + row) * record;
      const float weight = std::exp(rec[0] - peak);
      total += weight * rec[1];
      for (int64_t i = 0; i < d; ++i) o[i] += weight * rec[2 + i];
    }
    for (int64_t i = 0; i < d; ++i) o[i] /= total;
  }
}

// One decode step: the filled slots cut into chunks, `chunk_fn(chunk, its partials, scratch)` fills each chunk's
// records for every query head of its KV head, and the chunks are merged by their peaks.
template <typename ChunkFn>
void decode_in_chunks(const Shapes& s, int64_t start_pos, float* out, ChunkFn&& chunk_fn) {
  const int64_t keys = start_pos + 1, chunk_keys = keys_per_chunk(keys), chunks = (keys + chunk_keys - 1) / chunk_keys;
  const int64_t rows = s.batch * s.q_heads;
  std::vector<float> partials(chunks * rows * (s.head_dim + 2));
  // One item: one chunk of slots for every KV head. The heads' rows interleave in the cache; one thread reading
  // the whole chunk uses the neighbouring lines the prefetcher brings in (per head, they were fetched twice more).
  executorch::extension::parallel_for(0, chunks * s.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t chunk = item / s.batch, b = item % s.batch, lo = chunk * chunk_keys;
      for (int64_t kv_head = 0; kv_head < s.kv_heads; ++kv_head) {
        const Chunk c{b, kv_head, lo, std::min(keys, lo + chunk_keys)};
        chunk_fn(c, partials.data() + chunk * rows * (s.head_dim + 2), scores);
      }
    }
  });
  merge_chunks(partials, s, chunks, out);
}

void decode(const float* q, const float* k, const float* v, float* out, const Shapes& s, int64_t start_pos,
            float scale) {
  decode_in_chunks(s, start_pos, out, [&](const Chunk& c, float* partials, std::vector<float>& scores) {
    decode_chunk_item(q, k, v, s, c, scale, partials, scores);
  });
}

// An int8 cache as ExecuTorch's quantized cache stores it: values [B, S, Hkv, D], and per row (batch, slot,
// head) a float32 scale and an int8 zero point; a row reads back as (value - zero point) * scale.
struct Int8Cache {
  const int8_t* ints;
  const float* scales;
  const int8_t* zero_points;
};

HANDHELD_INLINE Lanes load_lanes(const int8_t* p) {
  typedef int8_t Bytes __attribute__((vector_size(16)));
  Bytes bytes;
  std::memcpy(&bytes, p, sizeof bytes);
  return __builtin_convertvector(bytes, Lanes);
}

// decode_chunk_grouped over an int8 cache, without reading rows back to float: a score is
// scale * (q . ints - zero point * sum(q)), and the values' zero points come off once per head at the end
// (sum_j w_j scale_j (v_j - z_j) = sum_j (w_j scale_j) v_j - sum_j w_j scale_j z_j).
template <int64_t kDim, int64_t kGroup>
HANDHELD_INLINE void decode_chunk_int8(const float* q, const Int8Cache& k, const Int8Cache& v, const Shapes& s,
                                       const Chunk& c, float scale, float* partials, std::vector<float>& scores) {
  constexpr int64_t kParts = kDim / 16, kRecord = kDim + 2;
  const int64_t n = c.hi - c.lo, first_head = c.b * s.q_heads + c.kv_head * kGroup;
  const int64_t first_row = (c.b * s.slots + c.lo) * s.kv_heads + c.kv_head;  // slot c.lo, this KV head
  scores.resize(kGroup * n);
  Lanes query[kGroup][kParts];
  float query_sum[kGroup];
  for (int64_t g = 0; g < kGroup; ++g) {
    Lanes total = {};
    for (int64_t i = 0; i < kParts; ++i) {
      query[g][i] = load_lanes(q + (first_head + g) * kDim + 16 * i) * scale;
      total += query[g][i];
    }
    query_sum[g] = lane_sum(total);
  }
  for (int64_t j = 0; j < n; ++j) {
    const int64_t row = first_row + j * s.kv_heads;
    __builtin_prefetch(k.ints + (row + kPrefetchRows * s.kv_heads) * kDim);
    Lanes key[kParts];
    for (int64_t i = 0; i < kParts; ++i) key[i] = load_lanes(k.ints + row * kDim + 16 * i);
    const float key_scale = k.scales[row], key_zero = k.zero_points[row];
    for (int64_t g = 0; g < kGroup; ++g) {
      Lanes acc = query[g][0] * key[0];
      for (int64_t i = 1; i < kParts; ++i) acc += query[g][i] * key[i];
      scores[g * n + j] = key_scale * (lane_sum(acc) - key_zero * query_sum[g]);
    }
  }
  float* records = partials + first_head * kRecord;
  for (int64_t g = 0; g < kGroup; ++g) records[g * kRecord + 1] = softmax_numerators(scores.data() + g * n, n, records[g * kRecord]);
  Lanes acc[kGroup][kParts] = {};
  float zero_sum[kGroup] = {};
  for (int64_t j = 0; j < n; ++j) {
    const int64_t row = first_row + j * s.kv_heads;
    __builtin_prefetch(v.ints + (row + kPrefetchRows * s.kv_heads) * kDim);
    const float value_scale = v.scales[row], value_zero = v.zero_points[row];
    Lanes value[kParts];
    for (int64_t i = 0; i < kParts; ++i) value[i] = load_lanes(v.ints + row * kDim + 16 * i);
    for (int64_t g = 0; g < kGroup; ++g) {
      const float weight = scores[g * n + j] * value_scale;
      zero_sum[g] += weight * value_zero;
      for (int64_t i = 0; i < kParts; ++i) acc[g][i] += weight * value[i];
    }
  }
  for (int64_t g = 0; g < kGroup; ++g) {
    for (int64_t i = 0; i < kParts; ++i) {
      const Lanes result = acc[g][i] - zero_sum[g];
      std::memcpy(records + g * kRecord + 2 + 16 * i, &result, sizeof(Lanes));
    }
  }
}

// The head sizes and query groups of Llama 3.2 1B / 3B and SmolLM2 (others read the rows back to float).
bool int8_decode_fits(const Shapes& s) {
  const int64_t group = s.q_heads / s.kv_heads;
  return (s.head_dim == 64 && (group == 3 || group == 4)) || (s.head_dim == 128 && group == 3);
}

HANDHELD_VECTOR_CLONES
void decode_chunk_int8_item(const float* q, const Int8Cache& k, const Int8Cache& v, const Shapes& s, const Chunk& c,
                            float scale, float* partials, std::vector<float>& scores) {
  const int64_t group = s.q_heads / s.kv_heads;
  if (s.head_dim == 64 && group == 3) {
    decode_chunk_int8<64, 3>(q, k, v, s, c, scale, partials, scores);
  } else if (s.head_dim == 64 && group == 4) {
    decode_chunk_int8<64, 4>(q, k, v, s, c, scale, partials, scores);
  } else {
    decode_chunk_int8<128, 3>(q, k, v, s, c, scale, partials, scores);
  }
}

void decode_int8(const float* q, const Int8Cache& k, const Int8Cache& v, float* out, const Shapes& s,
                 int64_t start_pos, float scale) {
  decode_in_chunks(s, start_pos, out, [&](const Chunk& c, float* partials, std::vector<float>& scores) {
    decode_chunk_int8_item(q, k, v, s, c, scale, partials, scores);
  });
}

// Causal (or full) attention of q [B,T,Hq,D] over slots [0, start_pos + T) of k, v [B,slots,Hkv,D], all float32.
void attend(const float* qd, const float* kd, const float* vd, float* od, const Shapes& s, int64_t start_pos,
            bool is_causal, std::optional<double> scale) {
  const float softmax_scale = scale.has_value() ? static_cast<float>(*scale) : 1.0f / std::sqrt(float(s.head_dim));
  if (s.steps == 1) {  // one step sees every filled slot, causal or not
    decode(qd, kd, vd, od, s, start_pos, softmax_scale);
    return;
  }
  const int64_t tiles = (s.steps + kRowsPerItem - 1) / kRowsPerItem;
  executorch::extension::parallel_for(0, s.batch * s.q_heads * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t tile = item % tiles, head = (item / tiles) % s.q_heads, b = item / (tiles * s.q_heads);
      const int64_t t0 = tile * kRowsPerItem;
      const Item it{b, head, t0, std::min(kRowsPerItem, s.steps - t0)};
      attend_item(qd, kd, vd, od, s, it, start_pos, is_causal, softmax_scale, scores);
    }
  });
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
  attend(q.const_data_ptr<float>(), k.const_data_ptr<float>(), v.const_data_ptr<float>(),
         out.mutable_data_ptr<float>(), s, start_pos, is_causal, scale);
  return out;
}

// llama::custom_quantized_sdpa.out: an int8 query and int8 caches, each row (batch, position, head) read back as
// (int - zero point) * scale. The query is read back to float32 (a step's few rows). A decode step reads the
// cache's integers directly (decode_chunk_int8: a quarter of the float cache's bytes); prefill reads the filled
// slots [0, start_pos + T) back to float32 once and attends as custom_sdpa does. ExecuTorch's own kernel also
// multiplies integer queries; the two differ by float rounding only.
struct QuantizedRows {
  const Tensor* ints;
  const std::optional<Tensor>* scales;
  const std::optional<Tensor>* zero_points;
};

bool quantized_rows_valid(const QuantizedRows& r) {
  const Tensor& t = *r.ints;
  if (t.dim() != 4 || t.scalar_type() != ScalarType::Char || !r.scales->has_value() || !r.zero_points->has_value()) {
    return false;
  }
  const Tensor &scales = r.scales->value(), &zero_points = r.zero_points->value();
  return scales.scalar_type() == ScalarType::Float && zero_points.scalar_type() == ScalarType::Char &&
         scales.numel() == t.numel() / t.size(3) && zero_points.numel() == scales.numel();
}

// The first `positions` positions of every batch, as float32 [B, positions, H, D].
std::vector<float> dequantized(const QuantizedRows& r, int64_t positions) {
  const Tensor& t = *r.ints;
  const int64_t heads = t.size(2), d = t.size(3), stored = t.size(1);
  const auto* ints = t.const_data_ptr<int8_t>();
  const float* scales = r.scales->value().const_data_ptr<float>();
  const int8_t* zero_points = r.zero_points->value().const_data_ptr<int8_t>();
  std::vector<float> out(t.size(0) * positions * heads * d);
  for (int64_t b = 0; b < t.size(0); ++b) {
    for (int64_t row = 0; row < positions * heads; ++row) {
      const int64_t at = b * stored * heads + row;
      const float scale = scales[at], zero = zero_points[at];
      float* o = out.data() + (b * positions * heads + row) * d;
      for (int64_t c = 0; c < d; ++c) o[c] = (float(ints[at * d + c]) - zero) * scale;
    }
  }
  return out;
}

Int8Cache int8_cache(const QuantizedRows& r) {
  return {r.ints->const_data_ptr<int8_t>(), r.scales->value().const_data_ptr<float>(),
          r.zero_points->value().const_data_ptr<int8_t>()};
}

Tensor& custom_quantized_sdpa_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const int64_t start_pos, const std::optional<Tensor>& attn_mask,
                                  const double dropout_p, const bool is_causal, const std::optional<double> scale,
                                  const std::optional<Tensor>& q_zero_points, const std::optional<Tensor>& q_scales,
                                  const std::optional<Tensor>& k_zero_points, const std::optional<Tensor>& k_scales,
                                  const std::optional<Tensor>& v_zero_points, const std::optional<Tensor>& v_scales,
                                  const bool is_seq_at_dim_2, Tensor& out) {
  const QuantizedRows qr{&q, &q_scales, &q_zero_points}, kr{&k, &k_scales, &k_zero_points}, vr{&v, &v_scales, &v_zero_points};
  const bool shapes_fit = q.dim() == 4 && k.dim() == 4 && k.sizes().equals(v.sizes()) && q.size(0) == k.size(0) &&
                          q.size(3) == k.size(3) && k.size(2) > 0 && q.size(2) % k.size(2) == 0 && start_pos >= 0 &&
                          start_pos + q.size(1) <= k.size(1);
  if (!require(ctx, shapes_fit && quantized_rows_valid(qr) && quantized_rows_valid(kr) && quantized_rows_valid(vr),
               "llama::custom_quantized_sdpa: int8 query [B,T,Hq,D] and caches [B,S,Hkv,D], a float32 scale and an "
               "int8 zero point per row, start_pos + T <= S") ||
      !require(ctx, !attn_mask.has_value() && dropout_p == 0.0 && !is_seq_at_dim_2,
               "llama::custom_quantized_sdpa: handheld's kernel takes no mask, no dropout, positions at dim 1") ||
      !require(ctx, out.scalar_type() == ScalarType::Float &&
                        executorch::runtime::resize_tensor(out, q.sizes()) == Error::Ok,
               "llama::custom_quantized_sdpa: cannot resize the float32 output to the query's shape")) {
    return out;
  }
  const std::vector<float> query = dequantized(qr, q.size(1));
  const Shapes whole{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), k.size(1)};
  if (whole.steps == 1 && int8_decode_fits(whole)) {  // decode: straight from the integers
    const float softmax_scale = scale.has_value() ? static_cast<float>(*scale) : 1.0f / std::sqrt(float(whole.head_dim));
    decode_int8(query.data(), int8_cache(kr), int8_cache(vr), out.mutable_data_ptr<float>(), whole, start_pos,
                softmax_scale);
    return out;
  }
  // Prefill (and other shapes): the filled rows read back to float once, shared by every query row.
  const int64_t filled = start_pos + q.size(1);
  const std::vector<float> keys = dequantized(kr, filled), values = dequantized(vr, filled);
  const Shapes s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), filled};
  attend(query.data(), keys.data(), values.data(), out.mutable_data_ptr<float>(), s, start_pos, is_causal, scale);
  return out;
}

}  // namespace

EXECUTORCH_LIBRARY(llama, "update_cache.out", update_cache_out);
EXECUTORCH_LIBRARY(llama, "custom_sdpa.out", custom_sdpa_out);
EXECUTORCH_LIBRARY(llama, "custom_quantized_sdpa.out", custom_quantized_sdpa_out);
