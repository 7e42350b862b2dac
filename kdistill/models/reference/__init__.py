"""The reference student's CPU fast path, fenced here: pixel-block batches, the fused
BatchNorm+ReLU+pool step, the block convolution and the inference form used for export."""
