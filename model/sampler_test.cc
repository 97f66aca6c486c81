#include "model/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace llama_moe {
namespace {

// Slow reference: sort all ids by (probability desc, id asc), take the prefix reaching top_p.
std::vector<int64_t> SortedTopP(const std::vector<double>& probs, double top_p) {
  std::vector<int64_t> ids(probs.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
  });
  std::vector<int64_t> kept;
  double mass = 0;
  for (int64_t id : ids) {
    kept.push_back(id);
    mass += probs[id];
    if (mass >= top_p) break;
  }
  return kept;
}

std::vector<double> RandomProbs(int64_t n, std::mt19937_64& rng, bool with_ties) {
  std::exponential_distribution<double> e(1.0);
  std::vector<double> p(n);
  for (auto& x : p) x = with_ties ? std::floor(e(rng) * 3) + 1 : std::pow(e(rng), 3);
  const double total = std::accumulate(p.begin(), p.end(), 0.0);
  for (auto& x : p) x /= total;
  return p;
}

TEST(SamplerTest, TopPMatchesSortedReference) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t n = 1 + rng() % 500;
    const std::vector<double> probs = RandomProbs(n, rng, trial % 2 == 0);
    for (double top_p : {1e-9, 0.1, 0.5, 0.9, 0.999, 1.0}) {
      EXPECT_EQ(TopPCandidates(probs, top_p), SortedTopP(probs, top_p)) << "n=" << n << " top_p=" << top_p;
    }
  }
}

TEST(SamplerTest, ArgmaxTakesFirstOfTies) {
  const std::vector<float> v = {0.5f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(Argmax(v.data(), 4), 1);
}

TEST(SamplerTest, GreedyAtZeroTemperature) {
  std::mt19937_64 rng(3);
  std::normal_distribution<float> g;
  std::vector<float> logits(100);
  for (auto& x : logits) x = g(rng);
  Sampler s({0.0, 0.9, 1});
  EXPECT_EQ(s.Sample(logits.data(), 100), Argmax(logits.data(), 100));
}

TEST(SamplerTest, TinyTopPIsGreedy) {
  std::mt19937_64 rng(4);
  std::normal_distribution<float> g;
  std::vector<float> logits(1000);
  Sampler s({1.0, 1e-6, 9});
  for (int i = 0; i < 50; ++i) {
    for (auto& x : logits) x = g(rng);
    EXPECT_EQ(s.Sample(logits.data(), 1000), Argmax(logits.data(), 1000));
  }
}

TEST(SamplerTest, SameSeedSameTokens) {
  std::vector<float> logits = {1.0f, 0.5f, 0.2f, -0.3f, 0.9f, 0.0f};
  Sampler a({0.8, 0.95, 123}), b({0.8, 0.95, 123}), c({0.8, 0.95, 124});
  std::vector<int64_t> ta, tb, tc;
  for (int i = 0; i < 100; ++i) {
    ta.push_back(a.Sample(logits.data(), 6));
    tb.push_back(b.Sample(logits.data(), 6));
    tc.push_back(c.Sample(logits.data(), 6));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

// Empirical frequencies against softmax(logits / T) restricted to the nucleus. 40000 draws: the
// standard error of a frequency is at most sqrt(0.25 / 40000) = 0.0025, so 0.015 is 6 sigma.
TEST(SamplerTest, FrequenciesFollowTemperatureAndTopP) {
  const std::vector<float> logits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f};
  for (double top_p : {1.0, 0.8}) {
    const double temperature = 0.7;
    std::vector<double> p(logits.size());
    for (size_t i = 0; i < p.size(); ++i) p[i] = std::exp(logits[i] / temperature);
    const double z = std::accumulate(p.begin(), p.end(), 0.0);
    for (auto& x : p) x /= z;
    std::vector<double> expected(p.size(), 0.0);
    const std::vector<int64_t> kept = SortedTopP(p, top_p);
    double mass = 0;
    for (int64_t i : kept) mass += p[i];
    for (int64_t i : kept) expected[i] = p[i] / mass;

    Sampler s({temperature, top_p, 77});
    std::vector<double> freq(p.size(), 0.0);
    const int n = 40000;
    for (int i = 0; i < n; ++i) freq[s.Sample(logits.data(), logits.size())] += 1.0 / n;
    for (size_t i = 0; i < p.size(); ++i) EXPECT_NEAR(freq[i], expected[i], 0.015) << "top_p " << top_p << " id " << i;
  }
}

}  // namespace
}  // namespace llama_moe
