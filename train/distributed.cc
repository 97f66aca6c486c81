#include "train/distributed.h"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if defined(LLAMA_MOE_WITH_CUDA)
#include <c10/cuda/CUDAFunctions.h>
#endif
#if defined(LLAMA_MOE_WITH_CUDA) && defined(USE_C10D_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace llama_moe {
namespace {

const char* Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

absl::Status ReadInt(const char* name, const char* fallback, int* out, bool* found) {
  const char* v = Env(name);
  if (v == nullptr && fallback != nullptr) v = Env(fallback);
  if (v == nullptr) return absl::OkStatus();
  if (!absl::SimpleAtoi(v, out)) {
    return absl::InvalidArgumentError(absl::StrCat("environment variable ", name, "='", v, "' is not an integer"));
  }
  *found = true;
  return absl::OkStatus();
}

// Collectives on any c10d process group type with the same method names (ProcessGroupGloo,
// ProcessGroupNCCL; in LibTorch 2.x these are Backends, with the same calls).
template <typename PG>
class PgCommunicator : public Communicator {
 public:
  // `native_reduce_scatter`: the backend implements reduce_scatter (NCCL; not Gloo).
  PgCommunicator(const DistEnv& env, c10::Device device, const char* backend, c10::intrusive_ptr<c10d::Store> store,
                 c10::intrusive_ptr<PG> pg, bool native_reduce_scatter)
      : store_(std::move(store)), pg_(std::move(pg)), native_reduce_scatter_(native_reduce_scatter) {
    env_ = env;
    device_ = device;
    backend_ = backend;
  }

  absl::Status AllReduceSum(std::vector<at::Tensor> tensors) override {
    return Run("all_reduce", [&] { pg_->allreduce(tensors)->wait(); });
  }
  absl::Status ReduceScatterSum(at::Tensor in, at::Tensor& out) override {
    const int64_t n = out.numel();
    if (native_reduce_scatter_) {
      return Run("reduce_scatter", [&] {
        std::vector<at::Tensor> outs{out};
        std::vector<std::vector<at::Tensor>> ins(1);
        for (int r = 0; r < env_.world_size; ++r) ins[0].push_back(in.narrow(0, r * n, n));
        pg_->reduce_scatter(outs, ins)->wait();
      });
    }
    return Run("all_reduce", [&] {
      std::vector<at::Tensor> t{in};
      pg_->allreduce(t)->wait();
      out.copy_(in.narrow(0, env_.rank * n, n));
    });
  }
  absl::Status AllGather(const at::Tensor& in, std::vector<at::Tensor>& out) override {
    return Run("all_gather", [&] {
      std::vector<std::vector<at::Tensor>> outs{out};
      std::vector<at::Tensor> ins{in};
      pg_->allgather(outs, ins)->wait();
      for (size_t i = 0; i < out.size(); ++i) {
        if (!outs[0][i].is_same(out[i])) out[i].copy_(outs[0][i]);
      }
    });
  }
  absl::Status Broadcast(at::Tensor tensor, int root) override {
    return Run("broadcast", [&] {
      std::vector<at::Tensor> t{tensor};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      pg_->broadcast(t, o)->wait();
    });
  }
  absl::Status Barrier() override {
    return Run("barrier", [&] { pg_->barrier()->wait(); });
  }
  absl::Status SetSignal(const std::string& key, const std::string& value) override {
    return Run("store set", [&] { store_->set(key, std::vector<uint8_t>(value.begin(), value.end())); });
  }
  absl::StatusOr<std::string> WaitForSignal(const std::string& key, std::chrono::milliseconds timeout) override {
    std::string value;
    absl::Status s = Run("store wait", [&] {
      store_->wait({key}, timeout);
      const std::vector<uint8_t> v = store_->get(key);
      value.assign(v.begin(), v.end());
    });
    if (!s.ok()) return s;
    return value;
  }

 private:
  template <typename F>
  absl::Status Run(const char* op, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      std::string what = e.what();
      what = what.substr(0, what.find('\n'));
      return absl::UnavailableError(absl::StrCat("rank ", env_.rank, "/", env_.world_size, ": ", op,
                                                 " failed (did another rank die or hang?): ", what));
    }
    return absl::OkStatus();
  }

  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<PG> pg_;
  bool native_reduce_scatter_;
};

class SingleProcess : public Communicator {
 public:
  SingleProcess(const DistEnv& env, c10::Device device) {
    env_ = env;
    device_ = device;
  }
  absl::Status AllReduceSum(std::vector<at::Tensor>) override { return absl::OkStatus(); }
  absl::Status ReduceScatterSum(at::Tensor in, at::Tensor& out) override {
    out.copy_(in);
    return absl::OkStatus();
  }
  absl::Status AllGather(const at::Tensor& in, std::vector<at::Tensor>& out) override {
    out[0].copy_(in);
    return absl::OkStatus();
  }
  absl::Status Broadcast(at::Tensor, int) override { return absl::OkStatus(); }
  absl::Status Barrier() override { return absl::OkStatus(); }
  absl::Status SetSignal(const std::string& key, const std::string& value) override {
    signals_[key] = value;
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> WaitForSignal(const std::string& key, std::chrono::milliseconds) override {
    auto it = signals_.find(key);
    if (it == signals_.end()) return absl::DeadlineExceededError(absl::StrCat("no signal '", key, "'"));
    return it->second;
  }

 private:
  std::map<std::string, std::string> signals_;
};

#if defined(LLAMA_MOE_WITH_CUDA) && defined(USE_C10D_NCCL)
// Makes a stuck or failed NCCL collective throw from wait() after the timeout, like Gloo's,
// instead of the watchdog thread aborting the process. Values the user set win; both the current
// (TORCH_NCCL_*) and the LibTorch 1.x names are set.
void PreferNcclErrorsAsExceptions() {
  for (const char* name : {"TORCH_NCCL_BLOCKING_WAIT", "NCCL_BLOCKING_WAIT"}) setenv(name, "1", /*overwrite=*/0);
  for (const char* name : {"TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING"}) {
    setenv(name, "0", /*overwrite=*/0);
  }
}
#endif

}  // namespace

