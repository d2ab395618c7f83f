"""Data-parallel training under ``accelerate launch``: see :mod:`textenv.distributed` (shared with the LM reward
model's trainer, ``rewardmodels.text.lm_reward.train_reward_model``)."""

from textenv.distributed import DataParallel, data_parallel

__all__ = ["DataParallel", "data_parallel"]
