// The CUDA path checked against the CPU and measured against its dense baseline in the same run,
// printed as one table (tools/gpu_check.sh runs it on a GPU machine):
//   parity    the routed MoE layer on --device against the CPU: forward and gradients (input,
//             learned experts, router), float32 and bfloat16; relative max errors; a small
//             dense Llama (attention, left padding, KV-cache decode) against the CPU, float32
//   sync      which dispatch the device's bfloat16 layer takes, and the host synchronisations of
//             a routed bfloat16 forward and backward (CUDA's sync debug mode set to error)
//   moe_ffn   the routed MoE layer (8 frozen + 8 learned experts of 1792, top-8, hidden 4096,
//             bfloat16) against a dense SwiGLU of the same active width (14336): forward TFLOP/s
//             over the active FLOPs at several token counts, and their ratio; with a grouped
//             GEMM, the segment loop's time over the grouped dispatch's
//   decode    greedy decode tokens/s of a random 8B-shaped model (32 layers unless
//             --decode_layers), dense against the routed MoE of the same shape, batch 1 (and the
//             routed model through the segment loop, with a grouped GEMM)
// Each row says whether it meets its goal; the exit status is non-zero when a parity row fails.
// On a CPU-only LibTorch, --device cpu runs the same code (slowly) for a smoke check.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "model/generate.h"
#include "model/llama_model.h"
#include "moe/dispatch_plan.h"
#include "moe/moe_config.h"
#include "moe/moe_layer.h"

#if defined(LLAMA_MOE_WITH_CUDA)
#include <c10/cuda/CUDAFunctions.h>
#endif

ABSL_FLAG(std::string, device, "cuda", "device checked against the CPU, e.g. cuda, cuda:1");
ABSL_FLAG(std::string, sections, "parity,sync,moe_ffn,decode", "comma-separated sections to run");
ABSL_FLAG(std::vector<std::string>, tokens, std::vector<std::string>({"512", "2048", "8192", "16384"}),
          "token counts of the moe_ffn section");
ABSL_FLAG(int64_t, hidden, 4096, "hidden size of the moe_ffn and decode sections");
ABSL_FLAG(int64_t, decode_layers, 32, "layers of the decode section's model");
ABSL_FLAG(int64_t, decode_tokens, 64, "tokens generated per decode measurement");

