#include "model/generate.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "absl/strings/str_cat.h"
#include "model/file_util.h"
#include "model/json_util.h"
#include "model/kv_cache.h"
#include "model/status_macros.h"
#include "nlohmann/json.hpp"

namespace llama_moe {
namespace {

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Rows of [B,1,V] or [B,V] float32 logits on the host.
at::Tensor HostLogits(const at::Tensor& logits) {
  return logits.reshape({logits.size(0), logits.size(-1)}).to(at::kCPU, at::kFloat).contiguous();
}

}  // namespace

const char* StopReasonName(StopReason reason) {
  switch (reason) {
    case StopReason::kEos: return "eos";
    case StopReason::kMaxNewTokens: return "max_new_tokens";
    case StopReason::kContext: return "context";
  }
  return "unknown";
}

absl::StatusOr<GenerateResult> Generate(LlamaForCausalLM& model,
                                        const std::vector<std::vector<int64_t>>& prompts,
                                        const GenerateOptions& options) {
  const LlamaConfig& cfg = model.config();
  if (prompts.empty()) return absl::InvalidArgumentError("no prompts to generate from");
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens ", options.max_new_tokens, " is negative"));
  }
  if (options.sampling.temperature < 0 || !(options.sampling.top_p > 0 && options.sampling.top_p <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature must be >= 0 and top_p in (0, 1]; got ",
                                                   options.sampling.temperature, " and ",
                                                   options.sampling.top_p));
  }
  if (options.prefill_chunk <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("prefill_chunk ", options.prefill_chunk, " must be positive"));
  }
  const int64_t chunk = options.prefill_chunk;
  int64_t context = cfg.max_position_embeddings;
  if (options.max_context > 0) context = std::min(context, options.max_context);
  const int64_t batch = static_cast<int64_t>(prompts.size());
  int64_t longest = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const std::vector<int64_t>& p = prompts[b];
    if (p.empty()) return absl::InvalidArgumentError(absl::StrCat("prompt ", b, " is empty"));
    for (size_t i = 0; i < p.size(); ++i) {
      if (p[i] < 0 || p[i] >= cfg.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("prompt ", b, " token ", i, " has id ", p[i],
                                                       ", outside the vocabulary [0, ", cfg.vocab_size, ")"));
      }
    }
    if (static_cast<int64_t>(p.size()) > context) {
      return absl::OutOfRangeError(absl::StrCat("prompt ", b, " has ", p.size(),
                                                " tokens, more than the context of ", context, " tokens"));
    }
    longest = std::max<int64_t>(longest, p.size());
  }

  GenerateResult result;
  result.tokens.resize(batch);
  result.stop_reasons.assign(batch, StopReason::kMaxNewTokens);
  std::vector<int64_t> limit(batch), pad(batch);
  std::vector<bool> active(batch);
  int64_t steps = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t len = prompts[b].size();
    limit[b] = std::min(options.max_new_tokens, context - len);
    pad[b] = longest - len;
    active[b] = limit[b] > 0;
    if (limit[b] < options.max_new_tokens) result.stop_reasons[b] = StopReason::kContext;
    if (!active[b] && options.max_new_tokens == 0) result.stop_reasons[b] = StopReason::kMaxNewTokens;
    steps = std::max(steps, limit[b]);
    result.prefill_tokens += len;
  }
  if (steps == 0) return result;
  const std::set<int64_t> eos(options.eos_token_ids.begin(), options.eos_token_ids.end());
  std::vector<Sampler> samplers(batch, Sampler(options.sampling));

  // Left-padded [B, longest + steps] token matrix; padding ids are 0 (any valid id: masked).
  const int64_t total = longest + steps;
  std::vector<int64_t> seq(batch * total, 0);
  for (int64_t b = 0; b < batch; ++b) {
    std::copy(prompts[b].begin(), prompts[b].end(), seq.begin() + b * total + pad[b]);
  }
  auto take = [&](int64_t from, int64_t len) {
    at::Tensor t = at::empty({batch, len}, at::TensorOptions().dtype(at::kLong));
    for (int64_t b = 0; b < batch; ++b) {
      std::copy_n(seq.begin() + b * total + from, len, t.data_ptr<int64_t>() + b * len);
    }
    return t;
  };
  // Samples one token for every active sequence from host logits [B,V]; writes it at `slot`.
  auto emit = [&](const at::Tensor& host, int64_t slot) {
    int64_t produced = 0;
    for (int64_t b = 0; b < batch; ++b) {
      if (!active[b]) continue;
      const int64_t next = samplers[b].Sample(host[b].data_ptr<float>(), cfg.vocab_size);
      result.tokens[b].push_back(next);
      seq[b * total + slot] = next;
      ++produced;
      if (eos.count(next)) {
        active[b] = false;
        result.stop_reasons[b] = StopReason::kEos;
      } else if (static_cast<int64_t>(result.tokens[b].size()) == limit[b]) {
        active[b] = false;
      }
    }
    return produced;
  };
  auto any_active = [&] { return std::find(active.begin(), active.end(), true) != active.end(); };

  try {
    std::optional<KvCache> cache;
    if (options.use_cache) {
      // The last generated token is never fed back, so `total - 1` slots suffice.
      ASSIGN_OR_RETURN(KvCache c, KvCache::Create(cfg, std::max<int64_t>(total - 1, longest), pad,
                                                  model.options()));
      cache.emplace(std::move(c));
    }
    ForwardOptions fwd;
    fwd.last_position_only = true;
    fwd.cache = cache ? &*cache : nullptr;
    fwd.left_pad = pad;

    auto start = std::chrono::steady_clock::now();
    if (cache) {
      // Chunks before the last only fill the cache; their (last-slot) logits are dropped.
      at::Tensor logits;
      for (int64_t from = 0; from < longest; from += chunk) {
        logits = model.ForwardUnchecked(take(from, std::min(chunk, longest - from)), fwd);
      }
      emit(HostLogits(logits), longest);
    } else {
      emit(HostLogits(model.ForwardUnchecked(take(0, longest), fwd)), longest);
    }
    result.prefill_seconds = Seconds(start);

    start = std::chrono::steady_clock::now();
    for (int64_t slot = longest + 1; slot < total && any_active(); ++slot) {
      const at::Tensor input = cache ? take(slot - 1, 1) : take(0, slot);
      result.decode_tokens += emit(HostLogits(model.ForwardUnchecked(input, fwd)), slot);
    }
    result.decode_seconds = Seconds(start);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("generation: ", e.what_without_backtrace()));
  }
  return result;
}

