"""The task-agnostic training core: loop, optimizer and schedule, resume, checkpoints, metrics."""
