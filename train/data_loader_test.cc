#include "train/data_loader.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/file_util.h"
#include "model/test_util.h"
#include "train/token_shards.h"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;

constexpr uint32_t kEos = 7;

// A stream whose token at offset i is i (N = 1001, L = 10 -> S = 100 sequences): every row of a
// batch tells which sequence it is, so the tests can check packing as well as order.
std::shared_ptr<const TokenStream> CountingStream(uint32_t n = 1001) {
  std::vector<uint32_t> tokens(n);
  std::iota(tokens.begin(), tokens.end(), 0u);
  return TokenStream::FromTokens(std::move(tokens), kEos);
}

DataLoaderOptions Options(int64_t global_batch, int64_t micro_batch, int64_t world_size, uint64_t seed = 0) {
  DataLoaderOptions o;
  o.seq_len = 10;
  o.global_batch = global_batch;
  o.micro_batch = micro_batch;
  o.world_size = world_size;
  o.seed = seed;
  return o;
}

std::unique_ptr<DataLoader> MakeLoader(const DataLoaderOptions& o, std::shared_ptr<const TokenStream> s = nullptr) {
  absl::StatusOr<std::unique_ptr<DataLoader>> loader = DataLoader::Create(s ? s : CountingStream(), o);
  EXPECT_TRUE(loader.ok()) << loader.status();
  return loader.ok() ? std::move(loader).value() : nullptr;
}

at::Tensor Batch(const DataLoader& loader, int64_t step, int64_t micro, int64_t rank) {
  absl::StatusOr<at::Tensor> batch = loader.Batch(step, micro, rank);
  EXPECT_TRUE(batch.ok()) << batch.status();
  return batch.ok() ? *batch : at::Tensor();
}

// The whole optimizer step as seen by all ranks, rows in (micro-step, rank, row) order.
at::Tensor WholeStep(const DataLoader& loader, int64_t step) {
  std::vector<at::Tensor> parts;
  for (int64_t a = 0; a < loader.micro_steps(); ++a) {
    for (int64_t r = 0; r < loader.options().world_size; ++r) parts.push_back(Batch(loader, step, a, r));
  }
  return at::cat(parts, 0);
}

TEST(DataLoaderTest, SequencesArePackedWindowsSharingOneToken) {
  std::unique_ptr<DataLoader> loader = MakeLoader(Options(8, 2, 1));
  EXPECT_EQ(loader->num_sequences(), 100);  // (1001 - 1) / 10
  EXPECT_EQ(loader->steps_per_epoch(), 12);  // 100 / 8, 4 sequences skipped per epoch
  EXPECT_EQ(loader->micro_steps(), 4);
  absl::StatusOr<std::vector<int64_t>> ids = loader->SequenceIds(3, 1, 0);
  ASSERT_TRUE(ids.ok());
  const at::Tensor batch = Batch(*loader, 3, 1, 0);
  ASSERT_EQ(batch.sizes(), (std::vector<int64_t>{2, 11}));
  EXPECT_EQ(batch.scalar_type(), at::kLong);
  for (int64_t row = 0; row < 2; ++row) {
    const at::Tensor expected = at::arange((*ids)[row] * 10, (*ids)[row] * 10 + 11, at::kLong);
    EXPECT_TRUE(at::equal(batch[row], expected)) << batch[row] << " vs " << expected;
  }
}

TEST(DataLoaderTest, EpochOrderIsASeededPermutation) {
  std::unique_ptr<DataLoader> a = MakeLoader(Options(8, 2, 1, /*seed=*/0));
  std::unique_ptr<DataLoader> b = MakeLoader(Options(8, 2, 1, /*seed=*/0));
  std::unique_ptr<DataLoader> c = MakeLoader(Options(8, 2, 1, /*seed=*/1));
  std::vector<uint32_t> order = a->EpochOrder(0);
  std::vector<uint32_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  std::vector<uint32_t> identity(100);
  std::iota(identity.begin(), identity.end(), 0u);
  EXPECT_EQ(sorted, identity);
  EXPECT_NE(order, identity);  // shuffled: the chance of the identity is 1/100!
  EXPECT_EQ(order, b->EpochOrder(0));
  EXPECT_NE(order, a->EpochOrder(1));
  EXPECT_NE(order, c->EpochOrder(0));
}

