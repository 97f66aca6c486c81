// //eval:generate: continues a prompt with a Llama model and reports prefill and decode speed.
//
//   bazel run //eval:generate -- --model models/tiny --prompt "The capital of France is"
//   bazel run //eval:generate -- --model models/tiny --tokens 128000,791,6864 --max_new_tokens 16
//   bazel run //eval:generate -- --model DIR --prompt "Hi!" --chat --temperature 0.7 --top_p 0.9
//   bazel run //eval:generate -- --model MOE_DIR --tokens 128000,9906 --offload mmap --expert_cache 2
#include <ATen/Parallel.h>

#include <algorithm>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "eval/token_args.h"
#include "model/chat_template.h"
#include "model/file_util.h"
#include "model/generate.h"
#include "model/heap_policy.h"
#include "model/llama_model.h"
#include "model/main_util.h"
#include "model/status_macros.h"
#include "model/tokenizer.h"
#include "moe/expert_offload.h"
#include "moe/moe_model.h"

ABSL_FLAG(std::string, model, "", "model directory (config.json, safetensors, tokenizer.json)");
ABSL_FLAG(std::string, prompt, "", "prompt text (needs tokenizer.json in the model directory)");
ABSL_FLAG(std::string, tokens, "", "prompt as token ids, e.g. 128000,9906");
ABSL_FLAG(bool, chat, false, "wrap --prompt in the Llama 3 chat format as a user turn");
ABSL_FLAG(std::string, system, "", "with --chat: a system message");
ABSL_FLAG(int64_t, max_new_tokens, 128, "tokens to generate at most");
ABSL_FLAG(double, temperature, 0.0, "sampling temperature; 0 is greedy");
ABSL_FLAG(double, top_p, 1.0, "nucleus sampling mass in (0, 1]");
ABSL_FLAG(uint64_t, seed, 0, "sampling seed");
ABSL_FLAG(std::string, dtype, "", "compute dtype: float32 or bfloat16 (default: the checkpoint's)");
ABSL_FLAG(std::string, device, "cpu", "device, e.g. cpu, cuda, cuda:1");
ABSL_FLAG(int64_t, max_context, 0, "context cap below max_position_embeddings; 0: none");
ABSL_FLAG(std::string, routing, "routed", "MoE models: identity, learned_only or routed (ignored for dense models)");
ABSL_FLAG(int, threads, 0, "intra-op threads; 0: LibTorch's default");
ABSL_FLAG(std::string, offload, "none",
          "MoE models, routed mode: none (all experts in memory), mmap (experts read from the safetensors "
          "files on demand) or ram (all experts in host memory, copied to the device on demand)");
ABSL_FLAG(int64_t, expert_cache, 2, "with --offload: experts per layer cached on the device");
ABSL_FLAG(bool, warmup, false,
          "first run the prompt and one decode step untimed, so that the timings are steady-state speed (the "
          "first pass pays one-time costs such as oneDNN's kernel generation); with --offload the cache "
          "statistics include it");

