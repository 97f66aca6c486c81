#include "eval/evaluate_lib.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "model/checkpoint.h"
#include "model/file_util.h"
#include "model/status_macros.h"
#include "model/tokenizer.h"
#include "moe/moe_model.h"
#include "train/data_loader.h"

namespace llama_moe {
namespace {

using json = nlohmann::json;

absl::StatusOr<std::shared_ptr<const TokenStream>> OpenData(const EvalOptions& o, const std::string& model_dir,
                                                            const LlamaConfig& cfg) {
  if (!o.data_dir.empty()) return TokenStream::Open(o.data_dir, o.split);
  if (o.text_file.empty()) return absl::InvalidArgumentError("give --data (token shards) or --text");
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(o.text_file));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::FromFile(JoinPath(model_dir, "tokenizer.json")),
                   "--text needs the model's tokenizer.json");
  std::vector<uint32_t> ids;
  for (int32_t id : tok->Encode(text)) ids.push_back(static_cast<uint32_t>(id));
  const uint32_t eos = static_cast<uint32_t>(cfg.eos_token_ids.front());
  ids.push_back(eos);
  return TokenStream::FromTokens(std::move(ids), eos);
}

// Sums over a mode's evaluated target tokens.
struct ModeSums {
  double nll = 0;    // -log p(target)
  double kl = 0;     // KL(reference || model) per position
  double agree = 0;  // positions where the two argmaxes agree
};

// Positions per head call: float32 logits of about 256 MiB for the whole batch.
int64_t HeadChunk(int64_t batch, int64_t vocab) { return std::max<int64_t>(1, (int64_t{64} << 20) / (batch * vocab)); }

// Final-normed hidden states of the batch's inputs [B,L,H].
at::Tensor Hidden(LlamaForCausalLM& m, const EvalBatch& b, int64_t seq_len) {
  ForwardOptions fo;
  fo.hidden_states_only = true;
  return m.ForwardUnchecked(b.tokens.narrow(1, 0, seq_len), fo);
}

// Adds the batch to `sums` for the model with hidden states h, and, when `ref` is given, against
// the reference's hidden states ref_h. The head and the log-softmax run on a few positions at a
// time.
void Score(LlamaForCausalLM& m, const at::Tensor& h, LlamaForCausalLM* ref, const at::Tensor& ref_h,
           const EvalBatch& b, int64_t seq_len, ModeSums& sums) {
  const at::Tensor targets = b.tokens.narrow(1, 1, seq_len).to(h.device());
  const at::Tensor mask = b.target_mask.to(h.device(), at::kFloat);
  const int64_t chunk = HeadChunk(h.size(0), m.config().vocab_size);
  for (int64_t p = 0; p < seq_len; p += chunk) {
    const int64_t n = std::min(chunk, seq_len - p);
    const at::Tensor lp = at::log_softmax(m.Logits(h.narrow(1, p, n)), -1);  // [B,n,V] float32
    const at::Tensor t = targets.narrow(1, p, n), mk = mask.narrow(1, p, n);
    sums.nll -= (lp.gather(-1, t.unsqueeze(-1)).squeeze(-1) * mk).sum().item<double>();
    if (ref == nullptr) continue;
    const at::Tensor rl = at::log_softmax(ref->Logits(ref_h.narrow(1, p, n)), -1);
    sums.kl += ((rl.exp() * (rl - lp)).sum(-1) * mk).sum().item<double>();
    sums.agree += ((rl.argmax(-1) == lp.argmax(-1)).to(at::kFloat) * mk).sum().item<double>();
  }
}

absl::Status CheckContext(const LoadedModel& m, const std::string& dir, int64_t seq_len) {
  // A window predicts seq_len targets from positions 0..seq_len-1.
  if (seq_len > m.config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--seq_len ", seq_len, " is longer than the context of '", dir,
                                                   "' (max_position_embeddings ", m.config.max_position_embeddings,
                                                   ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<json> Evaluate(const EvalOptions& o) {
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(o.model_dir));
  ASSIGN_OR_RETURN(LlamaConfig cfg, ckpt->LoadConfig());
  ASSIGN_OR_RETURN(const std::optional<MoeConfig> moe, MoeConfigFromLlama(cfg), absl::StrCat("config of '", o.model_dir, "'"));
  for (RoutingMode mode : o.modes) RETURN_IF_ERROR(CheckRouting(moe, mode, o.model_dir));
  if (!o.data_dir.empty()) {
    ASSIGN_OR_RETURN(ShardSetManifest manifest, ReadShardSetManifest(o.data_dir));
    if (manifest.vocab_size > cfg.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("data '", o.data_dir, "' was tokenized with a vocabulary of ",
                                                     manifest.vocab_size, ", larger than the model's ", cfg.vocab_size,
                                                     " ('", o.model_dir, "')"));
    }
  }
  ASSIGN_OR_RETURN(std::shared_ptr<const TokenStream> data, OpenData(o, o.model_dir, cfg));
  return Evaluate(o, std::move(data));
}

