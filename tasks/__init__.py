"""One module per task; `run.py task=<name>` imports `tasks.<name>` and uses its `Task` class."""
