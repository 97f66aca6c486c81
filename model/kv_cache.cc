#include "model/kv_cache.h"

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace llama_moe {

absl::StatusOr<KvCache> KvCache::Create(const LlamaConfig& cfg, int64_t capacity,
                                        std::vector<int64_t> left_pad,
                                        const at::TensorOptions& options) {
  if (capacity <= 0) return absl::InvalidArgumentError(absl::StrCat("KV cache capacity ", capacity, " must be positive"));
  if (left_pad.empty()) return absl::InvalidArgumentError("KV cache needs at least one sequence");
  for (int64_t p : left_pad) {
    if (p < 0 || p >= capacity) {
      return absl::InvalidArgumentError(
          absl::StrCat("left padding ", p, " is outside the KV cache capacity ", capacity));
    }
  }
  KvCache cache;
  cache.capacity_ = capacity;
  cache.left_pad_ = std::move(left_pad);
  const int64_t batch = cache.batch_size();
  try {
    for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
      // Never read before written: empty (not zeros) saves touching the memory twice.
      cache.keys_.push_back(at::empty({batch, cfg.num_key_value_heads, capacity, cfg.head_dim}, options));
      cache.values_.push_back(at::empty({batch, cfg.num_key_value_heads, capacity, cfg.head_dim}, options));
    }
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("allocating a KV cache of ", capacity, " slots for ", batch,
                     " sequences: ", e.what_without_backtrace()));
  }
  return cache;
}

std::pair<at::Tensor, at::Tensor> KvCache::Update(int64_t layer, const at::Tensor& k,
                                                  const at::Tensor& v) {
  const int64_t t = k.size(2);
  TORCH_CHECK(length_ + t <= capacity_, "KV cache overflow: ", length_, " + ", t, " > ", capacity_);
  keys_[layer].narrow(2, length_, t).copy_(k);
  values_[layer].narrow(2, length_, t).copy_(v);
  return {keys_[layer].narrow(2, 0, length_ + t), values_[layer].narrow(2, 0, length_ + t)};
}

int64_t KvCache::nbytes() const {
  int64_t total = 0;
  for (size_t i = 0; i < keys_.size(); ++i) total += keys_[i].nbytes() + values_[i].nbytes();
  return total;
}

}  // namespace llama_moe
