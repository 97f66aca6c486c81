// Unit tests of the tokenizer on small hand-made tokenizer files written by the test. The real
// Llama 3 vocabulary is tested end to end in //tests/tokenizer.
#include "model/tokenizer.h"

#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace llama_moe {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// GPT-2's byte -> character table, written out independently of tokenizer.cc.
std::string ByteLevel(absl::string_view bytes) {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const int cp = printable ? b : 256 + extra++;
      std::string s;
      if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
      } else {
        s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
      t[b] = s;
    }
    return t;
  }();
  std::string out;
  for (unsigned char c : bytes) out += table[c];
  return out;
}

// A tokenizer.json with all 256 bytes (id = byte value), the given merges (raw-byte pairs, in rank
// order; merged tokens get the next ids) and the Llama 3 specials at 1000 and 1009.
struct TinySpec {
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<std::string> extra_tokens;  // in the vocabulary without a merge
  bool ignore_merges = false;
  bool merges_as_pairs = false;  // [a, b] instead of "a b"
};

TinySpec WithMerges(std::vector<std::pair<std::string, std::string>> merges) {
  TinySpec spec;
  spec.merges = std::move(merges);
  return spec;
}

nlohmann::json TinyJson(const TinySpec& spec) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteLevel(std::string(1, static_cast<char>(b)))] = b;
  int next_id = 256;
  nlohmann::json merges = nlohmann::json::array();
  for (const auto& [l, r] : spec.merges) {
    if (!vocab.contains(ByteLevel(l + r))) vocab[ByteLevel(l + r)] = next_id++;
    if (spec.merges_as_pairs) {
      merges.push_back({ByteLevel(l), ByteLevel(r)});
    } else {
      merges.push_back(ByteLevel(l) + " " + ByteLevel(r));
    }
  }
  for (const auto& t : spec.extra_tokens) vocab[ByteLevel(t)] = next_id++;
  nlohmann::json json;
  json["version"] = "1.0";
  json["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges},
                   {"ignore_merges", spec.ignore_merges}};
  json["added_tokens"] = nlohmann::json::array(
      {{{"id", 1000}, {"content", "<|begin_of_text|>"}, {"special", true}},
       {{"id", 1001}, {"content", "<|end_of_text|>"}, {"special", true}},
       {{"id", 1009}, {"content", "<|eot_id|>"}, {"special", true}},
       {{"id", 1010}, {"content", "<|eot"}, {"special", true}}});
  nlohmann::json split;
  split["type"] = "Split";
  split["pattern"]["Regex"] = std::string(kLlama3Pattern);
  json["pre_tokenizer"]["type"] = "Sequence";
  json["pre_tokenizer"]["pretokenizers"] = nlohmann::json::array({split});
  return json;
}

std::string WriteFile(const std::string& name, const std::string& content) {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(dir != nullptr ? dir : "/tmp", "/", name);
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

std::unique_ptr<Tokenizer> Load(const TinySpec& spec, const std::string& name = "tiny.json") {
  auto tok = Tokenizer::FromFile(WriteFile(name, TinyJson(spec).dump()));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(tok).value() : nullptr;
}

int32_t Id(const Tokenizer& tok, absl::string_view token) {
  auto id = tok.TokenToId(token);
  EXPECT_TRUE(id.ok()) << id.status();
  return id.ok() ? *id : -1;
}

TEST(TokenizerTest, MergeOrderDecides) {
  const int a = 'a', c = 'c';
  auto ab_first = Load(WithMerges({{"a", "b"}, {"b", "c"}}), "ab_first.json");
  auto bc_first = Load(WithMerges({{"b", "c"}, {"a", "b"}}), "bc_first.json");
  ASSERT_NE(ab_first, nullptr);
  ASSERT_NE(bc_first, nullptr);
  EXPECT_THAT(ab_first->Encode("abc"), ElementsAre(Id(*ab_first, "ab"), c));
  EXPECT_THAT(bc_first->Encode("abc"), ElementsAre(a, Id(*bc_first, "bc")));
}

TEST(TokenizerTest, MergesChainAndEqualRanksGoLeftToRight) {
  TinySpec spec = WithMerges({{"l", "o"}, {"lo", "w"}, {"e", "r"}, {"low", "er"}, {"a", "a"}});
  spec.merges_as_pairs = true;
  auto tok = Load(spec);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("lower"), ElementsAre(Id(*tok, "lower")));
  EXPECT_THAT(tok->Encode("lowe"), ElementsAre(Id(*tok, "low"), 'e'));
  EXPECT_THAT(tok->Encode("aaa"), ElementsAre(Id(*tok, "aa"), 'a'));
  EXPECT_THAT(tok->Encode("aaaa"), ElementsAre(Id(*tok, "aa"), Id(*tok, "aa")));
  // " lower" is one pre-tokenizer piece, but no merge joins the space.
  EXPECT_THAT(tok->Encode(" lower"), ElementsAre(' ', Id(*tok, "lower")));
}

