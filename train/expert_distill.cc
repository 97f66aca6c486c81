#include "train/expert_distill.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/optim/adam.h>

#include <filesystem>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "convert/calibration.h"
#include "model/checkpoint.h"
#include "model/file_util.h"
#include "model/model_format.h"
#include "model/status_macros.h"
#include "model/tokenizer.h"
#include "moe/dispatch.h"
#include "moe/moe_layout.h"
#include "moe/moe_model.h"
#include "nlohmann/json.hpp"

namespace llama_moe {
namespace {

constexpr int64_t kSequenceTokens = 512;
// Fewer tokens than this cannot both fit and check a layer.
constexpr int64_t kMinCalibrationTokens = 64;

// |a - b|^2 / |b|^2 in float64.
double RelativeError(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor bd = b.to(at::kDouble);
  return ((a.to(at::kDouble) - bd).pow(2).sum() / bd.pow(2).sum().clamp_min(1e-300)).item<double>();
}

absl::Status CheckOptions(const ExpertDistillOptions& o) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (o.model_dir.empty()) return bad("no model directory given");
  if (o.output_dir.empty()) return bad("no output directory given");
  if (o.calibration_text.empty()) return bad("no calibration text given");
  if (o.steps < 1) return bad("steps must be >= 1, got ", o.steps);
  if (o.batch_tokens < 1) return bad("batch_tokens must be >= 1, got ", o.batch_tokens);
  if (o.calibration_tokens < kMinCalibrationTokens) {
    return bad("calibration_tokens must be >= ", kMinCalibrationTokens, ", got ", o.calibration_tokens);
  }
  if (!(o.lr > 0 && o.lr < 1)) return bad("lr must be in (0, 1), got ", o.lr);
  if (!(o.router_lr_scale >= 0 && o.router_lr_scale <= 10)) {
    return bad("router_lr_scale must be in [0, 10], got ", o.router_lr_scale);
  }
  if (PathExists(o.output_dir) && !o.overwrite) {
    return absl::AlreadyExistsError(absl::StrCat("output '", o.output_dir, "' already exists"));
  }
  return absl::OkStatus();
}

// The calibration tokens, at most options.calibration_tokens of them.
absl::StatusOr<at::Tensor> CalibrationTokens(const ExpertDistillOptions& o) {
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::FromFile(JoinPath(o.model_dir, "tokenizer.json")),
                   absl::StrCat("the tokenizer of '", o.model_dir, "'"));
  ASSIGN_OR_RETURN(const std::string text, ReadFileToString(o.calibration_text, kMaxCalibrationTextBytes),
                   "calibration text");
  std::vector<int32_t> ids = tok->Encode(text);
  if (static_cast<int64_t>(ids.size()) < kMinCalibrationTokens) {
    return absl::InvalidArgumentError(absl::StrCat("calibration text '", o.calibration_text, "' has ", ids.size(),
                                                   " tokens; at least ", kMinCalibrationTokens, " are needed"));
  }
  if (static_cast<int64_t>(ids.size()) > o.calibration_tokens) ids.resize(o.calibration_tokens);
  return at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong).to(o.device);
}

// Every layer's FFN inputs under the dense model (identity routing, no adapters): [N, H] each.
std::vector<at::Tensor> DenseFfnInputs(LoadedModel& m, const at::Tensor& tokens) {
  std::vector<std::vector<at::Tensor>> sinks(m.moe_layers.size());
  for (size_t l = 0; l < m.moe_layers.size(); ++l) m.moe_layers[l]->set_input_sink(&sinks[l]);
  m.SetRouting(RoutingMode::kIdentity);
  m.SetLoraEnabled(false);
  ForwardOptions f;
  f.hidden_states_only = true;
  {
    c10::NoGradGuard no_grad;
    for (int64_t begin = 0; begin < tokens.numel(); begin += kSequenceTokens) {
      const at::Tensor seq = tokens.narrow(0, begin, std::min(kSequenceTokens, tokens.numel() - begin)).unsqueeze(0);
      m.model->ForwardUnchecked(seq, f);
    }
  }
  std::vector<at::Tensor> out;
  for (size_t l = 0; l < m.moe_layers.size(); ++l) {
    m.moe_layers[l]->set_input_sink(nullptr);
    out.push_back(at::cat(sinks[l], 0));
  }
  return out;
}

