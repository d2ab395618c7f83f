"""rewardmodels."""
