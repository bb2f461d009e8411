"""Reading, recognising and writing decoder checkpoints."""
