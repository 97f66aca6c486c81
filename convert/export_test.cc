#include "convert/export.h"

#include <ATen/ATen.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include "convert/converter.h"
#include "convert/gguf_file.h"
#include "convert/recipe.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/file_util.h"
#include "model/llama_layout.h"
#include "model/model_format.h"
#include "model/model_writer.h"
#include "model/test_util.h"
#include "model/tiny_llama.h"
#include "moe/moe_model.h"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;

std::string Dense() {
  const std::string dir = TestPath("dense");
  TinyLlamaOptions o;
  o.seed = 7;
  EXPECT_TRUE(WriteTinyLlama(dir, o).ok());
  return dir;
}

std::string Moe(const std::string& dense, const std::string& recipe) {
  const std::string out = TestPath("moe");
  ConvertOptions o;
  o.input_dir = dense;
  o.output_dir = out;
  o.recipe = *ParseRecipe(recipe + " dtype: \"float32\"", "test");
  EXPECT_TRUE(ConvertDenseToMoe(o).ok());
  return out;
}

at::Tensor Logits(const std::string& dir) {
  ModelLoadOptions o;
  o.dtype = DType::kF32;
  absl::StatusOr<LoadedModel> m = LoadModel(dir, o);
  EXPECT_TRUE(m.ok()) << m.status();
  at::NoGradGuard no_grad;
  return *m->model->Forward(at::tensor({1, 17, 300, 5, 42, 511, 0, 9}, at::kLong));
}

ExportOptions Mixtral(const std::string& model, const std::string& out) {
  ExportOptions o;
  o.model_dir = model;
  o.format = ExportFormat::kHfMixtral;
  o.output = out;
  return o;
}

TEST(ExportTest, HfMixtralReadsBackWithEqualLogits) {
  const std::string dense = Dense();
  for (const char* recipe : {"", "num_frozen_experts: 4 num_learned_experts: 2 top_k: 2"}) {
    const std::string moe = Moe(dense, recipe);
    const std::string out = TestPath("mixtral");
    absl::StatusOr<ExportStats> st = Export(Mixtral(moe, out));
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_TRUE(st->plan.exact);
    EXPECT_EQ(st->plan.dtype, "f32");
    std::string config = *ReadFileToString(JoinPath(out, "config.json"));
    EXPECT_THAT(config, HasSubstr("\"MixtralForCausalLM\""));
    EXPECT_THAT(config, HasSubstr("\"num_local_experts\""));
    const at::Tensor want = Logits(moe);
    const at::Tensor got = Logits(out);
    // The gate scale (K, a power of two) folds into w2 exactly: the same numbers in the same order.
    EXPECT_EQ((want - got).abs().max().item<double>(), 0.0) << recipe;
  }
}

TEST(ExportTest, HfMixtralRefusesWhatItCannotRepresent) {
  const std::string dense = Dense();
  absl::StatusOr<ExportStats> st = Export(Mixtral(dense, TestPath("never")));
  EXPECT_THAT(st.status().message(), HasSubstr("hf_mixtral holds MoE models only"));
  // gate scale 3 (top-3): folding it into w2 would round.
  const std::string moe3 = Moe(dense, "top_k: 3");
  const std::string out = TestPath("never");
  st = Export(Mixtral(moe3, out));
  EXPECT_THAT(st.status().message(), HasSubstr("exact only for a power of two"));
  EXPECT_FALSE(PathExists(out));
  const std::string sigmoid = Moe(dense, "score_function: SIGMOID");
  st = Export(Mixtral(sigmoid, out));
  EXPECT_THAT(st.status().message(), HasSubstr("scores experts with sigmoid"));
  EXPECT_FALSE(PathExists(out));
}

TEST(ExportTest, ExistingOutputNeedsOverwrite) {
  const std::string moe = Moe(Dense(), "");
  const std::string out = TestPath("mixtral");
  ASSERT_TRUE(Export(Mixtral(moe, out)).ok());
  EXPECT_THAT(Export(Mixtral(moe, out)).status().message(), HasSubstr("pass --overwrite"));
  ExportOptions o = Mixtral(moe, out);
  o.overwrite = true;
  EXPECT_TRUE(Export(o).ok());
}