TEST(TokenizerTest, IgnoreMergesEmitsWholeTokens) {
  TinySpec spec = WithMerges({{"x", "y"}});
  spec.extra_tokens = {"xyz"};
  auto merging = Load(spec, "merging.json");
  spec.ignore_merges = true;
  auto whole = Load(spec, "whole.json");
  ASSERT_NE(merging, nullptr);
  ASSERT_NE(whole, nullptr);
  EXPECT_THAT(merging->Encode("xyz"), ElementsAre(Id(*merging, "xy"), 'z'));
  EXPECT_THAT(whole->Encode("xyz"), ElementsAre(Id(*whole, "xyz")));
}

TEST(TokenizerTest, EveryByteEncodesAndRoundTrips) {
  auto tok = Load({});
  ASSERT_NE(tok, nullptr);
  std::string all;
  for (int b = 0; b < 256; ++b) {
    const std::string byte(1, static_cast<char>(b));
    all += byte;
    EXPECT_THAT(tok->Encode(byte), ElementsAre(b)) << "byte " << b;
    EXPECT_EQ(*tok->IdToToken(b), byte);
  }
  // Invalid UTF-8 (0x80..0xFF alone) must survive the pre-tokenizer too.
  const std::vector<int32_t> ids = tok->Encode(all);
  EXPECT_EQ(ids.size(), 256u);
  EXPECT_EQ(*tok->Decode(ids), all);
}

TEST(TokenizerTest, SpecialTokens) {
  auto tok = Load(WithMerges({{"h", "i"}}));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->bos_id(), 1000);
  EXPECT_EQ(tok->eot_id(), 1009);
  EXPECT_THAT(tok->eos_ids(), ElementsAre(1001, 1009));
  EXPECT_EQ(tok->vocab_size(), 1011);
  EXPECT_TRUE(tok->IsSpecial(1009));
  EXPECT_FALSE(tok->IsSpecial('a'));
  const int32_t hi = Id(*tok, "hi");
  // Plain Encode treats special strings as text.
  std::vector<int32_t> plain = tok->Encode("hi<|eot_id|>");
  EXPECT_EQ(plain.front(), hi);
  EXPECT_THAT(plain, ::testing::Not(::testing::Contains(1009)));
  EXPECT_EQ(*tok->Decode(plain), "hi<|eot_id|>");
  // Leftmost-longest: "<|eot_id|>" wins over its prefix "<|eot".
  EXPECT_THAT(tok->EncodeWithSpecials("<|begin_of_text|>hi<|eot_id|>hi"),
              ElementsAre(1000, hi, 1009, hi));
  EXPECT_THAT(tok->EncodeWithSpecials("<|eothi"), ElementsAre(1010, hi));
  EXPECT_EQ(*tok->Decode({1000, hi, 1009}), "<|begin_of_text|>hi<|eot_id|>");
  EXPECT_EQ(*tok->TokenToId("<|eot_id|>"), 1009);
  EXPECT_EQ(tok->TokenToId("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST(TokenizerTest, DecodeOfUnknownIdFailsNamingIt) {
  auto tok = Load({});
  ASSERT_NE(tok, nullptr);
  for (int32_t bad : {-1, 500, 1011, 99999}) {  // 500 is a hole between the bytes and the specials
    auto text = tok->Decode({'a', bad});
    ASSERT_FALSE(text.ok()) << bad;
    EXPECT_THAT(text.status().message(), HasSubstr(absl::StrCat("token id ", bad)));
    EXPECT_FALSE(tok->IdToToken(bad).ok());
  }
}

TEST(TokenizerTest, PreTokenizerFollowsLlama3Regex) {
  auto tok = Load({});
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->PreTokenize("Hello world's 12345  \n\n x"),
              ElementsAre("Hello", " world", "'s", " ", "123", "45", "  \n\n", " x"));
  EXPECT_THAT(tok->PreTokenize("DON'T  stop\r\n"), ElementsAre("DON", "'T", " ", " stop", "\r\n"));
  EXPECT_THAT(tok->PreTokenize("a   b\t"), ElementsAre("a", "  ", " b", "\t"));
  EXPECT_THAT(tok->PreTokenize("x = {1};\n"), ElementsAre("x", " =", " {", "1", "};\n"));
  // Contractions are ASCII-only, as in tiktoken: U+017F (long s) is not a case variant of 's'.
  EXPECT_THAT(tok->PreTokenize("'\u017fx 'Sx"), ElementsAre("'\u017fx", " '", "Sx"));
  // U+180E is a format character, not a space (PCRE2's own \s would say otherwise).
  EXPECT_THAT(tok->PreTokenize("a\u180e b"), ElementsAre("a", "\u180e", " b"));
  EXPECT_THAT(tok->PreTokenize(""), ElementsAre());
}

