"""The engine: what trains a seed ensemble. Layers and norms, the model, the loss, the
optimisers and their schedules, MNIST, model-state helpers, evaluation and the members' log.
It imports nothing from the layers above it (measurement, runs, analysis)."""