TEST(DataLoaderTest, SameSeedSameBatchesDifferentSeedDifferent) {
  std::unique_ptr<DataLoader> a = MakeLoader(Options(8, 2, 1, 5));
  std::unique_ptr<DataLoader> b = MakeLoader(Options(8, 2, 1, 5));
  std::unique_ptr<DataLoader> c = MakeLoader(Options(8, 2, 1, 6));
  bool any_difference = false;
  for (int64_t step = 0; step < 30; ++step) {
    EXPECT_TRUE(at::equal(WholeStep(*a, step), WholeStep(*b, step))) << "step " << step;
    any_difference |= !at::equal(WholeStep(*a, step), WholeStep(*c, step));
  }
  EXPECT_TRUE(any_difference);
}

TEST(DataLoaderTest, StepsOfAnEpochAreDisjoint) {
  std::unique_ptr<DataLoader> loader = MakeLoader(Options(8, 2, 2));
  std::set<int64_t> seen;
  for (int64_t step = 0; step < loader->steps_per_epoch(); ++step) {
    for (int64_t a = 0; a < loader->micro_steps(); ++a) {
      for (int64_t r = 0; r < 2; ++r) {
        const std::vector<int64_t> ids = *loader->SequenceIds(step, a, r);
        for (int64_t id : ids) EXPECT_TRUE(seen.insert(id).second) << id;
      }
    }
  }
  EXPECT_EQ(seen.size(), 96u);  // 12 steps * 8
}

// The property that makes a W-process run equal a 1-process run: for the same global batch, the
// ranks of a step together read exactly the 1-process step, and rank r's micro-step a is the
// 1-process micro-step a * W + r.
TEST(DataLoaderTest, UnionOverRanksEqualsSingleProcessStep) {
  std::unique_ptr<DataLoader> one = MakeLoader(Options(8, 2, 1, 3));
  std::unique_ptr<DataLoader> two = MakeLoader(Options(8, 2, 2, 3));
  std::unique_ptr<DataLoader> four = MakeLoader(Options(8, 1, 4, 3));
  ASSERT_EQ(two->micro_steps(), 2);
  for (int64_t step : {0, 1, 11, 12, 25}) {  // crosses epoch boundaries (12 steps per epoch)
    const at::Tensor single = WholeStep(*one, step);
    EXPECT_TRUE(at::equal(WholeStep(*two, step), single)) << "step " << step;
    EXPECT_TRUE(at::equal(WholeStep(*four, step), single)) << "step " << step;
    for (int64_t a = 0; a < 2; ++a) {
      for (int64_t r = 0; r < 2; ++r) {
        EXPECT_TRUE(at::equal(Batch(*two, step, a, r), Batch(*one, step, a * 2 + r, 0)));
      }
    }
  }
  // Ranks never share a sequence within a step.
  std::set<int64_t> rank0, rank1;
  for (int64_t a = 0; a < 2; ++a) {
    // Named: a range-for over *StatusOr-temporary would dangle.
    const std::vector<int64_t> ids0 = *two->SequenceIds(4, a, 0);
    const std::vector<int64_t> ids1 = *two->SequenceIds(4, a, 1);
    rank0.insert(ids0.begin(), ids0.end());
    rank1.insert(ids1.begin(), ids1.end());
  }
  EXPECT_EQ(rank0.size(), 4u);
  EXPECT_EQ(rank1.size(), 4u);
  for (int64_t id : rank0) EXPECT_EQ(rank1.count(id), 0u);
}

TEST(DataLoaderTest, ResumeFromSavedPositionGivesTheSameBatches) {
  const DataLoaderOptions o = Options(8, 2, 2, 9);
  std::unique_ptr<DataLoader> first = MakeLoader(o);
  std::vector<at::Tensor> uninterrupted;
  for (int64_t step = 0; step < 30; ++step) uninterrupted.push_back(WholeStep(*first, step));
  // "Checkpoint" at step 17 (epoch 1), then a fresh process restores the position.
  const std::string saved = first->PositionAt(17).ToJson().dump();
  std::unique_ptr<DataLoader> resumed = MakeLoader(o);
  absl::StatusOr<DataPosition> position = DataPosition::FromJson(nlohmann::json::parse(saved));
  ASSERT_TRUE(position.ok()) << position.status();
  EXPECT_EQ(position->epoch, 1);
  EXPECT_EQ(position->step, 17);
  ASSERT_TRUE(resumed->CheckPosition(*position).ok());
  for (int64_t step = position->step; step < 30; ++step) {
    EXPECT_TRUE(at::equal(WholeStep(*resumed, step), uninterrupted[step])) << "step " << step;
  }
}