absl::StatusOr<json> Evaluate(const EvalOptions& o, std::shared_ptr<const TokenStream> data) {
  ModelLoadOptions lo;
  lo.dtype = o.dtype;
  lo.device = o.device;
  lo.map_weights = true;
  ASSIGN_OR_RETURN(LoadedModel model, LoadModel(o.model_dir, lo));
  RETURN_IF_ERROR(CheckContext(model, o.model_dir, o.seq_len));
  std::optional<LoadedModel> reference;
  if (!o.reference_dir.empty()) {
    ASSIGN_OR_RETURN(reference, LoadModel(o.reference_dir, lo));
    if (reference->config.vocab_size != model.config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("reference '", o.reference_dir, "' has vocabulary ",
                                                     reference->config.vocab_size, ", the model ",
                                                     model.config.vocab_size));
    }
    RETURN_IF_ERROR(CheckContext(*reference, o.reference_dir, o.seq_len));
  }
  std::vector<RoutingMode> modes = o.modes;
  if (!model.moe) modes = {RoutingMode::kRouted};  // a dense model has one way to run
  for (RoutingMode mode : modes) RETURN_IF_ERROR(CheckRouting(model.moe, mode, o.model_dir));
  for (MoeFeedForward* l : model.moe_layers) l->TakeRoutingStats();

  // One batch at a time: the reference once, then every mode.
  ASSIGN_OR_RETURN(EvalIterator it, EvalIterator::Create(data, o.seq_len, o.batch));
  std::vector<ModeSums> sums(modes.size());
  ModeSums ref_sums;
  int64_t tokens = 0, windows = 0;
  try {
    c10::NoGradGuard no_grad;
    while (std::optional<EvalBatch> b = it.Next()) {
      if (o.max_windows > 0 && windows + b->tokens.size(0) > o.max_windows) {
        const int64_t keep = o.max_windows - windows;
        if (keep <= 0) break;
        b->tokens = b->tokens.narrow(0, 0, keep);
        b->target_mask = b->target_mask.narrow(0, 0, keep);
        b->num_targets = b->target_mask.sum().item<int64_t>();
      }
      windows += b->tokens.size(0);
      tokens += b->num_targets;
      at::Tensor ref_h;
      if (reference) {
        ref_h = Hidden(*reference->model, *b, o.seq_len);
        Score(*reference->model, ref_h, nullptr, at::Tensor(), *b, o.seq_len, ref_sums);
      }
      for (size_t i = 0; i < modes.size(); ++i) {
        model.SetRouting(modes[i]);
        Score(*model.model, Hidden(*model.model, *b, o.seq_len), reference ? reference->model.get() : nullptr,
              ref_h, *b, o.seq_len, sums[i]);
      }
      if (o.max_windows > 0 && windows >= o.max_windows) break;
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("evaluating '", o.model_dir, "': ", e.what_without_backtrace()));
  }
  if (windows == 0) return absl::InvalidArgumentError(absl::StrCat("no evaluation windows in ", data->name()));

  json report;
  report["model"] = o.model_dir;
  report["data"] = data->name();
  report["seq_len"] = o.seq_len;
  report["windows"] = windows;
  report["tokens"] = tokens;
  // Chat data: the tokens scored are the assistant turns' only.
  report["loss_mask"] = data->has_loss_mask();
  if (reference) {
    const double nll = ref_sums.nll / tokens;
    report["reference"] = {{"model", o.reference_dir}, {"loss", nll}, {"perplexity", std::exp(nll)}};
  }
  json results = json::array();
  for (size_t i = 0; i < modes.size(); ++i) {
    json r = {{"mode", model.moe ? RoutingModeName(modes[i]) : "dense"}, {"loss", sums[i].nll / tokens},
              {"perplexity", std::exp(sums[i].nll / tokens)}};
    if (reference) {
      r["kl_to_reference"] = sums[i].kl / tokens;
      r["top1_agreement"] = sums[i].agree / tokens;
    }
    // Only routed forwards count loads, so the statistics are the routed mode's alone.
    if (model.moe && modes[i] == RoutingMode::kRouted) {
      json layers = json::array();
      for (const RoutingSummary& s : TakeRoutingSummaries(model.moe_layers)) {
        const double mean = s.load.empty() ? 0.0 : std::accumulate(s.load.begin(), s.load.end(), 0.0) / s.load.size();
        const double max = s.load.empty() ? 0.0 : *std::max_element(s.load.begin(), s.load.end());
        layers.push_back({{"load", s.load}, {"max_over_mean", mean > 0 ? max / mean : 0.0}, {"entropy", s.entropy_mean}});
      }
      r["layers"] = layers;
      r["num_frozen_experts"] = model.moe->num_frozen_experts;
    }
    results.push_back(r);
  }
  report["results"] = results;
  return report;
}

}  // namespace llama_moe
