#include "train/sharded_adamw.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
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
  offsets_.push_back(numel_);
  const int64_t W = comm_->world_size();
  padded_ = (numel_ + W - 1) / W * W;
  shard_ = padded_ / W;
  begin_ = shard_ * comm_->rank();
  chunk_ = std::max<int64_t>(1, std::min(shard_, options_.bucket_bytes / 4 / W));
  buckets_ = shard_ > 0 ? (shard_ + chunk_ - 1) / chunk_ : 0;
  const auto device = params_.empty() ? c10::Device(c10::kCPU) : params_[0].second.device();
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  grad_ = at::zeros({shard_}, f32);
  master_ = at::zeros({shard_}, f32);
  decay_mask_ = at::zeros({shard_}, f32);
  lr_scale_ = at::ones({shard_}, f32);
  ForEachPiece(begin_, begin_ + shard_, [&](size_t i, int64_t in_param, int64_t in_range, int64_t n) {
    const at::Tensor& p = params_[i].second;
    master_.narrow(0, in_range, n).copy_(p.reshape({-1}).narrow(0, in_param, n));
    if (p.dim() >= 2) decay_mask_.narrow(0, in_range, n).fill_(1.0);
    if (i < lr_scales.size()) lr_scale_.narrow(0, in_range, n).fill_(lr_scales[i]);
  });
  m_ = at::zeros({shard_}, f32);
  v_ = at::zeros({shard_}, f32);
}

template <typename F>
void ShardedAdamW::ForEachPiece(int64_t lo, int64_t hi, const F& fn) const {
  // The parameter holding element lo: the last offset <= lo.
  size_t i = static_cast<size_t>(std::upper_bound(offsets_.begin(), offsets_.end() - 1, lo) - offsets_.begin());
  i = i == 0 ? 0 : i - 1;
  for (; i < params_.size() && offsets_[i] < hi; ++i) {
    const int64_t a = std::max(lo, offsets_[i]), b = std::min(hi, offsets_[i + 1]);
    if (a < b) fn(i, a - offsets_[i], a - lo, b - a);
  }
}

int64_t ShardedAdamW::ChunkLength(int64_t b) const { return std::min(chunk_, shard_ - b * chunk_); }

absl::Status ShardedAdamW::AccumulateGradients() {
  c10::NoGradGuard no_grad;
  const int W = comm_->world_size();
  // Flat views of the gradients (a copy only for a non-contiguous one, e.g. an expanded zero).
  std::vector<at::Tensor> flat(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& g = params_[i].second.grad();
    if (g.defined()) flat[i] = g.is_contiguous() ? g.view({-1}) : g.reshape({-1});
  }
  for (int64_t b = 0; b < buckets_; ++b) {
    const int64_t len = ChunkLength(b);
    // Every rank's chunk b, in rank order: [W*len], zero where no gradient (or padding) is.
    at::Tensor bucket = at::zeros({W * len}, grad_.options());
    for (int r = 0; r < W; ++r) {
      const int64_t lo = r * shard_ + b * chunk_;
      ForEachPiece(lo, lo + len, [&](size_t i, int64_t in_param, int64_t in_range, int64_t n) {
        if (flat[i].defined()) bucket.narrow(0, r * len + in_range, n).copy_(flat[i].narrow(0, in_param, n));
      });
    }
    at::Tensor mine = bucket.narrow(0, comm_->rank() * len, len);
    if (W > 1) {
      at::Tensor summed = at::empty({len}, grad_.options());
      if (absl::Status s = comm_->ReduceScatterSum(bucket, summed); !s.ok()) return s;
      mine = summed;
    }
    grad_.narrow(0, b * chunk_, len).add_(mine);
  }
  for (auto& [name, p] : params_) p.mutable_grad() = at::Tensor();
  return absl::OkStatus();
}

absl::StatusOr<double> ShardedAdamW::GradientNorm() {
  const double local = grad_.norm().item<double>();
  if (comm_->world_size() == 1) return local;
  at::Tensor sq = at::full({1}, local * local, at::TensorOptions().dtype(at::kDouble).device(grad_.device()));
  if (absl::Status s = comm_->AllReduceSum({sq}); !s.ok()) return s;
  return std::sqrt(sq.item<double>());
}

absl::Status ShardedAdamW::Step(double lr, double max_norm, double grad_norm) {
  c10::NoGradGuard no_grad;
  ++step_;
  const double clip = (max_norm > 0 && grad_norm > max_norm) ? max_norm / (grad_norm + 1e-6) : 1.0;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bc1 = 1 - std::pow(b1, static_cast<double>(step_));
  const double bc2 = 1 - std::pow(b2, static_cast<double>(step_));
  // In chunks, so that the update's temporaries are a few chunks, not a few slices (at 8B with
  // one rank a float32 slice is 22 GB).
  for (int64_t begin = 0; begin < shard_; begin += kStepChunk) {
    const int64_t n = std::min(kStepChunk, shard_ - begin);
    const at::Tensor g = grad_.narrow(0, begin, n).mul_(clip);
    at::Tensor m = m_.narrow(0, begin, n), v = v_.narrow(0, begin, n), w = master_.narrow(0, begin, n);
    m.mul_(b1).add_(g, 1 - b1);
    v.mul_(b2).addcmul_(g, g, 1 - b2);
    // Decoupled decay (AdamW): shrink the weights, then the Adam update.
    const at::Tensor lr_t = lr_scale_.narrow(0, begin, n) * lr;
    w.mul_(1 - lr_t * options_.weight_decay * decay_mask_.narrow(0, begin, n));
    w.sub_(lr_t / bc1 * m / (v / bc2).sqrt_().add_(options_.eps));
  }
  grad_.zero_();
  return GatherMasterIntoParams();
}

absl::Status ShardedAdamW::GatherMasterIntoParams() {
  c10::NoGradGuard no_grad;
  const int W = comm_->world_size();
  for (int64_t b = 0; b < buckets_; ++b) {
    const int64_t len = ChunkLength(b);
    at::Tensor gathered = at::empty({W * len}, master_.options());
    std::vector<at::Tensor> slices;
    for (int r = 0; r < W; ++r) slices.push_back(gathered.narrow(0, r * len, len));
    if (absl::Status s = comm_->AllGather(master_.narrow(0, b * chunk_, len), slices); !s.ok()) return s;
    for (int r = 0; r < W; ++r) {
      const int64_t lo = r * shard_ + b * chunk_;
      ForEachPiece(lo, lo + len, [&](size_t i, int64_t in_param, int64_t in_range, int64_t n) {
        at::Tensor p = params_[i].second.detach();
        p.view({-1}).narrow(0, in_param, n).copy_(slices[r].narrow(0, in_range, n));
      });
    }
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
