#include "train/sharded_adamw.h"

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "gtest/gtest.h"

namespace llama_moe {
namespace {

// W ranks as threads of one process: every collective deposits each rank's tensor, waits for
// all of them, and computes its result from the deposits (what a process group computes).
class InProcessGroup {
 public:
  explicit InProcessGroup(int world_size) : world_size_(world_size), slots_(world_size) {}

  // fn(deposits) once every rank has deposited `mine`; ranks leave together.
  void Exchange(int rank, const at::Tensor& mine, const std::function<void(const std::vector<at::Tensor>&)>& fn) {
    slots_[rank] = mine.clone();
    Wait();
    fn(slots_);
    Wait();
  }
  int world_size() const { return world_size_; }

 private:
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const int64_t generation = generation_;
    if (++arrived_ == world_size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != generation; });
    }
  }

  const int world_size_;
  std::vector<at::Tensor> slots_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  int64_t generation_ = 0;
};

class InProcessCommunicator : public Communicator {
 public:
  InProcessCommunicator(InProcessGroup* group, int rank) : group_(group) {
    env_.rank = rank;
    env_.world_size = group->world_size();
    backend_ = "in-process";
  }
  absl::Status AllReduceSum(std::vector<at::Tensor> tensors) override {
    for (at::Tensor& t : tensors) {
      group_->Exchange(rank(), t, [&](const std::vector<at::Tensor>& all) {
        at::Tensor sum = at::zeros_like(t);
        for (const at::Tensor& x : all) sum += x;
        t.copy_(sum);
      });
    }
    return absl::OkStatus();
  }
  absl::Status ReduceScatterSum(at::Tensor in, at::Tensor& out) override {
    const int64_t n = out.numel();
    group_->Exchange(rank(), in, [&](const std::vector<at::Tensor>& all) {
      out.zero_();
      for (const at::Tensor& x : all) out += x.narrow(0, rank() * n, n);
    });
    return absl::OkStatus();
  }
  absl::Status AllGather(const at::Tensor& in, std::vector<at::Tensor>& out) override {
    group_->Exchange(rank(), in, [&](const std::vector<at::Tensor>& all) {
      for (size_t r = 0; r < out.size(); ++r) out[r].copy_(all[r]);
    });
    return absl::OkStatus();
  }
  absl::Status Broadcast(at::Tensor tensor, int root) override {
    group_->Exchange(rank(), tensor, [&](const std::vector<at::Tensor>& all) { tensor.copy_(all[root]); });
    return absl::OkStatus();
  }
  absl::Status Barrier() override {
    group_->Exchange(rank(), at::zeros({1}), [](const std::vector<at::Tensor>&) {});
    return absl::OkStatus();
  }
  absl::Status SetSignal(const std::string&, const std::string&) override {
    return absl::UnimplementedError("no store");
  }
  absl::StatusOr<std::string> WaitForSignal(const std::string&, std::chrono::milliseconds) override {
    return absl::UnimplementedError("no store");
  }

 private:
  InProcessGroup* group_;
};

// Parameters of odd sizes, so that ranks' slices and buckets cut through them.
std::vector<at::Tensor> OddParams() {
  at::manual_seed(3);
  return {at::randn({7, 5}), at::randn({5}), at::randn({3, 3, 2}), at::randn({1})};
}

std::vector<std::pair<std::string, at::Tensor>> Named(const std::vector<at::Tensor>& ps) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < ps.size(); ++i) out.emplace_back("p" + std::to_string(i), ps[i]);
  return out;
}

// The loss of micro-batch (step, rank, micro) on `ps`: different data on every rank.
at::Tensor MicroLoss(const std::vector<at::Tensor>& ps, int step, int rank, int micro) {
  at::Tensor loss = at::zeros({});
  for (size_t i = 0; i < ps.size(); ++i) {
    const at::Tensor target = at::full(ps[i].sizes(), 0.1 * (1 + step + 2 * rank + 3 * micro + int(i)));
    loss = loss + (ps[i] - target).pow(2).sum() * (1 + rank);
  }
  return loss;
}

