"""Data sets for the one trainer, by registry name (``registry``): paired scans (``paired``, with dose
augmentation and the scan-model contract ``preprocessing``), images, expression, toy points; their file readers and
the metadata vector. Builds on ``cdm4mi.io``, ``cdm4mi.cohort`` and ``cdm4mi.simulate``."""
