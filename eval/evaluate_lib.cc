#include "eval/evaluate_lib.h"

#include <ATen/ATen.h>

#include <cmath>

#include "absl/strings/str_cat.h"
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

// Windows of the stream as EvalBatches, at most max_windows.
std::vector<EvalBatch> Windows(std::shared_ptr<const TokenStream> s, const EvalOptions& o) {
  EvalIterator it = *EvalIterator::Create(s, o.seq_len, o.batch);
  std::vector<EvalBatch> out;
  int64_t n = 0;
  while (std::optional<EvalBatch> b = it.Next()) {
    if (o.max_windows > 0 && n + b->tokens.size(0) > o.max_windows) {
      const int64_t keep = o.max_windows - n;
      if (keep <= 0) break;
      b->tokens = b->tokens.narrow(0, 0, keep);
      b->target_mask = b->target_mask.narrow(0, 0, keep);
      b->num_targets = b->target_mask.sum().item<int64_t>();
    }
    n += b->tokens.size(0);
    out.push_back(*b);
    if (o.max_windows > 0 && n >= o.max_windows) break;
  }
  return out;
}

at::Tensor LogProbs(LlamaForCausalLM& m, const EvalBatch& b, int64_t seq_len) {
  ForwardOptions fo;
  return at::log_softmax(m.ForwardUnchecked(b.tokens.narrow(1, 0, seq_len), fo), -1);  // [B,L,V] float32
}

}  // namespace

absl::StatusOr<json> Evaluate(const EvalOptions& o) {
  ModelLoadOptions lo;
  lo.dtype = o.dtype;
  ASSIGN_OR_RETURN(LoadedModel model, LoadModel(o.model_dir, lo));
  ASSIGN_OR_RETURN(std::shared_ptr<const TokenStream> data, OpenData(o, o.model_dir, model.config));
  const std::vector<EvalBatch> windows = Windows(data, o);
  if (windows.empty()) return absl::InvalidArgumentError(absl::StrCat("no evaluation windows in ", data->name()));

  std::optional<LoadedModel> reference;
  json report;
  report["model"] = o.model_dir;
  report["data"] = data->name();
  report["seq_len"] = o.seq_len;
  report["windows"] = 0;
  std::vector<at::Tensor> ref_logp;  // per batch, only when a reference is given
  int64_t tokens = 0;
  for (const EvalBatch& b : windows) tokens += b.num_targets;
  report["tokens"] = tokens;
  int64_t nwin = 0;
  for (const EvalBatch& b : windows) nwin += b.tokens.size(0);
  report["windows"] = nwin;

  if (!o.reference_dir.empty()) {
    ModelLoadOptions ro;
    ro.dtype = o.dtype;
    ASSIGN_OR_RETURN(LoadedModel r, LoadModel(o.reference_dir, ro));
    if (r.config.vocab_size != model.config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("reference '", o.reference_dir, "' has vocabulary ", r.config.vocab_size,
                                                     ", the model ", model.config.vocab_size));
    }
    double nll = 0;
    for (const EvalBatch& b : windows) {
      at::Tensor lp = LogProbs(*r.model, b, o.seq_len);
      const at::Tensor t = b.tokens.narrow(1, 1, o.seq_len);
      nll -= (lp.gather(-1, t.unsqueeze(-1)).squeeze(-1) * b.target_mask).sum().item<double>();
      ref_logp.push_back(lp);
    }
    report["reference"] = {{"model", o.reference_dir}, {"loss", nll / tokens}, {"perplexity", std::exp(nll / tokens)}};
  }

  std::vector<RoutingMode> modes = o.modes;
  if (!model.moe) modes = {RoutingMode::kRouted};  // a dense model has one way to run
  json results = json::array();
  for (RoutingMode mode : modes) {
    model.SetRouting(mode);
    for (MoeFeedForward* l : model.moe_layers) l->TakeRoutingStats();
    double nll = 0, kl = 0, agree = 0;
    for (size_t i = 0; i < windows.size(); ++i) {
      const EvalBatch& b = windows[i];
      at::Tensor lp = LogProbs(*model.model, b, o.seq_len);
      const at::Tensor t = b.tokens.narrow(1, 1, o.seq_len);
      const at::Tensor mask = b.target_mask.to(at::kFloat);
      nll -= (lp.gather(-1, t.unsqueeze(-1)).squeeze(-1) * mask).sum().item<double>();
      if (!ref_logp.empty()) {
        const at::Tensor& rl = ref_logp[i];
        kl += ((rl.exp() * (rl - lp)).sum(-1) * mask).sum().item<double>();
        agree += ((rl.argmax(-1) == lp.argmax(-1)).to(at::kFloat) * mask).sum().item<double>();
      }
    }
    json r = {{"mode", model.moe ? RoutingModeName(mode) : "dense"}, {"loss", nll / tokens},
              {"perplexity", std::exp(nll / tokens)}};
    if (!ref_logp.empty()) {
      r["kl_to_reference"] = kl / tokens;
      r["top1_agreement"] = agree / tokens;
    }
    if (model.moe && mode == RoutingMode::kRouted) {
      json layers = json::array();
      for (MoeFeedForward* l : model.moe_layers) {
        RoutingStats s = l->TakeRoutingStats();
        const at::Tensor load = s.load.to(at::kDouble);
        const double mean = load.mean().item<double>();
        layers.push_back({{"load", std::vector<double>(load.data_ptr<double>(), load.data_ptr<double>() + load.numel())},
                          {"max_over_mean", mean > 0 ? load.max().item<double>() / mean : 0.0},
                          {"entropy", s.tokens > 0 ? s.entropy_sum / s.tokens : 0.0}});
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
