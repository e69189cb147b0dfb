// handheld_runner: run a handheld .pte natively on ExecuTorch's C++ runtime, as the executorch pip wheel
// ships it (runtime, CPU kernels, quantized kernels, XNNPACK delegate, thread pool). No ExecuTorch source.
//
// Loads the program memory-mapped, reads its metadata methods, prefills a prompt of token ids and decodes
// greedily with the program's KV cache, then prints one JSON object with the same statistics as
// `handheld bench` (load, TTFT, prefill and decode tok/s as ExecuTorch's LLM runner defines them, peak RSS).
//
//   handheld_runner MODEL.pte --prompt 1,2,3 --gen-len 128 [--threads N] [--logits OUT.f32]
//   handheld_runner MODEL.pte --prompt 1,2,3 --score OUT.f32 [--threads N]
//
// --logits writes, for every generated token, the float32 logits it was chosen from (parity tests).
// --score runs the prompt once from position 0 and writes the logits of every position it returns (a program
// exported with --full-logits returns all of them): perplexity on the target (`handheld eval --target`).

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

// The wheel ships libexecutorch_threadpool but not its header: the two declarations this program uses.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string model;
  std::vector<int64_t> prompt;
  int gen_len = 128;
  int threads = 0;  // 0: the thread pool's default (one per core)
  std::string logits_path;
  std::string score_path;
};

[[noreturn]] void fail(const std::string& message, int code = 1) {
  std::fprintf(stderr, "handheld_runner: error: %s\n", message.c_str());
  std::exit(code);
}

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    char* end = nullptr;
    long long id = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || id < 0) fail("--prompt takes comma-separated token ids, got '" + text + "'");
    ids.push_back(id);
  }
  return ids;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--prompt") o.prompt = parse_ids(value());
    else if (arg == "--gen-len") o.gen_len = std::atoi(value().c_str());
    else if (arg == "--threads") o.threads = std::atoi(value().c_str());
    else if (arg == "--logits") o.logits_path = value();
    else if (arg == "--score") o.score_path = value();
    else if (arg == "-h" || arg == "--help") {
      std::printf("usage: handheld_runner MODEL.pte --prompt ID,ID,... [--gen-len N] [--threads N] [--logits OUT.f32]\n"
                  "       handheld_runner MODEL.pte --prompt ID,ID,... --score OUT.f32 [--threads N]\n");
      std::exit(0);
    } else if (!arg.empty() && arg[0] == '-') fail("unknown option " + arg);
    else o.model = arg;
  }
  if (o.model.empty()) fail("no MODEL.pte given (see --help)");
  if (o.prompt.empty()) fail("--prompt is required");
  if (o.gen_len < 1) fail("--gen-len must be at least 1");
  return o;
}

