// Data-parallel communication on c10d process groups, initialised the way PyTorch jobs are
// launched: `torchrun --no_python --nproc_per_node=N ./train ...` (or SLURM) sets RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT.
//
// Gloo serves CPU tensors; NCCL serves CUDA tensors when the project is built against a CUDA
// LibTorch. Every collective has a timeout, so a rank that dies or hangs makes the others fail
// with an error naming the operation instead of blocking forever. With WORLD_SIZE unset or 1 no
// process group is created and collectives are no-ops.
//
// Example:
//   ASSIGN_OR_RETURN(DistEnv env, DistEnvFromEnvironment());
//   ASSIGN_OR_RETURN(auto comm, Communicator::Create(env, c10::kCPU, std::chrono::seconds(300)));
//   at::Tensor grad_bucket = at::ones({1024});
//   RETURN_IF_ERROR(comm->AllReduceSum({grad_bucket}));  // every rank now holds the sum
#ifndef LLAMA_MOE_TRAIN_DISTRIBUTED_H_
#define LLAMA_MOE_TRAIN_DISTRIBUTED_H_

#include <ATen/core/Tensor.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace llama_moe {

struct DistEnv {
  int rank = 0;                          // global rank, e.g. 0
  int world_size = 1;                    // e.g. 2
  int local_rank = 0;                    // rank on this machine (selects the GPU)
  int local_world_size = 1;              // ranks on this machine, e.g. 8 (they share its memory)
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // torchrun hosts the TCPStore itself (TORCHELASTIC_USE_AGENT_STORE=True): every worker is a
  // client. Otherwise rank 0 starts the store.
  bool agent_store = false;
};

// Reads RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (falling back to SLURM_PROCID,
// SLURM_NTASKS, SLURM_LOCALID); all unset means a single process.
absl::StatusOr<DistEnv> DistEnvFromEnvironment();

class Communicator {
 public:
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(const DistEnv& env, c10::Device device,
                                                              std::chrono::milliseconds timeout);
  virtual ~Communicator() = default;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  const char* backend() const { return backend_; }
  // The device whose tensors the collectives take (NCCL: this rank's GPU).
  c10::Device device() const { return device_; }

  // Host values summed over ranks, through a float64 tensor on device() (NCCL takes no CPU
  // tensors).
  absl::StatusOr<std::vector<double>> SumValues(const std::vector<double>& values);

  // In-place sum across ranks of each tensor.
  virtual absl::Status AllReduceSum(std::vector<at::Tensor> tensors) = 0;
  // `out` ([n]) receives the sum over ranks of chunk `rank` of `in` ([world_size * n]); `in` may
  // be overwritten. Backends without a reduce-scatter (Gloo) all-reduce `in` and keep the chunk.
  virtual absl::Status ReduceScatterSum(at::Tensor in, at::Tensor& out) = 0;
  // out[r] receives rank r's `in` (same shape on every rank).
  virtual absl::Status AllGather(const at::Tensor& in, std::vector<at::Tensor>& out) = 0;
  virtual absl::Status Broadcast(at::Tensor tensor, int root) = 0;
  virtual absl::Status Barrier() = 0;
  // Out-of-band signals through the rendezvous store, for waits that must not count against the
  // collective timeout (rank 0 writing a checkpoint while the others wait for it). Keys are
  // shared by all ranks; a key is set once.
  virtual absl::Status SetSignal(const std::string& key, const std::string& value) = 0;
  // The value of `key` once some rank set it; an error after `timeout`.
  virtual absl::StatusOr<std::string> WaitForSignal(const std::string& key, std::chrono::milliseconds timeout) = 0;

 protected:
  DistEnv env_;
  const char* backend_ = "none";
  c10::Device device_ = c10::Device(c10::kCPU);
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_DISTRIBUTED_H_
