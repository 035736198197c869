"""The suite's shared parts: the Transformer core, the training loop, the leaderboard and small helpers."""
