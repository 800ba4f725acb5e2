"""Framework-independent building blocks: the task system and its storage."""