namespace llama_moe {
namespace {

using Clock = std::chrono::steady_clock;

double RelErr(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor a = got.detach().to(at::kCPU, at::kDouble), b = want.detach().to(at::kCPU, at::kDouble);
  const double scale = b.abs().max().item<double>();
  return (a - b).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

// Waits for the device's queued work: a one-element read goes through the same stream.
void Sync(const at::Tensor& t) { (void)t.reshape({-1})[0].item<float>(); }

void Row(const std::string& section, const std::string& what, const std::string& value, const std::string& goal,
         bool ok) {
  std::printf("| %-8s | %-48s | %14s | %-12s | %-4s |\n", section.c_str(), what.c_str(), value.c_str(), goal.c_str(),
              ok ? "ok" : "FAIL");
  std::fflush(stdout);
}

// Parameters N(0, 1/fan_in); norm weights 1.
void FillRandom(torch::nn::Module& m) {
  c10::NoGradGuard no_grad;
  for (auto& p : m.named_parameters()) {
    at::Tensor t = p.value();
    if (p.key().find("norm") != std::string::npos) {
      t.fill_(1.0);
    } else {
      t.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(t.size(-1))));
    }
  }
}

void CopyState(torch::nn::Module& from, torch::nn::Module& to) {
  c10::NoGradGuard no_grad;
  auto dst = to.named_parameters();
  for (auto& p : from.named_parameters()) dst[p.key()].copy_(p.value());
  auto dst_b = to.named_buffers();
  for (auto& b : from.named_buffers()) dst_b[b.key()].copy_(b.value());
}

int Parity(const c10::Device device) {
  MoeConfig moe;
  moe.num_frozen_experts = 8;
  moe.num_learned_experts = 8;
  moe.expert_intermediate_size = 256;
  moe.top_k = 4;
  moe.gate_scale = 4.0;
  const int64_t H = 1024, T = 512;
  MoeLayerOptions options;
  options.mode = RoutingMode::kRouted;
  int failures = 0;
  at::manual_seed(1);
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    MoeFeedForward cpu(H, moe, options, at::TensorOptions().dtype(dtype));
    MoeFeedForward dev(H, moe, options, at::TensorOptions().dtype(dtype).device(device));
    FillRandom(cpu);
    CopyState(cpu, dev);
    const at::Tensor x = at::randn({T, H}).to(dtype);
    const at::Tensor g = at::randn({T, H}).to(dtype);
    at::Tensor xc = x.clone().requires_grad_(true);
    at::Tensor xd = x.to(device).requires_grad_(true);
    const at::Tensor yc = cpu.forward(xc), yd = dev.forward(xd);
    const std::string name = dtype == at::kFloat ? "float32" : "bfloat16";
    const at::Tensor ic = cpu.router().forward(x).expert, id = dev.router().forward(x.to(device)).expert;
    const double same = ic.eq(id.to(at::kCPU)).to(at::kDouble).mean().item<double>();
    Row("parity", name + " router choices equal to the CPU's", absl::StrFormat("%.4f", same), "1", same == 1.0);
    failures += same != 1.0;
    const double tol = dtype == at::kFloat ? 1e-5 : 2e-2;
    const double fwd = RelErr(yd, yc);
    Row("parity", name + " forward rel. max error", absl::StrFormat("%.2e", fwd), absl::StrFormat("<= %.0e", tol),
        fwd <= tol);
    failures += fwd > tol;
    (yc * g).sum().backward();
    (yd * g.to(device)).sum().backward();
    double grad = RelErr(xd.grad(), xc.grad());
    auto pd = dev.named_parameters();
    for (auto& p : cpu.named_parameters()) {
      if (!p.value().requires_grad()) continue;
      grad = std::max(grad, RelErr(pd[p.key()].grad(), p.value().grad()));
    }
    // bfloat16 gradients pass through two roundings more than the forward (dz, then dg and du).
    const double grad_tol = dtype == at::kFloat ? 1e-4 : 5e-2;
    Row("parity", name + " gradients (input, experts, router)", absl::StrFormat("%.2e", grad),
        absl::StrFormat("<= %.0e", grad_tol), grad <= grad_tol);
    failures += grad > grad_tol;
  }
  return failures;
}

int ModelParity(const c10::Device device) {
  LlamaConfig cfg;
  cfg.vocab_size = 1000;
  cfg.hidden_size = 512;
  cfg.intermediate_size = 1024;
  cfg.num_hidden_layers = 2;
  cfg.num_attention_heads = 8;
  cfg.num_key_value_heads = 2;
  cfg.head_dim = 64;
  cfg.max_position_embeddings = 4096;
  at::manual_seed(4);
  LlamaForCausalLM cpu(cfg, at::TensorOptions().dtype(at::kFloat));
  LlamaForCausalLM dev(cfg, at::TensorOptions().dtype(at::kFloat).device(device));
  FillRandom(cpu);
  CopyState(cpu, dev);
  const at::Tensor tokens = at::randint(0, cfg.vocab_size, {2, 96}, at::kLong);
  ForwardOptions o;
  o.left_pad = {0, 17};
  const at::Tensor lc = *cpu.Forward(tokens, o), ld = *dev.Forward(tokens.to(device), o);
  // Padded slots' outputs are meaningless: compare the real ones.
  const double err = std::max(RelErr(ld[0], lc[0]), RelErr(ld[1].narrow(0, 17, 96 - 17), lc[1].narrow(0, 17, 96 - 17)));
  Row("parity", "float32 dense Llama logits, left-padded batch", absl::StrFormat("%.2e", err), "<= 1e-4", err <= 1e-4);
  GenerateOptions g;
  g.max_new_tokens = 24;
  std::vector<int64_t> prompt(tokens[0].data_ptr<int64_t>(), tokens[0].data_ptr<int64_t>() + 40);
  const absl::StatusOr<GenerateResult> gc = Generate(cpu, {prompt}, g), gd = Generate(dev, {prompt}, g);
  const bool same = gc.ok() && gd.ok() && gc->tokens == gd->tokens;
  Row("parity", "float32 greedy 24 tokens (KV cache) equal", same ? "yes" : "no", "yes", same);
  return (err > 1e-4) + !same;
}

