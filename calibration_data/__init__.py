"""Handwriting lines that `htr-export --int8` calibrates on by default (see README.md here)."""
