#include "tools/llama_cpp/llama_cpp_peer.h"

#include <algorithm>
#include <chrono>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "ggml-backend.h"
#include "llama.h"

namespace llama_moe {
namespace {

void QuietLog(ggml_log_level level, const char* text, void*) {
  if (level == GGML_LOG_LEVEL_ERROR) fprintf(stderr, "llama.cpp: %s", text);
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

absl::StatusOr<std::unique_ptr<LlamaCppModel>> LlamaCppModel::Load(const std::string& gguf,
                                                                   const std::string& backend_dir,
                                                                   const LlamaCppOptions& options) {
  static std::once_flag once;
  std::call_once(once, [&backend_dir] {
    llama_log_set(QuietLog, nullptr);
    ggml_backend_load_all_from_path(backend_dir.c_str());
    llama_backend_init();
  });
  if (ggml_backend_dev_count() == 0) {
    return absl::FailedPreconditionError(absl::StrCat("llama.cpp found no CPU backend in '", backend_dir, "'"));
  }
  std::unique_ptr<LlamaCppModel> m(new LlamaCppModel());
  m->path_ = gguf;
  llama_model_params mp = llama_model_default_params();
  m->model_ = llama_model_load_from_file(gguf.c_str(), mp);
  if (m->model_ == nullptr) return absl::InvalidArgumentError(absl::StrCat("llama.cpp cannot load '", gguf, "'"));
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = options.context;
  cp.n_batch = options.context;
  cp.n_ubatch = options.context;
  cp.n_threads = options.threads;
  cp.n_threads_batch = options.threads;
  cp.no_perf = true;
  cp.flash_attn_type = options.flash_attn < 0    ? LLAMA_FLASH_ATTN_TYPE_AUTO
                       : options.flash_attn > 0 ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                                                : LLAMA_FLASH_ATTN_TYPE_DISABLED;
  if (options.f32_kv) {
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
  }
  m->ctx_ = llama_init_from_model(m->model_, cp);
  if (m->ctx_ == nullptr) return absl::InternalError(absl::StrCat("llama.cpp cannot create a context for '", gguf, "'"));
  return m;
}

LlamaCppModel::~LlamaCppModel() {
  if (ctx_ != nullptr) llama_free(ctx_);
  if (model_ != nullptr) llama_model_free(model_);
}

int32_t LlamaCppModel::vocab_size() const { return llama_vocab_n_tokens(llama_model_get_vocab(model_)); }

std::vector<int32_t> LlamaCppModel::Tokenize(absl::string_view text) const {
  const llama_vocab* vocab = llama_model_get_vocab(model_);
  std::vector<int32_t> out(text.size() + 8);
  int32_t n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), out.data(),
                             static_cast<int32_t>(out.size()), /*add_special=*/false, /*parse_special=*/false);
  if (n < 0) {
    out.resize(-n);
    n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), out.data(), static_cast<int32_t>(out.size()),
                       false, false);
  }
  out.resize(std::max(n, 0));
  return out;
}

absl::Status LlamaCppModel::Decode(const std::vector<int32_t>& tokens, int32_t first_pos, bool all_logits) {
  llama_batch b = llama_batch_init(static_cast<int32_t>(tokens.size()), 0, 1);
  for (size_t i = 0; i < tokens.size(); ++i) {
    b.token[i] = tokens[i];
    b.pos[i] = first_pos + static_cast<int32_t>(i);
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = 0;
    b.logits[i] = all_logits || i + 1 == tokens.size();
  }
  b.n_tokens = static_cast<int32_t>(tokens.size());
  const int32_t rc = llama_decode(ctx_, b);
  llama_batch_free(b);
  if (rc != 0) return absl::InternalError(absl::StrCat("llama_decode failed (", rc, ") on '", path_, "'"));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> LlamaCppModel::Logits(const std::vector<int32_t>& tokens) {
  llama_memory_clear(llama_get_memory(ctx_), true);
  if (auto st = Decode(tokens, 0, true); !st.ok()) return st;
  const int32_t V = vocab_size();
  std::vector<float> out(tokens.size() * static_cast<size_t>(V));
  for (size_t i = 0; i < tokens.size(); ++i) {
    const float* l = llama_get_logits_ith(ctx_, static_cast<int32_t>(i));
    std::copy(l, l + V, out.begin() + i * V);
  }
  return out;
}

absl::StatusOr<LlamaCppModel::Generated> LlamaCppModel::Greedy(const std::vector<int32_t>& prompt, int new_tokens) {
  llama_memory_clear(llama_get_memory(ctx_), true);
  Generated g;
  const int32_t V = vocab_size();
  auto argmax = [&]() {
    const float* l = llama_get_logits_ith(ctx_, -1);
    return static_cast<int32_t>(std::max_element(l, l + V) - l);
  };
  double t0 = Now();
  if (auto st = Decode(prompt, 0, false); !st.ok()) return st;
  g.tokens.push_back(argmax());
  g.prefill_seconds = Now() - t0;
  t0 = Now();
  for (int i = 1; i < new_tokens; ++i) {
    if (auto st = Decode({g.tokens.back()}, static_cast<int32_t>(prompt.size()) + i - 1, false); !st.ok()) return st;
    g.tokens.push_back(argmax());
  }
  g.decode_seconds = Now() - t0;
  return g;
}

}  // namespace llama_moe