// Mean seconds per call of `f` after two warm-up calls.
template <typename F>
double TimeIt(F&& f, int iters) {
  at::Tensor out = f();
  out = f();
  Sync(out);
  const auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) out = f();
  Sync(out);
  return std::chrono::duration<double>(Clock::now() - t0).count() / iters;
}

// The dispatch a routed bfloat16 layer takes on `device`, and whether its forward and backward
// synchronise with the host: with the grouped GEMM none may (a synchronising CUDA call throws in
// sync debug mode); the segment loop reads the per-expert counts once per layer.
int HostSyncs(const c10::Device device) {
  MoeConfig moe;
  moe.expert_intermediate_size = 256;
  const int64_t H = 1024, T = 512;
  const at::TensorOptions o = at::TensorOptions().dtype(at::kBFloat16).device(device);
  at::manual_seed(5);
  MoeFeedForward layer(H, moe, MoeLayerOptions(), o);
  FillRandom(layer);
  const at::Tensor x = at::randn({T, H}, o).requires_grad_(true), g = at::randn({T, H}, o);
  const bool grouped = PlanDispatch(DispatchMode::kTraining, x, at::zeros({T, moe.top_k}, o.dtype(at::kLong))).grouped;
  Row("sync", "bfloat16 dispatch", grouped ? "grouped GEMM" : "segment loop", device.is_cuda() ? "grouped GEMM" : "",
      grouped || !device.is_cuda());
  (layer.forward(x) * g).sum().backward();  // warm-up: allocator and kernel caches
  std::string error;
#if defined(LLAMA_MOE_WITH_CUDA)
  if (device.is_cuda()) {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
    try {
      (layer.forward(x) * g).sum().backward();
    } catch (const c10::Error& e) {
      error = e.what_without_backtrace();
    }
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
  }
#endif
  layer.TakeRoutingStats();
  if (!error.empty()) std::fprintf(stderr, "sync: %s\n", error.substr(0, error.find('\n')).c_str());
  const bool checked = device.is_cuda();
  Row("sync", "host syncs in a routed bf16 forward + backward", !checked ? "not checked" : error.empty() ? "0" : ">= 1",
      grouped ? "0" : "", !checked || !grouped || error.empty());
  return checked && grouped && !error.empty();
}

void MoeFfn(const c10::Device device) {
  const int64_t H = absl::GetFlag(FLAGS_hidden);
  MoeConfig moe;  // 8 frozen + 8 learned experts of 1792, top-8, gate scale 8
  moe.expert_intermediate_size = H * 7 / 16;
  const int64_t active = moe.top_k * moe.expert_intermediate_size;
  const at::TensorOptions o = at::TensorOptions().dtype(at::kBFloat16).device(device);
  at::manual_seed(2);
  SwiGluFeedForward dense(H, active, o);
  MoeFeedForward routed(H, moe, MoeLayerOptions(), o);
  FillRandom(dense);
  FillRandom(routed);
  c10::InferenceMode guard;
  const bool grouped = HasGroupedGemmKernel(device);
  for (const std::string& s : absl::GetFlag(FLAGS_tokens)) {
    const int64_t T = std::stoll(s);
    const at::Tensor x = at::randn({T, H}, o);
    const double flops = 2.0 * 3.0 * static_cast<double>(T) * H * active;
    const double td = TimeIt([&] { return dense.forward(x); }, 10);
    const double tm = TimeIt([&] { return routed.forward(x); }, 10);
    Row("moe_ffn", absl::StrFormat("T=%d dense TFLOP/s", T), absl::StrFormat("%.1f", flops / td / 1e12), "", true);
    Row("moe_ffn", absl::StrFormat("T=%d routed TFLOP/s", T), absl::StrFormat("%.1f", flops / tm / 1e12), "", true);
    Row("moe_ffn", absl::StrFormat("T=%d routed / dense", T), absl::StrFormat("%.2f", td / tm), ">= 0.6",
        td / tm >= 0.6);
    if (grouped) {  // the same layer through the segment loop: what the grouped rule gains
      SetGroupedDispatchAllowed(false);
      const double ts = TimeIt([&] { return routed.forward(x); }, 10);
      SetGroupedDispatchAllowed(true);
      Row("moe_ffn", absl::StrFormat("T=%d speed, segment loop / grouped GEMM", T), absl::StrFormat("%.2f", tm / ts), "",
          true);
    }
    routed.TakeRoutingStats();
  }
}

