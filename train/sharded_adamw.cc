#include "train/sharded_adamw.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

#include "absl/strings/str_cat.h"

namespace llama_moe {

ShardedAdamW::ShardedAdamW(std::vector<std::pair<std::string, at::Tensor>> params, Communicator* comm,
                           const AdamWOptions& options, const std::vector<double>& lr_scales)
    : params_(std::move(params)), comm_(comm), options_(options) {
  c10::NoGradGuard no_grad;
  for (const auto& [name, p] : params_) {
    offsets_.push_back(numel_);
    numel_ += p.numel();
  }
  const int64_t W = comm_->world_size();
  padded_ = (numel_ + W - 1) / W * W;
  shard_ = padded_ / W;
  begin_ = shard_ * comm_->rank();
  const auto device = params_.empty() ? c10::Device(c10::kCPU) : params_[0].second.device();
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  grad_ = at::zeros({padded_}, f32);
  at::Tensor full = at::zeros({padded_}, f32);
  at::Tensor mask = at::zeros({padded_}, f32);
  at::Tensor scale = at::ones({padded_}, f32);
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i].second;
    full.narrow(0, offsets_[i], p.numel()).copy_(p.reshape({-1}));
    if (p.dim() >= 2) mask.narrow(0, offsets_[i], p.numel()).fill_(1.0);
    if (i < lr_scales.size()) scale.narrow(0, offsets_[i], p.numel()).fill_(lr_scales[i]);
  }
  master_ = full.narrow(0, begin_, shard_).clone();
  decay_mask_ = mask.narrow(0, begin_, shard_).clone();
  lr_scale_ = scale.narrow(0, begin_, shard_).clone();
  m_ = at::zeros({shard_}, f32);
  v_ = at::zeros({shard_}, f32);
}

void ShardedAdamW::AccumulateGradients() {
  c10::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i].second;
    if (!p.grad().defined()) continue;
    grad_.narrow(0, offsets_[i], p.numel()).add_(p.grad().reshape({-1}).to(at::kFloat));
    p.mutable_grad() = at::Tensor();
  }
}

absl::StatusOr<double> ShardedAdamW::ReduceGradients() {
  const int64_t bucket = std::max<int64_t>(1, options_.bucket_bytes / 4);
  for (int64_t b = 0; b < padded_; b += bucket) {
    absl::Status s = comm_->AllReduceSum({grad_.narrow(0, b, std::min(bucket, padded_ - b))});
    if (!s.ok()) return s;
  }
  return grad_.norm().item<double>();
}

absl::Status ShardedAdamW::Step(double lr, double max_norm, double grad_norm) {
  c10::NoGradGuard no_grad;
  ++step_;
  const double clip = (max_norm > 0 && grad_norm > max_norm) ? max_norm / (grad_norm + 1e-6) : 1.0;
  const at::Tensor g = grad_.narrow(0, begin_, shard_) * clip;
  const double b1 = options_.beta1, b2 = options_.beta2;
  m_.mul_(b1).add_(g, 1 - b1);
  v_.mul_(b2).addcmul_(g, g, 1 - b2);
  const double bc1 = 1 - std::pow(b1, static_cast<double>(step_));
  const double bc2 = 1 - std::pow(b2, static_cast<double>(step_));
  // Decoupled decay (AdamW): shrink the weights, then the Adam update.
  const at::Tensor lr_t = lr_scale_ * lr;
  master_.mul_(1 - lr_t * options_.weight_decay * decay_mask_);
  master_.sub_(lr_t / bc1 * m_ / (v_ / bc2).sqrt_().add_(options_.eps));
  grad_.zero_();
  return GatherMasterIntoParams();
}

absl::Status ShardedAdamW::GatherMasterIntoParams() {
  // Every rank's master slice, concatenated, is the whole flat vector; the parameters are views
  // into it cast to their compute dtype.
  std::vector<at::Tensor> slices;
  at::Tensor full = at::empty({padded_}, master_.options());
  for (int r = 0; r < comm_->world_size(); ++r) slices.push_back(full.narrow(0, r * shard_, shard_));
  if (absl::Status s = comm_->AllGather(master_, slices); !s.ok()) return s;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i].second;
    p.detach().copy_(full.narrow(0, offsets_[i], p.numel()).view(p.sizes()));
  }
  return absl::OkStatus();
}

std::map<std::string, at::Tensor> ShardedAdamW::State() const {
  return {{"master", master_.cpu()},
          {"exp_avg", m_.cpu()},
          {"exp_avg_sq", v_.cpu()},
          {"step", at::full({1}, step_, at::kLong)}};
}

absl::Status ShardedAdamW::LoadState(const std::map<std::string, at::Tensor>& state) {
  c10::NoGradGuard no_grad;
  for (const char* k : {"master", "exp_avg", "exp_avg_sq", "step"}) {
    if (!state.count(k)) return absl::InvalidArgumentError(absl::StrCat("optimizer state lacks '", k, "'"));
  }
  for (const char* k : {"master", "exp_avg", "exp_avg_sq"}) {
    if (state.at(k).numel() != shard_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer state '", k, "' has ", state.at(k).numel(), " elements, this rank's shard has ", shard_,
          " (resume needs the same trainable parameters and world size)"));
    }
  }
  master_.copy_(state.at("master"));
  m_.copy_(state.at("exp_avg"));
  v_.copy_(state.at("exp_avg_sq"));
  step_ = state.at("step").item<int64_t>();
  return GatherMasterIntoParams();
}

}  // namespace llama_moe
