"""Readers that turn published datasets into the sonosynth layout."""