// Layer `l` in routed mode fitted to its dense FFN on `x`.
LayerDistillResult DistillLayer(MoeFeedForward& layer, int64_t l, const at::Tensor& x, const ExpertDistillOptions& o) {
  LayerDistillResult r;
  r.layer = l;
  at::Tensor target;
  {
    c10::NoGradGuard no_grad;
    target = AllFrozenForward(x, layer.experts());  // the dense FFN
  }
  const int64_t n = x.size(0);
  const at::TensorOptions index = at::TensorOptions().dtype(at::kLong).device(x.device());
  const at::Tensor heldout = at::arange(9, n, 10, index);
  const at::Tensor all = at::arange(n, index);
  const at::Tensor fit = all.masked_select(all.remainder(10) != 9);
  const at::Tensor x_fit = x.index_select(0, fit), y_fit = target.index_select(0, fit);
  const at::Tensor x_out = x.index_select(0, heldout), y_out = target.index_select(0, heldout);
  layer.set_mode(RoutingMode::kRouted);
  auto measure = [&](double* on_fit, double* on_heldout) {
    c10::NoGradGuard no_grad;
    *on_fit = RelativeError(layer.forward(x_fit), y_fit);
    *on_heldout = RelativeError(layer.forward(x_out), y_out);
    layer.TakeRoutingStats();
  };
  measure(&r.before_fit, &r.before_heldout);

  std::vector<at::Tensor> experts, router;
  for (auto& item : layer.named_parameters(true)) {
    const MoeTensorRole role = MoeTensorRoleOf(std::string(".mlp.") + item.key());
    const bool learned = role == MoeTensorRole::kLearnedExpert, routes = role == MoeTensorRole::kRouterWeight;
    item.value().set_requires_grad(learned || routes);
    if (learned) experts.push_back(item.value());
    if (routes) router.push_back(item.value());
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(experts, std::make_unique<torch::optim::AdamOptions>(o.lr));
  groups.emplace_back(router, std::make_unique<torch::optim::AdamOptions>(o.lr * o.router_lr_scale));
  torch::optim::Adam adam(groups, torch::optim::AdamOptions(o.lr));
  at::Generator gen = at::detail::createCPUGenerator(o.seed * 1000003 + static_cast<uint64_t>(l));
  const int64_t nfit = x_fit.size(0), batch = std::min(o.batch_tokens, nfit);
  const double rate = layer.moe().bias_update_rate;
  for (int64_t step = 0; step < o.steps; ++step) {
    // Drawn on the CPU, so that the batches are the same on every device.
    const at::Tensor rows = at::randperm(nfit, gen, at::kLong).narrow(0, 0, batch).to(x.device());
    const at::Tensor xb = x_fit.index_select(0, rows), yb = y_fit.index_select(0, rows);
    adam.zero_grad();
    const at::Tensor out = layer.forward(xb);
    const at::Tensor loss = (out - yb).pow(2).sum() / yb.pow(2).sum().clamp_min(1e-30);
    loss.backward();
    adam.step();
    // Keep the load balanced as the router moves, as the trainer does once per step.
    const RoutingStats stats = layer.TakeRoutingStats();
    if (rate > 0) layer.router().UpdateBalance(stats.load.to(at::kDouble), rate);
  }
  for (auto& item : layer.named_parameters(true)) item.value().set_requires_grad(false);
  measure(&r.after_fit, &r.after_heldout);
  {
    c10::NoGradGuard no_grad;
    layer.forward(x);
    const at::Tensor load = layer.TakeRoutingStats().load.to(at::kCPU, at::kDouble);
    r.max_over_mean_load = (load.max() / load.mean()).item<double>();
  }
  return r;
}

// The model as a directory beside its source: tensors in the source's storage dtypes, the
// source's config and side files.
absl::Status WriteModel(const ExpertDistillOptions& o, LlamaForCausalLM& model, const nlohmann::json& record) {
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> src, Checkpoint::Open(o.model_dir));
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& item : model.named_parameters(true)) tensors.emplace_back(item.key(), item.value());
  for (const auto& item : model.named_buffers(true)) tensors.emplace_back(item.key(), item.value());
  std::vector<TensorSpec> specs;
  for (const auto& [name, t] : tensors) {
    ASSIGN_OR_RETURN(const auto found, src->Find(name));
    specs.push_back({name, found.first->dtype, t.sizes().vec()});
  }
  ModelWriterOptions wo;
  wo.overwrite = o.overwrite;
  wo.metadata["llama_moe"] = "experts distilled";
  ASSIGN_OR_RETURN(std::unique_ptr<ModelWriter> w, CreateModelWriter(ModelFormat::kHfSafetensors, o.output_dir, specs, wo));
  for (size_t i = 0; i < tensors.size(); ++i) {
    RETURN_IF_ERROR(w->Write(specs[i].name, tensors[i].second.detach().to(at::kCPU, ToScalarType(specs[i].dtype))));
  }
  ASSIGN_OR_RETURN(const std::string config, ReadFileToString(JoinPath(o.model_dir, kConfigFile), kMaxMetadataFileBytes));
  RETURN_IF_ERROR(w->AddFile(kConfigFile, config));
  RETURN_IF_ERROR(w->AddFile("expert_distill.json", record.dump(2) + "\n"));
  RETURN_IF_ERROR(w->CopySideFiles(o.model_dir));
  return w->Commit();
}

}  // namespace