// The obviously-correct BPE: repeatedly merge the leftmost pair of lowest rank.
std::vector<std::string> NaiveBpe(const std::string& word,
                                  const std::map<std::pair<std::string, std::string>, int>& ranks) {
  std::vector<std::string> parts;
  for (char c : word) parts.emplace_back(1, c);
  while (true) {
    int best = -1;
    size_t best_pos = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      auto it = ranks.find({parts[i], parts[i + 1]});
      if (it != ranks.end() && (best < 0 || it->second < best)) {
        best = it->second;
        best_pos = i;
      }
    }
    if (best < 0) return parts;
    parts[best_pos] += parts[best_pos + 1];
    parts.erase(parts.begin() + best_pos + 1);
  }
}

TEST(TokenizerTest, FastMergeMatchesNaiveBpeOnRandomWords) {
  std::mt19937 rng(1234);
  // Random merges over {a,b,c}, including several pairs that make the same token.
  TinySpec spec;
  std::map<std::pair<std::string, std::string>, int> ranks;
  std::vector<std::string> tokens = {"a", "b", "c"};
  while (spec.merges.size() < 80) {
    const std::string& l = tokens[rng() % tokens.size()];
    const std::string& r = tokens[rng() % tokens.size()];
    if (l.size() + r.size() > 7 || ranks.count({l, r})) continue;
    ranks[{l, r}] = static_cast<int>(spec.merges.size());
    spec.merges.emplace_back(l, r);
    if (std::find(tokens.begin(), tokens.end(), l + r) == tokens.end()) tokens.push_back(l + r);
  }
  auto tok = Load(spec);
  ASSERT_NE(tok, nullptr);
  for (bool cache : {true, false}) {
    tok->SetWordCacheCapacity(cache ? 64 : 0);  // 64: the cache also gets cleared when full
    std::mt19937 words(99);
    for (int i = 0; i < 3000; ++i) {
      std::string word;
      const int len = 1 + words() % 40;
      for (int k = 0; k < len; ++k) word.push_back("abc"[words() % 3]);
      std::vector<int32_t> expected;
      for (const auto& part : NaiveBpe(word, ranks)) expected.push_back(Id(*tok, part));
      ASSERT_EQ(tok->Encode(word), expected) << word << " cache " << cache;
    }
  }
}

TEST(TokenizerTest, ConcurrentEncodesAgree) {
  auto tok = Load(WithMerges({{"t", "h"}, {"th", "e"}, {" ", "the"}}));
  ASSERT_NE(tok, nullptr);
  tok->SetWordCacheCapacity(8);  // small: threads clear and refill it under each other
  std::vector<std::string> texts;
  for (int i = 0; i < 50; ++i) texts.push_back(absl::StrCat("the theme ", i, " thethe ", i * 7, " other"));
  std::vector<std::vector<int32_t>> expected;
  for (const auto& t : texts) expected.push_back(tok->Encode(t));
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 50; ++rep) {
        for (size_t i = 0; i < texts.size(); ++i) failures[t] += tok->Encode(texts[i]) != expected[i];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_THAT(failures, ElementsAre(0, 0, 0, 0));
}

