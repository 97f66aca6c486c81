#include "train/data_loader.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "model/status_macros.h"
#include "train/random.h"

namespace llama_moe {

// --- TokenStream ---

absl::StatusOr<std::shared_ptr<const TokenStream>> TokenStream::Open(const std::string& dir,
                                                                     const std::string& split) {
  ASSIGN_OR_RETURN(const ShardSetManifest manifest, ReadShardSetManifest(dir));
  std::shared_ptr<TokenStream> stream(new TokenStream());
  stream->name_ = absl::StrCat(dir, ":", split);
  stream->eos_id_ = manifest.eos_id;
  stream->has_loss_mask_ = manifest.loss_mask;
  ASSIGN_OR_RETURN(stream->shards_, OpenSplit(dir, manifest, split));
  for (const auto& shard : stream->shards_) {
    if (shard->tokens().empty()) continue;
    stream->starts_.push_back(stream->size_);
    stream->pieces_.push_back(shard->tokens());
    stream->size_ += shard->tokens().size();
  }
  return std::shared_ptr<const TokenStream>(std::move(stream));
}

std::shared_ptr<const TokenStream> TokenStream::FromTokens(std::vector<uint32_t> tokens, uint32_t eos_id,
                                                           const std::vector<uint8_t>* loss_mask) {
  std::shared_ptr<TokenStream> stream(new TokenStream());
  stream->name_ = "<memory>";
  stream->eos_id_ = eos_id;
  if (loss_mask != nullptr) {
    TORCH_CHECK(loss_mask->size() == tokens.size(), "FromTokens: ", tokens.size(), " tokens but ",
                loss_mask->size(), " loss mask entries");
    stream->has_loss_mask_ = true;
    for (size_t i = 0; i < tokens.size(); ++i) {
      TORCH_CHECK(tokens[i] <= kTokenIdMask, "FromTokens: token id ", tokens[i], " leaves no bit for the loss mask");
      if (!(*loss_mask)[i]) tokens[i] |= kTokenNoLossBit;
    }
  }
  stream->owned_ = std::move(tokens);
  if (!stream->owned_.empty()) {
    stream->starts_.push_back(0);
    stream->pieces_.push_back(stream->owned_);
    stream->size_ = stream->owned_.size();
  }
  return stream;
}

template <typename Visit>
void TokenStream::VisitRange(uint64_t offset, uint64_t count, Visit visit) const {
  // Callers compute ranges from size(); a bad one is a bug, not bad data.
  TORCH_CHECK(offset + count <= size_, name_, ": read of [", offset, ", ", offset + count, ") past the end ", size_);
  if (count == 0) return;
  // The piece holding `offset`: the last one starting at or before it.
  size_t piece = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), offset) - starts_.begin()) - 1;
  uint64_t done = 0;
  while (done < count) {
    const absl::Span<const uint32_t> words = pieces_[piece];
    const uint64_t within = offset + done - starts_[piece];
    const uint64_t n = std::min<uint64_t>(words.size() - within, count - done);
    visit(words.data() + within, n, done);
    done += n;
    ++piece;
  }
}

void TokenStream::Read(uint64_t offset, absl::Span<int64_t> out) const {
  const uint32_t id_mask = has_loss_mask_ ? kTokenIdMask : ~uint32_t{0};
  VisitRange(offset, out.size(), [&](const uint32_t* words, uint64_t n, uint64_t at) {
    for (uint64_t i = 0; i < n; ++i) out[at + i] = words[i] & id_mask;
  });
}

void TokenStream::ReadLossMask(uint64_t offset, absl::Span<bool> out) const {
  if (!has_loss_mask_) {
    TORCH_CHECK(offset + out.size() <= size_, name_, ": read of [", offset, ", ", offset + out.size(),
                ") past the end ", size_);
    std::fill(out.begin(), out.end(), true);
    return;
  }
  VisitRange(offset, out.size(), [&](const uint32_t* words, uint64_t n, uint64_t at) {
    for (uint64_t i = 0; i < n; ++i) out[at + i] = (words[i] & kTokenNoLossBit) == 0;
  });
}

// --- DataPosition ---

nlohmann::json DataPosition::ToJson() const { return {{"epoch", epoch}, {"step", step}}; }

absl::StatusOr<DataPosition> DataPosition::FromJson(const nlohmann::json& json) {
  DataPosition p;
  for (auto [key, field] : {std::pair{"epoch", &p.epoch}, std::pair{"step", &p.step}}) {
    if (!json.is_object() || !json.contains(key) || !json[key].is_number_integer() || json[key].get<int64_t>() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("data position ", json.dump(), ": '", key,
                                                     "' must be a non-negative integer"));
    }
    *field = json[key].get<int64_t>();
  }
  return p;
}

