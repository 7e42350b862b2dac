"""Training: the one loop, its resume state, numeric precision, multi-process training."""
