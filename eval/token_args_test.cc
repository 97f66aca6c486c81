#include "eval/token_args.h"

#include <gtest/gtest.h>

namespace llama_moe {
namespace {

TEST(TokenArgsTest, CommasAndWhitespace) {
  auto ids = ParseTokenIds(" 128000, 9906\n1917\t,5 ", "--tokens");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int64_t>{128000, 9906, 1917, 5}));
  EXPECT_EQ(JoinTokenIds(*ids), "128000,9906,1917,5");
}

TEST(TokenArgsTest, ErrorsNameTheSource) {
  auto bad = ParseTokenIds("1,x2", "ids.txt");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("ids.txt"), std::string::npos);
  EXPECT_NE(bad.status().message().find("x2"), std::string::npos);
  EXPECT_FALSE(ParseTokenIds(" , ", "--tokens").ok());
}

}  // namespace
}  // namespace llama_moe