// --- DataLoader ---

DataLoader::DataLoader(std::shared_ptr<const TokenStream> stream, const DataLoaderOptions& options)
    : stream_(std::move(stream)), options_(options) {}

absl::StatusOr<std::unique_ptr<DataLoader>> DataLoader::Create(std::shared_ptr<const TokenStream> stream,
                                                               const DataLoaderOptions& o) {
  if (o.seq_len <= 0 || o.global_batch <= 0 || o.micro_batch <= 0 || o.world_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("data loader: seq_len (", o.seq_len, "), global_batch (",
                                                   o.global_batch, "), micro_batch (", o.micro_batch,
                                                   ") and world_size (", o.world_size, ") must be positive"));
  }
  if (o.global_batch % (o.world_size * o.micro_batch) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data loader: global batch ", o.global_batch, " is not a multiple of world_size * micro_batch = ",
        o.world_size, " * ", o.micro_batch));
  }
  const uint64_t n = stream->size();
  const int64_t sequences = n < 2 ? 0 : static_cast<int64_t>((n - 1) / static_cast<uint64_t>(o.seq_len));
  if (sequences > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("data loader: '", stream->name(), "' has ", sequences,
                                                   " sequences; at most 2^32 - 1 are supported"));
  }
  if (sequences < o.global_batch) {
    return absl::InvalidArgumentError(absl::StrCat("data loader: '", stream->name(), "' has ", n, " tokens = ",
                                                   sequences, " sequences of ", o.seq_len,
                                                   " tokens, fewer than one global batch of ", o.global_batch));
  }
  std::unique_ptr<DataLoader> loader(new DataLoader(std::move(stream), o));
  loader->num_sequences_ = sequences;
  loader->steps_per_epoch_ = sequences / o.global_batch;
  loader->micro_steps_ = o.global_batch / (o.world_size * o.micro_batch);
  return loader;
}

std::vector<uint32_t> DataLoader::EpochOrder(int64_t epoch) const {
  std::vector<uint32_t> order(static_cast<size_t>(num_sequences_));
  std::iota(order.begin(), order.end(), 0u);
  SplitMix64 rng(MixSeed(options_.seed, static_cast<uint64_t>(epoch)));
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.Below(i)]);
  return order;
}

std::shared_ptr<const std::vector<uint32_t>> DataLoader::CachedOrder(int64_t epoch) const {
  absl::MutexLock lock(&mu_);
  if (cached_epoch_ != epoch) {
    cached_order_ = std::make_shared<const std::vector<uint32_t>>(EpochOrder(epoch));
    cached_epoch_ = epoch;
  }
  return cached_order_;
}

absl::StatusOr<std::vector<int64_t>> DataLoader::SequenceIds(int64_t step, int64_t micro, int64_t rank) const {
  if (step < 0 || micro < 0 || micro >= micro_steps_ || rank < 0 || rank >= options_.world_size) {
    return absl::OutOfRangeError(absl::StrCat("data loader: (step ", step, ", micro-step ", micro, ", rank ", rank,
                                              ") is outside steps >= 0, micro-steps [0, ", micro_steps_,
                                              "), ranks [0, ", options_.world_size, ")"));
  }
  const int64_t epoch = step / steps_per_epoch_;
  const int64_t k = step % steps_per_epoch_;
  const std::shared_ptr<const std::vector<uint32_t>> order = CachedOrder(epoch);
  const int64_t m = options_.micro_batch;
  const int64_t first = k * options_.global_batch + (micro * options_.world_size + rank) * m;
  std::vector<int64_t> ids(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) ids[i] = (*order)[static_cast<size_t>(first + i)];
  return ids;
}

void DataLoader::ReadSequence(int64_t index, absl::Span<int64_t> out) const {
  TORCH_CHECK(index >= 0 && index < num_sequences_ && out.size() == static_cast<size_t>(options_.seq_len + 1),
              "sequence ", index, " of ", num_sequences_, " into a row of ", out.size());
  stream_->Read(static_cast<uint64_t>(index) * options_.seq_len, out);
}

absl::StatusOr<at::Tensor> DataLoader::Batch(int64_t step, int64_t micro, int64_t rank) const {
  ASSIGN_OR_RETURN(const std::vector<int64_t> ids, SequenceIds(step, micro, rank));
  const int64_t row = options_.seq_len + 1;
  at::Tensor tokens = at::empty({static_cast<int64_t>(ids.size()), row}, at::kLong);
  int64_t* data = tokens.data_ptr<int64_t>();
  for (size_t i = 0; i < ids.size(); ++i) ReadSequence(ids[i], absl::MakeSpan(data + i * row, row));
  return tokens;
}