double DecodeTokensPerSecond(LlamaForCausalLM& model, int64_t vocab) {
  GenerateOptions g;
  g.max_new_tokens = absl::GetFlag(FLAGS_decode_tokens);
  std::vector<int64_t> prompt;
  for (int64_t i = 0; i < 128; ++i) prompt.push_back((i * 7919 + 13) % vocab);
  // The first run warms the allocator and kernels.
  absl::StatusOr<GenerateResult> r = Generate(model, {prompt}, g);
  if (r.ok()) r = Generate(model, {prompt}, g);
  if (!r.ok()) {
    std::fprintf(stderr, "decode: %s\n", r.status().ToString().c_str());
    return 0;
  }
  return r->DecodeTokensPerSecond();
}

void Decode(const c10::Device device) {
  LlamaConfig cfg;  // Llama 3.1 8B's shapes
  cfg.hidden_size = absl::GetFlag(FLAGS_hidden);
  cfg.intermediate_size = cfg.hidden_size * 7 / 2;
  cfg.num_hidden_layers = absl::GetFlag(FLAGS_decode_layers);
  const at::TensorOptions o = at::TensorOptions().dtype(at::kBFloat16).device(device);
  at::manual_seed(3);
  double dense_tps = 0, routed_tps = 0, segment_tps = 0;
  {
    LlamaForCausalLM dense(cfg, o);
    FillRandom(dense);
    dense_tps = DecodeTokensPerSecond(dense, cfg.vocab_size);
  }
  {
    MoeConfig moe;
    moe.expert_intermediate_size = cfg.intermediate_size / moe.num_frozen_experts;
    LlamaForCausalLM routed(cfg, o, MoeFeedForwardFactory(moe, MoeLayerOptions()));
    FillRandom(routed);
    routed_tps = DecodeTokensPerSecond(routed, cfg.vocab_size);
    if (HasGroupedGemmKernel(device)) {
      SetGroupedDispatchAllowed(false);
      segment_tps = DecodeTokensPerSecond(routed, cfg.vocab_size);
      SetGroupedDispatchAllowed(true);
    }
  }
  const std::string shape = absl::StrFormat("%d layers", cfg.num_hidden_layers);
  Row("decode", "dense tokens/s, bf16, " + shape, absl::StrFormat("%.1f", dense_tps), "", dense_tps > 0);
  Row("decode", "routed MoE tokens/s, bf16, " + shape, absl::StrFormat("%.1f", routed_tps), "", routed_tps > 0);
  const double ratio = dense_tps > 0 ? routed_tps / dense_tps : 0;
  Row("decode", "routed / dense", absl::StrFormat("%.2f", ratio), ">= 0.8", ratio >= 0.8);
  if (segment_tps > 0) {
    Row("decode", "routed speed, segment loop / grouped GEMM", absl::StrFormat("%.2f", segment_tps / routed_tps), "",
        true);
  }
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  absl::StatusOr<c10::Device> device = llama_moe::ParseDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) {
    std::fprintf(stderr, "gpu_check: %s\n", std::string(device.status().message()).c_str());
    return 2;
  }
  std::printf("| section  | %-48s | %14s | %-12s | %-4s |\n", "check", "value", "goal", "");
  std::printf("|----------|-%s-|-%s-|-%s-|-%s-|\n", std::string(48, '-').c_str(), std::string(14, '-').c_str(),
              std::string(12, '-').c_str(), std::string(4, '-').c_str());
  int failures = 0;
  try {
    const std::vector<std::string> sections = absl::StrSplit(absl::GetFlag(FLAGS_sections), ',', absl::SkipEmpty());
    for (const std::string& s : sections) {
      if (s == "parity") {
        failures += llama_moe::Parity(*device);
        failures += llama_moe::ModelParity(*device);
      } else if (s == "sync") {
        failures += llama_moe::HostSyncs(*device);
      } else if (s == "moe_ffn") {
        llama_moe::MoeFfn(*device);
      } else if (s == "decode") {
        llama_moe::Decode(*device);
      } else {
        std::fprintf(stderr, "gpu_check: unknown section '%s' (parity, sync, moe_ffn, decode)\n", s.c_str());
        return 2;
      }
    }
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    std::fprintf(stderr, "gpu_check: %s\n", what.substr(0, what.find('\n')).c_str());
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
