#include "moe/moe_layer.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "absl/strings/str_cat.h"
#include "moe/dispatch.h"
#include "moe/moe_layout.h"
#include "moe/router_factory.h"

namespace llama_moe {

absl::StatusOr<RoutingMode> ParseRoutingMode(const std::string& name) {
  if (name == "identity") return RoutingMode::kIdentity;
  if (name == "learned_only") return RoutingMode::kLearnedOnly;
  if (name == "routed") return RoutingMode::kRouted;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown routing mode '", name, "' (expected identity, learned_only or routed)"));
}

const char* RoutingModeName(RoutingMode mode) {
  switch (mode) {
    case RoutingMode::kIdentity: return "identity";
    case RoutingMode::kLearnedOnly: return "learned_only";
    case RoutingMode::kRouted: return "routed";
  }
  return "?";
}

ExpertProjection::ExpertProjection(int64_t n, int64_t a, int64_t b, const at::TensorOptions& options) {
  weight_ = register_parameter("weight", at::empty({n, a, b}, options));
}

ExpertProjection::ExpertProjection(at::Tensor weight) { weight_ = register_parameter("weight", std::move(weight)); }

ExpertStack::ExpertStack(at::Tensor gate, at::Tensor up, at::Tensor down) {
  gate_proj = register_module("gate_proj", std::make_shared<ExpertProjection>(std::move(gate)));
  up_proj = register_module("up_proj", std::make_shared<ExpertProjection>(std::move(up)));
  down_proj = register_module("down_proj", std::make_shared<ExpertProjection>(std::move(down)));
}

ExpertStack::ExpertStack(int64_t n, int64_t hidden, int64_t ie, const at::TensorOptions& options) {
  gate_proj = register_module("gate_proj", std::make_shared<ExpertProjection>(n, ie, hidden, options));
  up_proj = register_module("up_proj", std::make_shared<ExpertProjection>(n, ie, hidden, options));
  down_proj = register_module("down_proj", std::make_shared<ExpertProjection>(n, hidden, ie, options));
}

LoraProjection::LoraProjection(int64_t n, int64_t rank, int64_t in, int64_t out, const at::TensorOptions& options) {
  a = register_parameter("lora_A", at::empty({n, rank, in}, options));
  b = register_parameter("lora_B", at::empty({n, out, rank}, options));
}

LoraStack::LoraStack(int64_t n, int64_t rank, int64_t hidden, int64_t ie, const at::TensorOptions& options) {
  gate_proj = register_module("gate_proj", std::make_shared<LoraProjection>(n, rank, hidden, ie, options));
  up_proj = register_module("up_proj", std::make_shared<LoraProjection>(n, rank, hidden, ie, options));
  down_proj = register_module("down_proj", std::make_shared<LoraProjection>(n, rank, ie, hidden, options));
}

MoeFeedForward::MoeFeedForward(int64_t hidden, const MoeConfig& moe, const MoeLayerOptions& options,
                               const at::TensorOptions& tensor_options)
    : moe_(moe), options_(options) {
  const int64_t ie = moe.expert_intermediate_size, nf = moe.num_frozen_experts, nl = moe.num_learned_experts;
  // Each projection's learned and frozen stacks are adjacent views of one allocation, learned
  // first, so that a grouped GEMM reads all of a layer's experts as one [E,a,b] tensor without a
  // copy (LearnedThenFrozen, moe/grouped_dispatch.h). Loading copies into them in place.
  const at::Tensor gate = at::empty({nl + nf, ie, hidden}, tensor_options);
  const at::Tensor up = at::empty({nl + nf, ie, hidden}, tensor_options);
  const at::Tensor down = at::empty({nl + nf, hidden, ie}, tensor_options);
  frozen_ = register_module(kFrozenExperts,
                            std::make_shared<ExpertStack>(gate.narrow(0, nl, nf), up.narrow(0, nl, nf),
                                                          down.narrow(0, nl, nf)));
  // Frozen slices are exact pieces of the dense model: never trained.
  for (auto& p : frozen_->parameters()) p.set_requires_grad(false);
  if (nl > 0) {
    learned_ = register_module(kLearnedExperts, std::make_shared<ExpertStack>(gate.narrow(0, 0, nl),
                                                                              up.narrow(0, 0, nl),
                                                                              down.narrow(0, 0, nl)));
  }
  router_ = register_module("router", MakeRouter(hidden, moe, tensor_options));
  if (moe.lora_rank > 0) {
    lora_ = register_module(kFrozenLora, std::make_shared<LoraStack>(moe.num_frozen_experts, moe.lora_rank, hidden,
                                                                     ie, tensor_options));
  }
}

LoraAdapters MoeFeedForward::lora() const {
  LoraAdapters l;
  if (lora_ == nullptr) return l;
  l.gate_a = lora_->gate_proj->a;
  l.gate_b = lora_->gate_proj->b;
  l.up_a = lora_->up_proj->a;
  l.up_b = lora_->up_proj->b;
  l.down_a = lora_->down_proj->a;
  l.down_b = lora_->down_proj->b;
  l.scale = moe_.lora_scale();
  return l;
}

ExpertBank MoeFeedForward::experts() const {
  ExpertBank s;
  s.frozen_gate = frozen_->gate_proj->weight();
  s.frozen_up = frozen_->up_proj->weight();
  s.frozen_down = frozen_->down_proj->weight();
  if (learned_) {
    s.learned_gate = learned_->gate_proj->weight();
    s.learned_up = learned_->up_proj->weight();
    s.learned_down = learned_->down_proj->weight();
  }
  return s;
}

at::Tensor MoeFeedForward::forward(const at::Tensor& x_in) {
  const auto shape = x_in.sizes().vec();
  const at::Tensor x = x_in.reshape({-1, shape.back()});  // [T,H]
  if (input_sink_ != nullptr) input_sink_->push_back(x.detach());
  at::Tensor y;
  switch (options_.mode) {
    case RoutingMode::kIdentity:
      y = lora_active() ? LoraAllFrozenForward(x, experts(), lora()) : AllFrozenForward(x, experts());
      break;
    case RoutingMode::kLearnedOnly:
      TORCH_CHECK(learned_ != nullptr, "learned_only mode needs learned experts");
      y = AllLearnedForward(x, experts());
      break;
    case RoutingMode::kRouted: {
      RouterOutput r = router_->forward(x);
      y = lora_active() ? LoraSparseMoeForward(x, r.expert, r.weight, experts(), lora())
                        : SparseMoeForward(x, r.expert, r.weight, experts());
      // A checkpointed layer's backward recomputes this forward: count each token once.
      if (InActivationRecompute()) break;
      if (options_.routing_stats) {
        c10::NoGradGuard no_grad;
        const at::Tensor load = CountPerExpert(r.expert, moe_.num_experts());
        const at::Tensor p = moe_.score_function == ScoreFunction::kSoftmax ? r.scores : r.scores / r.scores.sum(-1, true);
        const at::Tensor entropy = -(p * at::log(p.clamp_min(1e-20))).sum().to(at::kDouble);
        stats_.load = stats_.load.defined() ? stats_.load + load : load;
        stats_.entropy_sum = stats_.entropy_sum.defined() ? stats_.entropy_sum + entropy : entropy;
        stats_.tokens += x.size(0);
      }
      if (options_.aux_loss_coef > 0 || options_.z_loss_coef > 0) {
        at::Tensor aux = at::zeros({}, r.scores.options());
        const int64_t E = moe_.num_experts(), T = x.size(0), K = moe_.top_k;
        if (options_.aux_loss_coef > 0) {
          // Switch/GShard: E * sum_e f_e * P_e, f = fraction of pairs to e, P = mean score.
          const at::Tensor f = CountPerExpert(r.expert, E).to(r.scores.dtype()) / (T * K);
          aux = aux + options_.aux_loss_coef * E * (f.detach() * r.scores.mean(0)).sum();
        }
        if (options_.z_loss_coef > 0) {
          aux = aux + options_.z_loss_coef * at::logsumexp(r.logits, -1).pow(2).mean();
        }
        stats_.aux_loss = stats_.aux_loss.defined() ? stats_.aux_loss + aux : aux;
      }
      break;
    }
  }
  return y.reshape(shape);
}

at::Tensor MoeFeedForward::TakeAuxLoss() {
  at::Tensor aux = stats_.aux_loss;
  stats_.aux_loss = at::Tensor();
  return aux;
}

RoutingStats MoeFeedForward::TakeRoutingStats() {
  RoutingStats out = stats_;
  stats_ = RoutingStats();
  // Zeros on the layer's device when nothing was routed since the last call.
  const at::TensorOptions on = at::TensorOptions().device(frozen_->gate_proj->weight().device());
  if (!out.load.defined()) out.load = at::zeros({moe_.num_experts()}, on.dtype(at::kLong));
  if (!out.entropy_sum.defined()) out.entropy_sum = at::zeros({}, on.dtype(at::kDouble));
  return out;
}

FeedForwardFactory MoeFeedForwardFactory(const MoeConfig& moe, const MoeLayerOptions& options) {
  return [moe, options](const LlamaConfig& cfg, int64_t layer, const at::TensorOptions& tensor_options) {
    return std::static_pointer_cast<FeedForward>(
        std::make_shared<MoeFeedForward>(cfg.hidden_size, moe, options, tensor_options));
  };
}

std::vector<RoutingSummary> TakeRoutingSummaries(const std::vector<MoeFeedForward*>& layers) {
  std::vector<RoutingSummary> out(layers.size());
  if (layers.empty()) return out;
  std::vector<at::Tensor> rows;
  std::vector<int64_t> widths;
  for (size_t i = 0; i < layers.size(); ++i) {
    RoutingStats s = layers[i]->TakeRoutingStats();
    out[i].tokens = s.tokens;
    widths.push_back(s.load.numel());
    rows.push_back(s.load.to(at::kDouble));
    rows.push_back(s.entropy_sum.reshape({1}));
  }
  // One copy to the host for all layers.
  const at::Tensor all = at::cat(rows).to(at::kCPU).contiguous();
  const double* v = all.data_ptr<double>();
  for (size_t i = 0; i < layers.size(); ++i) {
    out[i].load.assign(v, v + widths[i]);
    v += widths[i];
    out[i].entropy_mean = out[i].tokens > 0 ? *v / out[i].tokens : 0.0;
    ++v;
  }
  return out;
}

}  // namespace llama_moe