namespace llama_moe {
namespace {

struct Options {
  std::string model_dir;
  std::string prompt;
  std::string tokens;
  bool chat = false;
  std::string system;
  std::optional<DType> dtype;
  std::string device;
  std::string routing = "routed";
  std::optional<ExpertOffloadOptions> offload;  // unset: --offload none
  GenerateOptions generate;
  bool warmup = false;
};

absl::StatusOr<Options> FlagsToOptions() {
  Options o;
  if (absl::GetFlag(FLAGS_model).empty()) return MissingFlag("model");
  o.model_dir = ResolveUserPath(absl::GetFlag(FLAGS_model));
  o.prompt = absl::GetFlag(FLAGS_prompt);
  o.tokens = absl::GetFlag(FLAGS_tokens);
  if (o.prompt.empty() == o.tokens.empty()) {
    return absl::InvalidArgumentError("give exactly one of --prompt and --tokens");
  }
  o.chat = absl::GetFlag(FLAGS_chat);
  o.system = absl::GetFlag(FLAGS_system);
  if (o.chat && o.prompt.empty()) return absl::InvalidArgumentError("--chat needs a text --prompt");
  if (!absl::GetFlag(FLAGS_dtype).empty()) {
    ASSIGN_OR_RETURN(o.dtype, ParseFloatDTypeFlag(absl::GetFlag(FLAGS_dtype)), "--dtype");
  }
  o.device = absl::GetFlag(FLAGS_device);
  o.routing = absl::GetFlag(FLAGS_routing);
  if (absl::GetFlag(FLAGS_offload) != "none") {
    ExpertOffloadOptions off;
    ASSIGN_OR_RETURN(off.source, ParseOffloadSource(absl::GetFlag(FLAGS_offload)), "--offload (none, mmap or ram)");
    off.cache_experts = absl::GetFlag(FLAGS_expert_cache);
    if (off.cache_experts < 1) return absl::InvalidArgumentError("--expert_cache must be at least 1");
    if (o.routing != "routed") return absl::InvalidArgumentError("--offload needs --routing routed");
    o.offload = off;
  }
  o.generate.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  o.generate.sampling.temperature = absl::GetFlag(FLAGS_temperature);
  o.generate.sampling.top_p = absl::GetFlag(FLAGS_top_p);
  o.generate.sampling.seed = absl::GetFlag(FLAGS_seed);
  o.generate.max_context = absl::GetFlag(FLAGS_max_context);
  o.warmup = absl::GetFlag(FLAGS_warmup);
  return o;
}

absl::Status Run(const Options& o) {
  LlamaLoadOptions load;
  load.dtype = o.dtype;
  ASSIGN_OR_RETURN(load.device, ParseDevice(o.device));
  std::unique_ptr<Tokenizer> tokenizer;
  const std::string tokenizer_path = JoinPath(o.model_dir, "tokenizer.json");
  if (!o.prompt.empty() || PathExists(tokenizer_path)) {
    ASSIGN_OR_RETURN(tokenizer, Tokenizer::FromFile(tokenizer_path), "text prompts need the tokenizer");
  }
  ModelLoadOptions mo;
  mo.dtype = load.dtype;
  mo.device = load.device;
  mo.map_weights = true;  // inference: parameters stored in the compute dtype are mapped, not copied
  mo.prefault_weights = true;  // read at load, so that the prefill's timing is the forward pass's
  ASSIGN_OR_RETURN(mo.moe.mode, ParseRoutingMode(o.routing), "--routing");
  mo.moe.routing_stats = false;  // generation reports no expert loads
  std::shared_ptr<LlamaForCausalLM> model;
  std::shared_ptr<ExpertProvider> experts;  // set with --offload
  if (o.offload) {
    OffloadLoadOptions oo;
    oo.dtype = mo.dtype;
    oo.device = mo.device;
    oo.offload = *o.offload;
    ASSIGN_OR_RETURN(OffloadedModel loaded, LoadOffloadedModel(o.model_dir, oo));
    model = loaded.model;
    experts = loaded.experts;
  } else {
    ASSIGN_OR_RETURN(LoadedModel loaded, LoadModel(o.model_dir, mo));
    model = loaded.model;
  }

  std::vector<int64_t> prompt;
  if (!o.tokens.empty()) {
    ASSIGN_OR_RETURN(prompt, ParseTokenIds(o.tokens, "--tokens"));
  } else if (o.chat) {
    std::vector<ChatMessage> chat;
    if (!o.system.empty()) chat.push_back({"system", o.system});
    chat.push_back({"user", o.prompt});
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, EncodeLlama3Chat(*tokenizer, chat, true));
    prompt.assign(ids.begin(), ids.end());
  } else {
    // HF's Llama 3 tokenizer adds <|begin_of_text|> to a plain prompt.
    if (tokenizer->bos_id()) prompt.push_back(*tokenizer->bos_id());
    for (int32_t id : tokenizer->Encode(o.prompt)) prompt.push_back(id);
  }

  GenerateOptions gen = o.generate;
  ASSIGN_OR_RETURN(gen.eos_token_ids, LoadEosTokenIds(o.model_dir, model->config()));
  // A chat turn ends with <|eot_id|>, which base-model configs may not list.
  if (o.chat && tokenizer->eot_id()) gen.eos_token_ids.push_back(*tokenizer->eot_id());

  if (o.warmup) {
    GenerateOptions warm = gen;
    warm.max_new_tokens = std::min<int64_t>(gen.max_new_tokens, 2);
    RETURN_IF_ERROR(Generate(*model, {prompt}, warm).status(), "warm-up");
  }
  ASSIGN_OR_RETURN(GenerateResult r, Generate(*model, {prompt}, gen));
  const std::vector<int64_t>& out = r.tokens[0];
  if (tokenizer != nullptr) {
    std::vector<int32_t> text_ids;
    for (int64_t id : out) {
      if (!tokenizer->IsSpecial(static_cast<int32_t>(id))) text_ids.push_back(static_cast<int32_t>(id));
    }
    ASSIGN_OR_RETURN(std::string text, tokenizer->Decode(text_ids));
    if (o.tokens.empty()) {
      std::cout << text << std::endl;
    } else {
      std::cout << "tokens: " << JoinTokenIds(out) << "\ntext: " << text << std::endl;
    }
  } else {
    std::cout << JoinTokenIds(out) << std::endl;
  }
  std::cerr << absl::StrFormat(
      "prefill: %d tokens in %.3f s (%.1f tokens/s)\n"
      "decode: %d tokens in %.3f s (%.1f tokens/s)\n"
      "stop: %s, dtype %s, device %s\n",
      r.prefill_tokens, r.prefill_seconds, r.PrefillTokensPerSecond(), r.decode_tokens,
      r.decode_seconds, r.DecodeTokensPerSecond(), StopReasonName(r.stop_reasons[0]),
      c10::toString(model->dtype()), model->device().str());
  if (experts != nullptr) {
    const ExpertCacheStats s = experts->stats();
    std::cerr << absl::StrFormat(
        "experts: %s, cache %d per layer, hit rate %.3f (%d hits, %d misses, %d prefetched, %d evicted)\n",
        OffloadSourceName(experts->options().source), experts->options().cache_experts, s.HitRate(), s.hits,
        s.misses, s.prefetches, s.evictions);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  llama_moe::ApplyInferenceHeapPolicy();
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_threads) > 0) at::set_num_threads(absl::GetFlag(FLAGS_threads));
  return llama_moe::RunMain(
      "generate",
      [] {
        ASSIGN_OR_RETURN(llama_moe::Options o, llama_moe::FlagsToOptions());
        return llama_moe::Run(o);
      });
}
