"""Data: readers, transform pipelines, datasets and noise simulation."""
