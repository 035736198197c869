"""The suite's shared parts: the Transformer core, its transformers integration, the training loop, the leaderboard.

Importing the package registers the suite's models with transformers' Auto classes, so that in any Python session
`import core` is all it takes for `AutoModelFor...from_pretrained(run_dir)` and `pipeline(task, model=run_dir)` to
open a run folder (elsewhere, `trust_remote_code=True` loads the modeling files the folder carries).
"""

from core.registry import register_auto_classes

register_auto_classes()
