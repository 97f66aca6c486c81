// Which tensors a training run trains: the one rule the trainer and the memory plan share.
//
// Example:
//   const bool router = Trains(MoeTensorRoleOf("model.layers.0.mlp.router.weight"),
//                              TrainConfig::LEARNED_EXPERTS_AND_ROUTERS);  // true
#ifndef LLAMA_MOE_TRAIN_TRAINABLE_H_
#define LLAMA_MOE_TRAIN_TRAINABLE_H_

#include "moe/moe_layout.h"
#include "train/train_config.pb.h"

namespace llama_moe {

// Frozen experts never train, nor do selection biases (the balancing update moves them); by
// default learned experts and router weights do; with ALL every other parameter too; LoRA
// adapters with ALL and the two LORA settings, the learned experts and routers with every
// setting but LORA_ADAPTERS.
inline bool Trains(MoeTensorRole role, TrainConfig::Trainable trainable) {
  switch (role) {
    case MoeTensorRole::kFrozenExpert:
    case MoeTensorRole::kRouterBias:
      return false;
    case MoeTensorRole::kLearnedExpert:
    case MoeTensorRole::kRouterWeight:
      return trainable != TrainConfig::LORA_ADAPTERS;
    case MoeTensorRole::kLoraAdapter:
      return trainable != TrainConfig::LEARNED_EXPERTS_AND_ROUTERS;
    case MoeTensorRole::kOther:
      break;
  }
  return trainable == TrainConfig::ALL;
}

// Whether the routers learn, and with them the selection biases move (the balancing update).
inline bool RoutersTrain(TrainConfig::Trainable trainable) { return trainable != TrainConfig::LORA_ADAPTERS; }

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_TRAINABLE_H_
