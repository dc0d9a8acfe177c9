"""Runs: from a config to finished run folders and back. The config schema and its
composition, the training loop that drives engine and probes, run folders and their records,
collecting, status, summaries, exports, the experiments registry and `bnlab reproduce`."""