absl::StatusOr<std::vector<double>> Communicator::SumValues(const std::vector<double>& values) {
  at::Tensor t = at::tensor(values, at::TensorOptions().dtype(at::kDouble)).to(device_);
  if (absl::Status s = AllReduceSum({t}); !s.ok()) return s;
  t = t.to(at::kCPU).contiguous();
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

absl::StatusOr<DistEnv> DistEnvFromEnvironment() {
  DistEnv env;
  bool has_rank = false, has_world = false, unused = false;
  if (absl::Status s = ReadInt("RANK", "SLURM_PROCID", &env.rank, &has_rank); !s.ok()) return s;
  if (absl::Status s = ReadInt("WORLD_SIZE", "SLURM_NTASKS", &env.world_size, &has_world); !s.ok()) return s;
  if (absl::Status s = ReadInt("LOCAL_RANK", "SLURM_LOCALID", &env.local_rank, &unused); !s.ok()) return s;
  if (absl::Status s = ReadInt("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", &env.local_world_size, &unused); !s.ok()) {
    return s;
  }
  if (env.local_world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("LOCAL_WORLD_SIZE ", env.local_world_size, " is not positive"));
  }
  if (absl::Status s = ReadInt("MASTER_PORT", nullptr, &env.master_port, &unused); !s.ok()) return s;
  if (const char* a = Env("MASTER_ADDR")) env.master_addr = a;
  if (const char* a = Env("TORCHELASTIC_USE_AGENT_STORE")) env.agent_store = std::string(a) == "True" || std::string(a) == "1";
  if (has_rank != has_world) {
    return absl::InvalidArgumentError("RANK and WORLD_SIZE must be set together (torchrun sets both)");
  }
  if (env.world_size < 1 || env.rank < 0 || env.rank >= env.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("RANK ", env.rank, " is not in [0, WORLD_SIZE=", env.world_size, ")"));
  }
  if (env.master_port < 1 || env.master_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("MASTER_PORT ", env.master_port, " is not a port"));
  }
  return env;
}

absl::StatusOr<std::unique_ptr<Communicator>> Communicator::Create(const DistEnv& env, c10::Device device,
                                                                   std::chrono::milliseconds timeout) {
  if (device.is_cuda()) {
#if defined(LLAMA_MOE_WITH_CUDA)
    // This rank's GPU becomes the current device: NCCL's communicator and every allocation
    // without an explicit index go there, not to GPU 0.
    const int index = device.has_index() ? device.index() : env.local_rank;
    try {
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(index));
    } catch (const std::exception& e) {
      std::string what = e.what();
      return absl::InvalidArgumentError(absl::StrCat("rank ", env.rank, ": cannot use cuda:", index, " (LOCAL_RANK ",
                                                     env.local_rank, "): ", what.substr(0, what.find('\n'))));
    }
    device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
#else
    return absl::UnimplementedError("--device cuda needs a build against a CUDA LibTorch (LIBTORCH; see README)");
#endif
  }
  if (env.world_size == 1) return std::unique_ptr<Communicator>(new SingleProcess(env, device));
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(env.master_port);
    so.isServer = !env.agent_store && env.rank == 0;
    so.numWorkers = env.world_size;
    so.waitWorkers = false;
    so.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    // A prefix keeps our keys apart from the launcher's in its agent store.
    auto store = c10::make_intrusive<c10d::PrefixStore>("llama_moe", tcp);
    if (device.is_cuda()) {
#if defined(LLAMA_MOE_WITH_CUDA) && defined(USE_C10D_NCCL)
      PreferNcclErrorsAsExceptions();
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank, env.world_size, opts);
      return std::unique_ptr<Communicator>(
          new PgCommunicator<c10d::ProcessGroupNCCL>(env, device, "nccl", store, pg, /*native_reduce_scatter=*/true));
#else
      return absl::UnimplementedError("CUDA tensors need a LibTorch built with NCCL (set LIBTORCH to a CUDA LibTorch)");
#endif
    }
    auto opts = c10d::ProcessGroupGloo::Options::create();
    opts->timeout = timeout;
    // GLOO_SOCKET_IFNAME picks the interface as in PyTorch; a loopback master means one machine.
    if (const char* ifname = Env("GLOO_SOCKET_IFNAME")) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (env.master_addr == "127.0.0.1" || env.master_addr == "localhost") {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, opts);
    return std::unique_ptr<Communicator>(
        new PgCommunicator<c10d::ProcessGroupGloo>(env, device, "gloo", store, pg, /*native_reduce_scatter=*/false));
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    return absl::UnavailableError(absl::StrCat("rank ", env.rank, "/", env.world_size, ": cannot join the process group at ",
                                               env.master_addr, ":", env.master_port, ": ", what));
  }
}

}  // namespace llama_moe
