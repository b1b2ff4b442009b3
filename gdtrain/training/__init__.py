"""One run's life: device, determinism, processes, tracking, checkpoints, the engine and the recipe that builds it."""