// Peak and current resident memory from /proc/self/status (kB there).
int64_t status_kib(const char* field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field, 0) == 0) return std::atoll(line.c_str() + std::strlen(field));
  }
  return -1;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string json_string(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// JSON has no NaN or infinity: a non-finite figure is written as null.
std::string json_number(double x) {
  if (!std::isfinite(x)) return "null";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.9g", x);
  return buffer;
}

std::string json_value(const EValue& v) {
  if (v.isInt()) return std::to_string(v.toInt());
  if (v.isBool()) return v.toBool() ? "true" : "false";
  if (v.isDouble()) return json_number(v.toDouble());
  if (v.isString()) return json_string(v.toString());
  return "null";
}

// Every constant method (get_max_seq_len, handheld_scheme, ...) as a JSON object; lists for multi-value ones.
std::string read_metadata(Module& module, int64_t& max_seq_len, int64_t& vocab_size) {
  auto names = module.method_names();
  if (!names.ok()) fail("cannot list the program's methods");
  if (!names->count("forward")) fail("the program has no forward method");
  if (!names->count("get_max_seq_len")) fail("not an LLM program: no get_max_seq_len metadata");
  std::string json = "{";
  bool first = true;
  for (const auto& name : *names) {
    if (name == "forward" || name == "handheld_op_counts") continue;
    auto values = module.execute(name);
    if (!values.ok()) fail("cannot read metadata method " + name);
    std::string item;
    if (values->size() == 1 && name != "get_eos_ids") {
      item = json_value(values->at(0));
    } else {
      item = "[";
      for (size_t i = 0; i < values->size(); ++i) item += (i ? "," : "") + json_value(values->at(i));
      item += "]";
    }
    if (name == "get_max_seq_len") max_seq_len = values->at(0).toInt();
    if (name == "get_vocab_size") vocab_size = values->at(0).toInt();
    json += (first ? "" : ",") + json_string(name) + ":" + item;
    first = false;
  }
  return json + "}";
}

// IEEE 754 half -> float (fp16 programs return fp16 logits).
float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu, bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, nan
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: shift until the implicit bit appears
    uint32_t shift = 0;
    while (!(mantissa & 0x400u)) {
      mantissa <<= 1;
      ++shift;
    }
    bits = sign | ((113 - shift) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

float to_float(const void* data, ScalarType type, int64_t i) {
  if (type == ScalarType::Float) return static_cast<const float*>(data)[i];
  if (type == ScalarType::Half) return half_to_float(static_cast<const uint16_t*>(data)[i]);
  if (type == ScalarType::BFloat16) {
    uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(data)[i]) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  fail("unsupported logits dtype " + std::to_string(static_cast<int>(type)));
}

class Runner {
 public:
  Runner(Module& module, FILE* logits_out) : module_(module), logits_out_(logits_out) {}

  // The prompt from position 0; every returned position's logits, as float32 rows, to `out`. Returns the rows.
  int64_t score(std::vector<int64_t> tokens, FILE* out) {
    const auto& logits = forward(tokens, 0);
    const int64_t vocab = logits.size(logits.dim() - 1), rows = logits.numel() / vocab;
    row_.resize(vocab);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < vocab; ++i) row_[i] = to_float(logits.const_data_ptr(), logits.scalar_type(), r * vocab + i);
      std::fwrite(row_.data(), sizeof(float), row_.size(), out);
    }
    return rows;
  }

  // One forward step: logits of the last position -> greedy token.
  int64_t step(std::vector<int64_t> tokens, int64_t start_pos) {
    const auto& logits = forward(tokens, start_pos);
    const int64_t vocab = logits.size(logits.dim() - 1);
    const int64_t offset = logits.numel() - vocab;  // the last position's row
    int64_t best = 0;
    float best_value = -INFINITY;
    row_.resize(vocab);
    for (int64_t i = 0; i < vocab; ++i) {
      row_[i] = to_float(logits.const_data_ptr(), logits.scalar_type(), offset + i);
      if (row_[i] > best_value) best_value = row_[i], best = i;
    }
    if (logits_out_) std::fwrite(row_.data(), sizeof(float), row_.size(), logits_out_);
    return best;
  }

 private:
  const executorch::aten::Tensor& forward(std::vector<int64_t>& tokens, int64_t start_pos) {
    auto token_tensor = executorch::extension::from_blob(
        tokens.data(), {1, static_cast<executorch::aten::SizesType>(tokens.size())}, ScalarType::Long);
    int64_t pos = start_pos;
    auto pos_tensor = executorch::extension::from_blob(&pos, {1}, ScalarType::Long);
    auto outputs = module_.forward({EValue(token_tensor), EValue(pos_tensor)});
    if (!outputs.ok()) {
      fail("forward failed at position " + std::to_string(start_pos) + " (error " +
           std::to_string(static_cast<int>(outputs.error())) + ")");
    }
    outputs_ = std::move(*outputs);  // kept: the logits tensor lives in it
    return outputs_.at(0).toTensor();
  }

  Module& module_;
  std::vector<EValue> outputs_;
  FILE* logits_out_;
  std::vector<float> row_;
};