TEST(ExportTest, Float16RefusesValuesBeyondItsRange) {
  // The tiny model with its embeddings scaled past 65504, rewritten through the checkpoint writer.
  const std::string dense = Dense();
  const std::string big = TestPath("big");
  auto ck = *Checkpoint::Open(dense);
  const LlamaConfig cfg = *ck->LoadConfig();
  const std::vector<TensorSpec> specs = LlamaTensorSpecs(cfg, DType::kF32);
  auto w = *CreateModelWriter(ModelFormat::kHfSafetensors, big, specs, {});
  for (const TensorSpec& spec : specs) {
    at::Tensor t = *ck->Get(spec.name);
    if (spec.name == "model.embed_tokens.weight") t = t * 1e6;
    ASSERT_TRUE(w->Write(spec.name, t).ok());
  }
  ASSERT_TRUE(w->CopyFile(JoinPath(dense, "config.json"), "config.json").ok());
  ASSERT_TRUE(w->Commit().ok());
  ExportOptions o;
  o.model_dir = big;
  o.format = ExportFormat::kGguf;
  o.output = JoinPath(TestPath("out"), "never.gguf");
  ASSERT_EQ(system(("mkdir -p " + o.output.substr(0, o.output.rfind('/'))).c_str()), 0);
  o.dtype = "f16";
  EXPECT_THAT(Export(o).status().message(), HasSubstr("beyond float16's range"));
  EXPECT_FALSE(PathExists(o.output));
  o.dtype = "bf16";
  EXPECT_TRUE(Export(o).ok());
}

TEST(ExportTest, FormatNames) {
  EXPECT_EQ(*ParseExportFormat("gguf"), ExportFormat::kGguf);
  EXPECT_EQ(*ParseExportFormat("hf_mixtral"), ExportFormat::kHfMixtral);
  EXPECT_THAT(ParseExportFormat("onnx").status().message(), HasSubstr("unknown export format 'onnx'"));
}

// A minimal GGUF reader for the writer's test: header, metadata of the types written, tensor table.
struct Reader {
  std::string b;
  size_t p = 0;
  template <typename T>
  T Get() {
    T v;
    std::memcpy(&v, b.data() + p, sizeof(T));
    p += sizeof(T);
    return v;
  }
  std::string Str() {
    const uint64_t n = Get<uint64_t>();
    std::string s = b.substr(p, n);
    p += n;
    return s;
  }
};

