"""htr.export: build-side tools that turn a Hugging Face checkpoint into an htr bundle (needs torch)."""