absl::StatusOr<at::Tensor> DataLoader::TargetMask(int64_t step, int64_t micro, int64_t rank) const {
  if (!stream_->has_loss_mask()) return at::Tensor();
  ASSIGN_OR_RETURN(const std::vector<int64_t> ids, SequenceIds(step, micro, rank));
  const int64_t length = options_.seq_len;
  at::Tensor mask = at::empty({static_cast<int64_t>(ids.size()), length}, at::kBool);
  bool* data = mask.data_ptr<bool>();
  // Row i's targets are tokens 1..L of its sequence.
  for (size_t i = 0; i < ids.size(); ++i) {
    stream_->ReadLossMask(static_cast<uint64_t>(ids[i]) * length + 1, absl::MakeSpan(data + i * length, length));
  }
  return mask;
}

absl::StatusOr<int64_t> DataLoader::StepTargets(int64_t step) const {
  if (!stream_->has_loss_mask()) return options_.global_batch * options_.seq_len;
  int64_t total = 0;
  for (int64_t a = 0; a < micro_steps_; ++a) {
    for (int64_t r = 0; r < options_.world_size; ++r) {
      ASSIGN_OR_RETURN(const at::Tensor mask, TargetMask(step, a, r));
      total += mask.sum().item<int64_t>();
    }
  }
  return total;
}

DataPosition DataLoader::PositionAt(int64_t step) const {
  return DataPosition{step / steps_per_epoch_, step};
}

absl::Status DataLoader::CheckPosition(const DataPosition& position) const {
  if (position.step < 0 || position.epoch != position.step / steps_per_epoch_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "data position {epoch ", position.epoch, ", step ", position.step, "} does not fit '", stream_->name(),
        "' with ", steps_per_epoch_, " steps per epoch (global batch ", options_.global_batch, ", seq_len ",
        options_.seq_len, "): was it saved with another dataset or batch size?"));
  }
  return absl::OkStatus();
}

// --- EvalIterator ---

absl::StatusOr<EvalIterator> EvalIterator::Create(std::shared_ptr<const TokenStream> stream, int64_t seq_len,
                                                  int64_t batch_size, int64_t rank, int64_t world_size) {
  if (seq_len <= 0 || batch_size <= 0 || world_size <= 0 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(absl::StrCat("eval iterator: need seq_len (", seq_len, ") > 0, batch size (",
                                                   batch_size, ") > 0 and 0 <= rank (", rank, ") < world size (",
                                                   world_size, ")"));
  }
  EvalIterator it;
  it.stream_ = std::move(stream);
  it.seq_len_ = seq_len;
  it.batch_size_ = batch_size;
  it.rank_ = rank;
  it.world_size_ = world_size;
  const uint64_t n = it.stream_->size();
  it.num_windows_ = n < 2 ? 0 : static_cast<int64_t>((n - 1 + seq_len - 1) / seq_len);
  it.next_ = rank;
  return it;
}

std::optional<EvalBatch> EvalIterator::Next() {
  if (next_ >= num_windows_) return std::nullopt;
  std::vector<int64_t> windows;
  for (; next_ < num_windows_ && static_cast<int64_t>(windows.size()) < batch_size_; next_ += world_size_) {
    windows.push_back(next_);
  }
  const int64_t b = static_cast<int64_t>(windows.size());
  const int64_t row = seq_len_ + 1;
  EvalBatch batch;
  batch.first_window = windows.front();
  batch.tokens = at::full({b, row}, static_cast<int64_t>(stream_->eos_id()), at::kLong);
  batch.target_mask = at::zeros({b, seq_len_}, at::kBool);
  int64_t* tokens = batch.tokens.data_ptr<int64_t>();
  bool* mask = batch.target_mask.data_ptr<bool>();
  for (int64_t i = 0; i < b; ++i) {
    const uint64_t start = static_cast<uint64_t>(windows[i]) * seq_len_;
    const int64_t length = static_cast<int64_t>(std::min<uint64_t>(row, stream_->size() - start));
    stream_->Read(start, absl::MakeSpan(tokens + i * row, length));
    stream_->ReadLossMask(start + 1, absl::MakeSpan(mask + i * seq_len_, length - 1));
    batch.num_targets += std::count(mask + i * seq_len_, mask + i * seq_len_ + length - 1, true);
  }
  return batch;
}

}  // namespace llama_moe