TEST(GgufWriterTest, WritesHeaderMetadataAndAlignedTensors) {
  const std::string path = JoinPath(TestPath("gguf"), "m.gguf");
  ASSERT_TRUE(RemoveAll(path).ok());
  ASSERT_EQ(system(("mkdir -p " + path.substr(0, path.rfind('/'))).c_str()), 0);
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetU32("llama.block_count", 3);
  w.SetF32("llama.rope.freq_base", 500000.0f);
  w.SetBool("tokenizer.ggml.add_bos_token", true);
  w.SetStringArray("tokenizer.ggml.tokens", {"a", "bc"});
  w.SetI32Array("tokenizer.ggml.token_type", {1, 3});
  w.AddTensor("b", GgufType::kF16, {3});     // 6 bytes: the next tensor starts at 32
  w.AddTensor("a", GgufType::kF32, {2, 5});  // GGUF stores dims innermost first: {5, 2}
  ASSERT_TRUE(w.Open(path, false).ok());
  EXPECT_FALSE(PathExists(path));  // only the temporary file exists before Commit
  const at::Tensor a = at::arange(10, at::kFloat).reshape({2, 5});
  EXPECT_THAT(w.WriteTensor("a", a.to(at::kHalf)).message(), HasSubstr("declared f32"));
  EXPECT_THAT(w.Commit().message(), HasSubstr("never written"));
  ASSERT_TRUE(w.WriteTensor("a", a).ok());
  ASSERT_TRUE(w.WriteTensor("b", at::tensor({1.0f, 2.0f, 3.0f}, at::kFloat).to(at::kHalf)).ok());
  ASSERT_TRUE(w.Commit().ok());

  std::ifstream in(path, std::ios::binary);
  Reader r{std::string(std::istreambuf_iterator<char>(in), {})};
  EXPECT_EQ(r.b.substr(0, 4), "GGUF");
  r.p = 4;
  EXPECT_EQ(r.Get<uint32_t>(), 3u);
  EXPECT_EQ(r.Get<uint64_t>(), 2u);  // tensors
  EXPECT_EQ(r.Get<uint64_t>(), 6u);  // key-value pairs
  EXPECT_EQ(r.Str(), "general.architecture");
  EXPECT_EQ(r.Get<uint32_t>(), 8u);
  EXPECT_EQ(r.Str(), "llama");
  EXPECT_EQ(r.Str(), "llama.block_count");
  EXPECT_EQ(r.Get<uint32_t>(), 4u);
  EXPECT_EQ(r.Get<uint32_t>(), 3u);
  EXPECT_EQ(r.Str(), "llama.rope.freq_base");
  EXPECT_EQ(r.Get<uint32_t>(), 6u);
  EXPECT_EQ(r.Get<float>(), 500000.0f);
  EXPECT_EQ(r.Str(), "tokenizer.ggml.add_bos_token");
  EXPECT_EQ(r.Get<uint32_t>(), 7u);
  EXPECT_EQ(r.Get<uint8_t>(), 1);
  EXPECT_EQ(r.Str(), "tokenizer.ggml.tokens");
  EXPECT_EQ(r.Get<uint32_t>(), 9u);
  EXPECT_EQ(r.Get<uint32_t>(), 8u);
  EXPECT_EQ(r.Get<uint64_t>(), 2u);
  EXPECT_EQ(r.Str(), "a");
  EXPECT_EQ(r.Str(), "bc");
  EXPECT_EQ(r.Str(), "tokenizer.ggml.token_type");
  EXPECT_EQ(r.Get<uint32_t>(), 9u);
  EXPECT_EQ(r.Get<uint32_t>(), 5u);
  EXPECT_EQ(r.Get<uint64_t>(), 2u);
  EXPECT_EQ(r.Get<int32_t>(), 1);
  EXPECT_EQ(r.Get<int32_t>(), 3);
  EXPECT_EQ(r.Str(), "b");
  EXPECT_EQ(r.Get<uint32_t>(), 1u);
  EXPECT_EQ(r.Get<uint64_t>(), 3u);
  EXPECT_EQ(r.Get<uint32_t>(), 1u);  // F16
  EXPECT_EQ(r.Get<uint64_t>(), 0u);
  EXPECT_EQ(r.Str(), "a");
  EXPECT_EQ(r.Get<uint32_t>(), 2u);
  EXPECT_EQ(r.Get<uint64_t>(), 5u);
  EXPECT_EQ(r.Get<uint64_t>(), 2u);
  EXPECT_EQ(r.Get<uint32_t>(), 0u);  // F32
  EXPECT_EQ(r.Get<uint64_t>(), 32u);
  const size_t data = (r.p + kGgufAlignment - 1) / kGgufAlignment * kGgufAlignment;
  ASSERT_EQ(r.b.size(), data + 32 + 64);  // each tensor padded to the alignment, the last too
  EXPECT_EQ(std::memcmp(r.b.data() + data + 32, a.data_ptr(), 40), 0);
  EXPECT_EQ(r.b.substr(data + 6, 26), std::string(26, '\0'));  // padding reads as zeros
}

TEST(GgufWriterTest, UncommittedWriterLeavesNothing) {
  const std::string dir = TestPath("gguf");
  ASSERT_EQ(system(("mkdir -p " + dir).c_str()), 0);
  const std::string path = JoinPath(dir, "m.gguf");
  {
    GgufWriter w;
    w.AddTensor("a", GgufType::kF32, {2});
    ASSERT_TRUE(w.Open(path, false).ok());
  }
  EXPECT_EQ(system(("test -z \"$(ls -A " + dir + ")\"").c_str()), 0);
  ASSERT_TRUE(WriteStringToFile(path, "x").ok());
  GgufWriter w;
  EXPECT_THAT(w.Open(path, false).message(), HasSubstr("pass --overwrite"));
}

}  // namespace
}  // namespace llama_moe
