"""The photos pipeline (seed 002): upload, queue, analysis by the configured provider,
status and results on the photo."""