absl::StatusOr<std::vector<LayerDistillResult>> DistillExperts(const ExpertDistillOptions& o) {
  RETURN_IF_ERROR(CheckOptions(o));
  ModelLoadOptions lo;
  lo.dtype = DType::kF32;  // the fit runs in float32; the output keeps the source's storage dtypes
  lo.device = o.device;
  ASSIGN_OR_RETURN(LoadedModel m, LoadModel(o.model_dir, lo));
  if (!m.moe) {
    return absl::InvalidArgumentError(absl::StrCat("'", o.model_dir,
                                                   "' is a dense model: distilling experts needs a converted MoE model"));
  }
  if (m.moe->num_learned_experts == 0) {
    return absl::InvalidArgumentError(absl::StrCat("'", o.model_dir, "' has no learned experts to distill"));
  }
  ASSIGN_OR_RETURN(const at::Tensor tokens, CalibrationTokens(o));
  for (auto& p : m.model->parameters()) p.set_requires_grad(false);
  const std::vector<at::Tensor> inputs = DenseFfnInputs(m, tokens);
  std::vector<LayerDistillResult> results;
  nlohmann::json layers = nlohmann::json::array();
  for (size_t l = 0; l < m.moe_layers.size(); ++l) {
    results.push_back(DistillLayer(*m.moe_layers[l], static_cast<int64_t>(l), inputs[l], o));
    const LayerDistillResult& r = results.back();
    if (o.log) {
      o.log(absl::StrFormat("layer %d: relative error %.4f -> %.4f (fitted tokens), %.4f -> %.4f (held-out tenth), "
                            "load max/mean %.2f",
                            r.layer, r.before_fit, r.after_fit, r.before_heldout, r.after_heldout,
                            r.max_over_mean_load));
    }
    layers.push_back({{"layer", r.layer}, {"before_fit", r.before_fit}, {"after_fit", r.after_fit},
                      {"before_heldout", r.before_heldout}, {"after_heldout", r.after_heldout},
                      {"max_over_mean_load", r.max_over_mean_load}});
  }
  m.SetLoraEnabled(true);
  const nlohmann::json record = {{"source", o.model_dir}, {"calibration_text", o.calibration_text},
                                 {"calibration_tokens", tokens.numel()}, {"steps", o.steps},
                                 {"batch_tokens", o.batch_tokens}, {"lr", o.lr},
                                 {"router_lr_scale", o.router_lr_scale}, {"seed", o.seed}, {"layers", layers}};
  RETURN_IF_ERROR(WriteModel(o, *m.model, record));
  return results;
}

}  // namespace llama_moe