// --score: one prefill, every position's logits to the file, a one-line JSON summary.
int score(Module& module, const Options& options, int64_t prompt_len, int64_t max_seq_len, double load_s,
          const std::string& metadata) {
  if (prompt_len > max_seq_len) {
    fail("prompt " + std::to_string(prompt_len) + " tokens exceed the program's max sequence length " + std::to_string(max_seq_len));
  }
  FILE* out = std::fopen(options.score_path.c_str(), "wb");
  if (!out) fail("cannot write " + options.score_path);
  Runner runner(module, nullptr);
  const int64_t rows = runner.score(options.prompt, out);
  if (std::fclose(out) != 0) fail("cannot write " + options.score_path);
  std::printf("{\"load_s\":%s,\"scored_rows\":%lld,\"metadata\":%s}\n", json_number(load_s).c_str(),
              static_cast<long long>(rows), metadata.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options = parse_args(argc, argv);
  if (options.threads > 0) executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(options.threads);
  const int64_t rss_before_kib = status_kib("VmRSS:");

  auto load_start = Clock::now();
  Module module(options.model, Module::LoadMode::Mmap);
  // A .pte is untrusted: check the whole flatbuffer's internal consistency before using any of it.
  if (module.load(executorch::runtime::Program::Verification::InternalConsistency) != Error::Ok) {
    fail("cannot load " + options.model + " as an ExecuTorch program (it fails verification)");
  }
  int64_t max_seq_len = 0, vocab_size = 0;
  std::string metadata = read_metadata(module, max_seq_len, vocab_size);
  if (max_seq_len < 1 || vocab_size < 1) fail("the program's metadata gives no positive max_seq_len / vocab_size");
  for (int64_t id : options.prompt) {
    if (id >= vocab_size) fail("prompt id " + std::to_string(id) + " is outside the vocabulary (" + std::to_string(vocab_size) + ")");
  }
  Error method_error = module.load_method("forward");
  if (method_error == Error::OperatorMissing) {
    fail("the program needs an operator this runner does not have (its name is in the log above)", 3);
  }
  if (method_error != Error::Ok) fail("cannot load the forward method (error " + std::to_string(static_cast<int>(method_error)) + ")");
  const double load_s = seconds_since(load_start);

  const int64_t prompt_len = static_cast<int64_t>(options.prompt.size());
  if (!options.score_path.empty()) return score(module, options, prompt_len, max_seq_len, load_s, metadata);
  if (prompt_len + options.gen_len - 1 > max_seq_len) {
    fail("prompt " + std::to_string(prompt_len) + " + generated " + std::to_string(options.gen_len) +
         " tokens exceed the program's max sequence length " + std::to_string(max_seq_len));
  }
  FILE* logits_out = nullptr;
  if (!options.logits_path.empty() && !(logits_out = std::fopen(options.logits_path.c_str(), "wb"))) {
    fail("cannot write " + options.logits_path);
  }
  Runner runner(module, logits_out);

  auto start = Clock::now();
  std::vector<int64_t> generated{runner.step(options.prompt, 0)};
  const double ttft_s = seconds_since(start);
  auto decode_start = Clock::now();
  for (int64_t pos = prompt_len; static_cast<int>(generated.size()) < options.gen_len; ++pos) {
    generated.push_back(runner.step({generated.back()}, pos));
  }
  const double decode_s = seconds_since(decode_start);
  if (logits_out) std::fclose(logits_out);

  std::string tokens;
  for (size_t i = 0; i < generated.size(); ++i) tokens += (i ? "," : "") + std::to_string(generated[i]);
  const int decode_steps = options.gen_len - 1;
  std::printf(
      "{\"load_s\":%s,\"ttft_s\":%s,\"prefill_tok_s\":%s,\"decode_tok_s\":%s,\"peak_rss_bytes\":%lld,"
      "\"rss_before_load_bytes\":%lld,\"generated_tokens\":%zu,\"tokens\":[%s],\"metadata\":%s}\n",
      json_number(load_s).c_str(), json_number(ttft_s).c_str(), json_number(prompt_len / ttft_s).c_str(),
      json_number(decode_steps > 0 ? decode_steps / decode_s : 0.0).c_str(),
      static_cast<long long>(status_kib("VmHWM:")) * 1024, static_cast<long long>(rss_before_kib) * 1024,
      generated.size(), tokens.c_str(), metadata.c_str());
  return 0;
}
