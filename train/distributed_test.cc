// The communicator through the real Gloo process group: two ranks as threads of one process,
// rendezvous over a TCPStore on a free loopback port.
#include "train/distributed.h"

#include <ATen/ATen.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

TEST(CommunicatorTest, SumValuesAddsHostValuesOfEveryRankOnTheCommunicatorsDevice) {
  const int port = FreePort();
  std::vector<std::vector<double>> got(2);
  std::vector<std::string> backend(2);
  std::vector<c10::Device> device(2, c10::Device(c10::kCUDA));
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      DistEnv env;
      env.rank = r;
      env.world_size = 2;
      env.master_port = port;
      absl::StatusOr<std::unique_ptr<Communicator>> comm = Communicator::Create(env, c10::kCPU, std::chrono::seconds(30));
      ASSERT_TRUE(comm.ok()) << comm.status();
      backend[r] = (*comm)->backend();
      device[r] = (*comm)->device();
      absl::StatusOr<std::vector<double>> s = (*comm)->SumValues({1.5 + r, 1e15 * (r + 1), -0.25});
      ASSERT_TRUE(s.ok()) << s.status();
      got[r] = *s;
    });
  }
  for (std::thread& t : ranks) t.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(backend[r], "gloo");
    EXPECT_EQ(device[r], c10::Device(c10::kCPU));
    // float64 all the way: 3e15 + 0 and the quarter survive exactly.
    EXPECT_EQ(got[r], (std::vector<double>{4.0, 3e15, -0.5}));
  }
}

TEST(CommunicatorTest, SingleProcessSumValuesReturnsTheValues) {
  absl::StatusOr<std::unique_ptr<Communicator>> comm = Communicator::Create(DistEnv(), c10::kCPU, std::chrono::seconds(5));
  ASSERT_TRUE(comm.ok());
  EXPECT_EQ(*(*comm)->SumValues({2.0, -1.0}), (std::vector<double>{2.0, -1.0}));
  EXPECT_EQ((*comm)->device(), c10::Device(c10::kCPU));
}

#if !defined(LLAMA_MOE_WITH_CUDA)
TEST(CommunicatorTest, CudaWithoutACudaLibTorchIsAClearError) {
  absl::StatusOr<std::unique_ptr<Communicator>> comm =
      Communicator::Create(DistEnv(), c10::Device(c10::kCUDA, 0), std::chrono::seconds(5));
  ASSERT_FALSE(comm.ok());
  EXPECT_THAT(std::string(comm.status().message()), HasSubstr("CUDA LibTorch"));
}
#endif

TEST(CommunicatorTest, APeerThatNeverJoinsIsAnErrorWithinTheTimeout) {
  DistEnv env;
  env.rank = 1;  // rank 0 (the store's server) never starts
  env.world_size = 2;
  env.master_port = FreePort();
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<Communicator>> comm = Communicator::Create(env, c10::kCPU, std::chrono::seconds(2));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(comm.ok());
  EXPECT_THAT(std::string(comm.status().message()), HasSubstr("cannot join the process group"));
  EXPECT_LT(seconds, 30);
}

}  // namespace
}  // namespace llama_moe