TEST(DataLoaderTest, PositionFromAnotherConfigurationIsRejected) {
  std::unique_ptr<DataLoader> loader = MakeLoader(Options(8, 2, 1));
  DataPosition position{0, 17};  // step 17 is in epoch 1 with 12 steps per epoch
  absl::Status s = loader->CheckPosition(position);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("12 steps per epoch"));
  EXPECT_FALSE(DataPosition::FromJson(nlohmann::json{{"epoch", 1}}).ok());
  EXPECT_FALSE(DataPosition::FromJson(nlohmann::json{{"epoch", 1}, {"step", -2}}).ok());
}

TEST(DataLoaderTest, BadConfigurationsFail) {
  EXPECT_THAT(DataLoader::Create(CountingStream(), Options(8, 3, 1)).status().message(),
              HasSubstr("not a multiple of world_size * micro_batch"));
  EXPECT_THAT(DataLoader::Create(CountingStream(), Options(128, 2, 1)).status().message(),
              HasSubstr("fewer than one global batch"));
  EXPECT_THAT(DataLoader::Create(CountingStream(), Options(8, 0, 1)).status().message(),
              HasSubstr("must be positive"));
  std::unique_ptr<DataLoader> loader = MakeLoader(Options(8, 2, 2));
  EXPECT_EQ(loader->Batch(0, 2, 0).status().code(), absl::StatusCode::kOutOfRange);  // A = 2
  EXPECT_EQ(loader->Batch(0, 0, 2).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(loader->Batch(-1, 0, 0).status().code(), absl::StatusCode::kOutOfRange);
}

// A shard set on disk reads as the concatenation of its shards, across shard boundaries.
TEST(TokenStreamTest, ShardSetReadsAcrossShardBoundaries) {
  const std::string dir = TestPath("set");
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  constexpr uint32_t kVocab = 5000;
  constexpr uint32_t kSetEos = 4999;
  ShardSetManifest m;
  m.vocab_size = kVocab;
  m.eos_id = kSetEos;
  m.input_format = "text";
  std::vector<uint32_t> all;
  uint32_t next = 0;
  for (int shard : {0, 1, 2}) {
    std::vector<uint32_t> tokens;
    for (int i = 0; i < 137 + 50 * shard; ++i) tokens.push_back(next++ % kSetEos);
    tokens.push_back(kSetEos);
    ShardEntry e;
    e.file = absl::StrCat("train-0000", shard, ".tok");
    ASSERT_TRUE(WriteTokenShard(JoinPath(dir, e.file), tokens, kVocab, kSetEos).ok());
    e.num_tokens = tokens.size();
    e.num_documents = 1;
    e.payload_hash = Fnv1a64(absl::string_view(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 4));
    m.splits["train"].num_tokens += e.num_tokens;
    m.splits["train"].num_documents += 1;
    m.splits["train"].shards.push_back(e);
    all.insert(all.end(), tokens.begin(), tokens.end());
  }
  ASSERT_TRUE(WriteShardSetManifest(dir, m).ok());
  absl::StatusOr<std::shared_ptr<const TokenStream>> stream = TokenStream::Open(dir, "train");
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_EQ((*stream)->size(), all.size());
  std::vector<int64_t> out(all.size());
  (*stream)->Read(0, absl::MakeSpan(out));
  EXPECT_TRUE(std::equal(out.begin(), out.end(), all.begin()));

  // Batches from the mmapped shards equal those from the same tokens in memory.
  std::unique_ptr<DataLoader> disk = MakeLoader(Options(4, 2, 1), *stream);
  std::unique_ptr<DataLoader> memory = MakeLoader(Options(4, 2, 1), TokenStream::FromTokens(all, kSetEos));
  for (int64_t step = 0; step < 20; ++step) EXPECT_TRUE(at::equal(WholeStep(*disk, step), WholeStep(*memory, step)));
  EXPECT_EQ(TokenStream::Open(dir, "heldout").status().code(), absl::StatusCode::kNotFound);
}

// Every held-out token but the first is a target exactly once, over all ranks and batches.
TEST(EvalIteratorTest, WindowsCoverTheSplitOnce) {
  for (int64_t world : {1, 2, 3}) {
    std::vector<int64_t> predicted(1005, 0);
    int64_t targets = 0;
    for (int64_t rank = 0; rank < world; ++rank) {
      absl::StatusOr<EvalIterator> it = EvalIterator::Create(CountingStream(1001 + 4), 10, 3, rank, world);
      ASSERT_TRUE(it.ok()) << it.status();
      EXPECT_EQ(it->num_windows(), 101);  // ceil(1004 / 10): the last window has 4 targets
      while (std::optional<EvalBatch> b = it->Next()) {
        ASSERT_EQ(b->tokens.size(1), 11);
        EXPECT_EQ(b->num_targets, b->target_mask.sum().item<int64_t>());
        targets += b->num_targets;
        for (int64_t row = 0; row < b->tokens.size(0); ++row) {
          for (int64_t t = 0; t < 10; ++t) {
            if (!b->target_mask[row][t].item<bool>()) {
              EXPECT_EQ(b->tokens[row][t + 1].item<int64_t>(), kEos);  // padding
              continue;
            }
            const int64_t token = b->tokens[row][t + 1].item<int64_t>();
            EXPECT_EQ(b->tokens[row][t].item<int64_t>(), token - 1);  // the counting stream
            ++predicted[token];
          }
        }
      }
    }
    EXPECT_EQ(targets, 1004) << "world " << world;
    for (int64_t t = 1; t < 1005; ++t) ASSERT_EQ(predicted[t], 1) << "token " << t << " world " << world;
  }
  EXPECT_FALSE(EvalIterator::Create(CountingStream(), 10, 3, 2, 2).ok());
}

// The counting stream with a loss mask: token i is a target iff i % 3 == 0.
std::shared_ptr<const TokenStream> MaskedCountingStream(uint32_t n = 1001) {
  std::vector<uint32_t> tokens(n);
  std::iota(tokens.begin(), tokens.end(), 0u);
  std::vector<uint8_t> mask(n);
  for (uint32_t i = 0; i < n; ++i) mask[i] = i % 3 == 0;
  return TokenStream::FromTokens(std::move(tokens), kEos, &mask);
}

TEST(DataLoaderTest, TargetMaskFollowsTheTargetsOfEachRow) {
  std::unique_ptr<DataLoader> plain = MakeLoader(Options(8, 2, 2));
  ASSERT_NE(plain, nullptr);
  EXPECT_FALSE(plain->has_loss_mask());
  EXPECT_FALSE(plain->TargetMask(0, 0, 0)->defined());
  EXPECT_EQ(*plain->StepTargets(3), 8 * 10);

  std::unique_ptr<DataLoader> loader = MakeLoader(Options(8, 2, 2), MaskedCountingStream());
  ASSERT_NE(loader, nullptr);
  EXPECT_TRUE(loader->has_loss_mask());
  for (int64_t step : {0, 5}) {
    int64_t total = 0;
    for (int64_t a = 0; a < loader->micro_steps(); ++a) {
      for (int64_t r = 0; r < 2; ++r) {
        const at::Tensor tokens = Batch(*loader, step, a, r);
        absl::StatusOr<at::Tensor> mask = loader->TargetMask(step, a, r);
        ASSERT_TRUE(mask.ok()) << mask.status();
        ASSERT_EQ(mask->sizes(), (std::vector<int64_t>{2, 10}));
        // The tokens are still the plain ids: the stored flag never reaches the model.
        EXPECT_EQ(tokens.max().item<int64_t>(), tokens.max().item<int64_t>() & kTokenIdMask);
        const at::Tensor expected = tokens.narrow(1, 1, 10).remainder(3).eq(0);
        EXPECT_TRUE(at::equal(*mask, expected)) << "step " << step << " micro " << a << " rank " << r;
        total += mask->sum().item<int64_t>();
      }
    }
    EXPECT_EQ(*loader->StepTargets(step), total);
  }
}

TEST(EvalIteratorTest, LossMaskLeavesTheOtherTargetsOut) {
  absl::StatusOr<EvalIterator> it = EvalIterator::Create(MaskedCountingStream(1005), 10, 4);
  ASSERT_TRUE(it.ok());
  int64_t targets = 0;
  while (std::optional<EvalBatch> b = it->Next()) {
    EXPECT_EQ(b->num_targets, b->target_mask.sum().item<int64_t>());
    // Every target kept is a multiple of 3 and a real token (not padding).
    const at::Tensor kept = b->tokens.narrow(1, 1, 10).masked_select(b->target_mask);
    EXPECT_TRUE(kept.remainder(3).eq(0).all().item<bool>());
    targets += b->num_targets;
  }
  EXPECT_EQ(targets, 334);  // 3, 6, ..., 1002: the multiples of 3 in [1, 1004]
}

}  // namespace
}  // namespace llama_moe