TEST(TokenizerTest, TiktokenFormatMatchesJson) {
  TinySpec spec = WithMerges({{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"o", " "}});
  spec.ignore_merges = true;
  auto json_tok = Load(spec);
  ASSERT_NE(json_tok, nullptr);
  // Ranks = ids, merged tokens after the bytes in merge order, as in Llama 3.
  std::string ranks;
  for (int32_t id = 0; id < 260; ++id) {
    absl::StrAppend(&ranks, absl::Base64Escape(*json_tok->IdToToken(id)), " ", id, "\n");
  }
  auto tik = Tokenizer::FromFile(WriteFile("tiny.tiktoken", ranks));
  ASSERT_TRUE(tik.ok()) << tik.status();
  for (const char* text : {"hello world", "hellhell o", "", "\xff\xfe", "héllo"}) {
    EXPECT_EQ((*tik)->Encode(text), json_tok->Encode(text)) << text;
  }
  // Meta's 256 specials follow the base ranks.
  EXPECT_EQ((*tik)->bos_id(), 260);
  EXPECT_EQ((*tik)->eot_id(), 260 + 9);
  EXPECT_THAT((*tik)->eos_ids(), ElementsAre(261, 269));
  EXPECT_EQ(*(*tik)->TokenToId("<|start_header_id|>"), 266);
  EXPECT_EQ(*(*tik)->TokenToId("<|reserved_special_token_4|>"), 268);
  EXPECT_EQ(*(*tik)->TokenToId("<|reserved_special_token_250|>"), 260 + 255);
  EXPECT_EQ((*tik)->vocab_size(), 260 + 256);
  EXPECT_THAT((*tik)->EncodeWithSpecials("<|eot_id|>"), ElementsAre(269));
}

// Each malformed file fails with a message naming the file and the problem.
TEST(TokenizerTest, MalformedFilesFailWithMessages) {
  auto expect_error = [](const std::string& name, const std::string& content,
                         const std::string& what) {
    const std::string path = WriteFile(name, content);
    auto tok = Tokenizer::FromFile(path);
    ASSERT_FALSE(tok.ok()) << name;
    EXPECT_THAT(tok.status().message(), HasSubstr(path)) << name;
    EXPECT_THAT(tok.status().message(), HasSubstr(what)) << name;
  };
  const nlohmann::json good = TinyJson(WithMerges({{"a", "b"}}));

  auto missing = Tokenizer::FromFile("/nonexistent/tokenizer.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("/nonexistent/tokenizer.json"));

  expect_error("empty.json", "  \n", "empty");
  expect_error("not_json.json", "{\"model\": [1, 2", "not valid JSON");
  expect_error("array.json", "[1]", "line 1");  // not '{': read as tiktoken ranks
  nlohmann::json j = good;
  j["model"].erase("vocab");
  expect_error("no_vocab.json", j.dump(), "model.vocab");
  j = good;
  j["model"]["merges"] = {"a q"};
  expect_error("unknown_merge.json", j.dump(), "model.merges[0]");
  j["model"]["merges"] = {"a b c"};
  expect_error("three_part_merge.json", j.dump(), "not two tokens");
  j["model"]["merges"] = {42};
  expect_error("numeric_merge.json", j.dump(), "model.merges[0]");
  j = good;
  j["model"]["vocab"]["zz"] = "seven";
  expect_error("string_id.json", j.dump(), "non-integer id");
  j = good;
  j["model"]["vocab"]["zz"] = 1 << 30;
  expect_error("huge_id.json", j.dump(), "outside");
  j = good;
  j["model"]["vocab"]["zz"] = 5;
  expect_error("duplicate_id.json", j.dump(), "id 5");
  j = good;
  j["model"]["vocab"].erase(ByteLevel("\n"));
  expect_error("missing_byte.json", j.dump(), "0x0A");
  j = good;
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+";
  expect_error("other_regex.json", j.dump(), "not Llama 3's");
  j = good;
  j["added_tokens"][0]["special"] = "yes";
  expect_error("special_not_bool.json", j.dump(), "unexpected JSON structure");
  j = good;
  j["pre_tokenizer"]["pretokenizers"][0]["type"] = 7;
  expect_error("type_not_string.json", j.dump(), "unexpected JSON structure");
  j = good;
  j["added_tokens"] = {{{"content", "<x>"}}};
  expect_error("added_without_id.json", j.dump(), "added_tokens[0]");

  std::string ranks;
  for (int b = 0; b < 256; ++b) {
    absl::StrAppend(&ranks, absl::Base64Escape(std::string(1, static_cast<char>(b))), " ", b, "\n");
  }
  expect_error("bad_base64.tiktoken", "YQ== 0\n!!!* 1\n", "line 2: invalid base64");
  expect_error("bad_rank.tiktoken", ranks + "YWI= x\n", "line 257: invalid rank");
  expect_error("three_fields.tiktoken", ranks + "YWI= 256 7\n", "line 257");
  expect_error("short.tiktoken", "YQ== 0\n", "no token for the byte 0x00");
  expect_error("twice.tiktoken", ranks + "YQ== 300\n", "appears twice");
  // The complete rank file loads: the errors above come from the one bad line each.
  EXPECT_TRUE(Tokenizer::FromFile(WriteFile("good.tiktoken", ranks)).ok());
}

}  // namespace
}  // namespace llama_moe
