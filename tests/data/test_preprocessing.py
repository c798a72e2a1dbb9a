"""The scan-model contract: what the data set stores in the checkpoint is what inference reads back."""

from __future__ import annotations

import numpy as np

from cdm4mi.data.preprocessing import ScanPreprocessing, slab_indices


def test_contract_round_trips_and_older_checkpoints_fall_back_to_their_config():
    contract = ScanPreprocessing(modality="MR", normalization={"name": "percentile"}, mode="2.5d", context_slices=2,
                                 patch_size=(48, 48), spacing_mm=(3.0, 1.0, 1.0), metadata=("noise_level",),
                                 noise_estimator="ct_flat_regions")
    assert ScanPreprocessing.from_dict(contract.to_dict()) == contract
    assert contract.context == 2 and contract.normalizer().name == "percentile"
    assert ScanPreprocessing(mode="2d", context_slices=2).context == 0
    old = ScanPreprocessing.of_model({"name": "paired_scans", "mode": "3d", "metadata": ["kvp"]},
                                     {"modality": "CT", "normalization": None})
    assert (old.task, old.mode, old.metadata, old.window, old.modality) == ("denoise", "3d", ("kvp",), (32, 64, 64), "CT")
    assert ScanPreprocessing.of_model({"name": "mnist"}, None).task == "generate"


def test_slabs_replicate_the_edges():
    np.testing.assert_array_equal(slab_indices(4, 1), [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]])
    np.testing.assert_array_equal(slab_indices(5, 2, [0]), [[0, 0, 0, 1, 2]])
    np.testing.assert_array_equal(slab_indices(3, 0), [[0], [1], [2]])
