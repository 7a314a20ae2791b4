"""htr.train: build-side tools for synthetic handwriting and fine-tuning (needs torch)."""