absl::StatusOr<std::vector<int64_t>> LoadEosTokenIds(const std::string& model_dir, const LlamaConfig& cfg) {
  std::vector<int64_t> ids = cfg.eos_token_ids;
  const std::string path = JoinPath(model_dir, "generation_config.json");
  if (PathExists(path)) {
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, kMaxMetadataFileBytes));
    ASSIGN_OR_RETURN(const nlohmann::json j, ParseJson(text, absl::StrCat("'", path, "'")));
    if (!j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a JSON object"));
    }
    auto add = [&](const nlohmann::json& v) -> absl::Status {
      if (!v.is_number_integer()) {
        return absl::InvalidArgumentError(absl::StrCat("'", path, "': eos_token_id must be an int or a list of ints, got ", v.dump()));
      }
      const int64_t id = v.get<int64_t>();
      if (id < 0 || id >= cfg.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("'", path, "': eos_token_id ", id,
                                                       " is outside the vocabulary [0, ", cfg.vocab_size, ")"));
      }
      if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
      return absl::OkStatus();
    };
    if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
      const nlohmann::json& e = j["eos_token_id"];
      if (e.is_array()) {
        for (const auto& v : e) RETURN_IF_ERROR(add(v));
      } else {
        RETURN_IF_ERROR(add(e));
      }
    }
  }
  return ids;
}

}  // namespace llama_moe
