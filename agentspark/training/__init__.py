"""Training learned drafters on one GPU (or the CPU, for tests): regenerate responses with the
target, train online against the target's live features, calibrate the confidence head."""
