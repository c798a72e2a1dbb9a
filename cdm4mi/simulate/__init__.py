"""Simulated data: low-dose CT by projection-domain noise insertion (``ct_dose``), MRI Rician noise
(``mri_noise``), noise-level estimation (``noise_estimate``), CT phantoms (``phantom``) and the phantom
hospital of the demo (``hospital``). Builds on ``cdm4mi.io`` and ``cdm4mi.cohort``."""