// ZeRO-2 with 2 ranks and tiny buckets against 1 rank fed the same micro-batches: the same
// weights after every step (summation order differs: float32 rounding), each rank holding only
// its slice.
TEST(ShardedAdamWTest, TwoRanksWithTinyBucketsEqualOneRank) {
  constexpr int kSteps = 3, kMicro = 2, kWorld = 2;
  AdamWOptions o;
  o.weight_decay = 0.1;
  o.bucket_bytes = 4 * 3;  // 3 floats per bucket: chunks of 1 element per rank, cutting every parameter

  // Reference: one rank accumulates every rank's micro-batches.
  std::vector<at::Tensor> ref;
  for (const at::Tensor& p : OddParams()) ref.push_back(p.clone().set_requires_grad(true));
  auto single = *Communicator::Create(DistEnv(), c10::kCPU, std::chrono::seconds(10));
  ShardedAdamW ref_opt(Named(ref), single.get(), o, {1.0, 0.5, 1.0, 2.0});
  std::vector<double> ref_norms;
  for (int step = 0; step < kSteps; ++step) {
    for (int rank = 0; rank < kWorld; ++rank) {
      for (int micro = 0; micro < kMicro; ++micro) {
        MicroLoss(ref, step, rank, micro).backward();
        ASSERT_TRUE(ref_opt.AccumulateGradients().ok());
      }
    }
    ref_norms.push_back(*ref_opt.GradientNorm());
    ASSERT_TRUE(ref_opt.Step(1e-2, /*max_norm=*/1.0, ref_norms.back()).ok());
  }

  InProcessGroup group(kWorld);
  std::vector<std::vector<at::Tensor>> ranks_params(kWorld);
  std::vector<std::vector<double>> norms(kWorld);
  std::vector<int64_t> shard(kWorld), resident(kWorld);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < kWorld; ++rank) {
    for (const at::Tensor& p : OddParams()) ranks_params[rank].push_back(p.clone().set_requires_grad(true));
    threads.emplace_back([&, rank] {
      InProcessCommunicator comm(&group, rank);
      ShardedAdamW opt(Named(ranks_params[rank]), &comm, o, {1.0, 0.5, 1.0, 2.0});
      shard[rank] = opt.shard_elements();
      resident[rank] = opt.resident_bytes();
      for (int step = 0; step < kSteps; ++step) {
        for (int micro = 0; micro < kMicro; ++micro) {
          MicroLoss(ranks_params[rank], step, rank, micro).backward();
          EXPECT_TRUE(opt.AccumulateGradients().ok());
        }
        norms[rank].push_back(*opt.GradientNorm());
        EXPECT_TRUE(opt.Step(1e-2, 1.0, norms[rank].back()).ok());
      }
    });
  }
  for (std::thread& t : threads) t.join();

  const int64_t N = 35 + 5 + 18 + 1;
  for (int rank = 0; rank < kWorld; ++rank) {
    EXPECT_EQ(shard[rank], (N + 1) / 2);
    EXPECT_EQ(resident[rank], 6 * 4 * ((N + 1) / 2));  // float32 state, gradient, mask and scale: one slice
    for (int step = 0; step < kSteps; ++step) EXPECT_NEAR(norms[rank][step] / ref_norms[step], 1.0, 1e-6);
    for (size_t i = 0; i < ref.size(); ++i) {
      // float32, different summation order over ranks: a few ulps of the parameter scale.
      EXPECT_LT((ranks_params[rank][i] - ref[i]).abs().max().item<float>(), 1e-6) << rank << " " << i;
    }
  }
  EXPECT_FALSE(at::allclose(ref[0], OddParams()[0]));  // the steps moved the weights
}

// Single-rank ShardedAdamW against LibTorch's own AdamW (the slow, trusted reference), with
// weight decay only on matrices (a second param group without decay for vectors).
TEST(ShardedAdamWTest, MatchesTorchAdamWWithDecayOnMatricesOnly) {
  at::manual_seed(0);
  const at::Tensor w0 = at::randn({6, 5}), b0 = at::randn({5});
  at::Tensor w = w0.clone().set_requires_grad(true), b = b0.clone().set_requires_grad(true);
  at::Tensor rw = w0.clone().set_requires_grad(true), rb = b0.clone().set_requires_grad(true);
  DistEnv env;
  auto comm = *Communicator::Create(env, c10::kCPU, std::chrono::seconds(10));
  AdamWOptions o;
  o.beta1 = 0.9;
  o.beta2 = 0.95;
  o.eps = 1e-8;
  o.weight_decay = 0.1;
  ShardedAdamW ours({{"w", w}, {"b", b}}, comm.get(), o);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<at::Tensor>{rw},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1)));
  groups.emplace_back(std::vector<at::Tensor>{rb},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.0)));
  torch::optim::AdamW ref(groups, torch::optim::AdamWOptions(1e-2));
  for (int step = 0; step < 5; ++step) {
    const at::Tensor x = at::randn({4, 6});
    (at::matmul(x, w) + b).pow(2).sum().backward();
    (at::matmul(x, rw) + rb).pow(2).sum().backward();
    ASSERT_TRUE(ours.AccumulateGradients().ok());
    const double norm = *ours.GradientNorm();
    ASSERT_TRUE(ours.Step(1e-2, /*max_norm=*/0, norm).ok());
    ref.step();
    ref.zero_grad();
  }
  // Same float32 arithmetic up to operation order.
  EXPECT_LT((w - rw).abs().max().item<float>(), 1e-6);
  EXPECT_LT((b - rb).abs().max().item<float>(), 1e-6);
  EXPECT_FALSE(at::allclose(w, w0));
}

TEST(ShardedAdamWTest, ClippingScalesTheUpdateAndStateRoundTrips) {
  at::Tensor p = at::ones({3, 3}).set_requires_grad(true);
  DistEnv env;
  auto comm = *Communicator::Create(env, c10::kCPU, std::chrono::seconds(10));
  ShardedAdamW opt({{"p", p}}, comm.get(), {});
  (p * 100).sum().backward();
  ASSERT_TRUE(opt.AccumulateGradients().ok());
  EXPECT_FALSE(p.grad().defined());  // moved into the float32 gradient slice
  const double norm = *opt.GradientNorm();
  EXPECT_NEAR(norm, 300.0, 1e-3);
  ASSERT_TRUE(opt.Step(1e-3, 1.0, norm).ok());
  auto state = opt.State();
  EXPECT_EQ(state.at("step").item<int64_t>(), 1);
  // A fresh optimizer restored from the state holds the same weights.
  at::Tensor q = at::zeros({3, 3}).set_requires_grad(true);
  ShardedAdamW again({{"q", q}}, comm.get(), {});
  ASSERT_TRUE(again.LoadState(state).ok());
  EXPECT_TRUE(at::equal(q, p));
  auto bad = state;
  bad["master"] = at::zeros({4});
  EXPECT_FALSE(again.LoadState(bad).ok());
}

}  // namespace
}  // namespace llama_moe
