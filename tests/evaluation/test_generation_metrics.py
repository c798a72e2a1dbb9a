"""FID and KID against closed forms for Gaussians, and the FID Inception's architecture and weight loading."""

import builtins
import math

import numpy as np
import pytest
import torch
from scipy import linalg, stats
from torch import nn

from cdm4mi.evaluation.generation_metrics import (
    extract_features,
    frechet_distance,
    frechet_distance_from_stats,
    image_generation_report,
    kernel_inception_distance,
)
from cdm4mi.evaluation.inception import FIDInceptionV3, load_inception

# ---------------------------------------------------------------- Gaussians with non-commuting covariances

DIM = 8


@pytest.fixture(scope="module")
def gaussians():
    """Two Gaussians in 8 dims whose covariances (eigenvalues 0.05..2, random rotations) do not commute."""
    rng = np.random.default_rng(1)
    mu1 = rng.normal(size=DIM)
    mu2 = mu1 + 0.2 * rng.normal(size=DIM)
    eigenvalues = np.geomspace(0.05, 2.0, DIM)
    rotation1, rotation2 = stats.ortho_group.rvs(DIM, random_state=2), stats.ortho_group.rvs(DIM, random_state=3)
    cov1 = rotation1 @ np.diag(eigenvalues) @ rotation1.T
    cov2 = rotation2 @ np.diag(eigenvalues) @ rotation2.T
    assert np.abs(cov1 @ cov2 - cov2 @ cov1).max() > 0.1
    return mu1, cov1, mu2, cov2


def closed_form_fid(mu1, cov1, mu2, cov2) -> float:
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * linalg.sqrtm(cov1 @ cov2).real))


def cubic_kernel_mean(mu1, cov1, mu2, cov2, dim: int) -> float:
    """E (x·y/d + 1)³ for independent x ~ N(mu1, cov1), y ~ N(mu2, cov2).

    With s = x·y: E s = mu1·mu2 = a; E s² = tr((cov1 + mu1 mu1ᵀ)(cov2 + mu2 mu2ᵀ)); given y, s is normal with
    mean mu1·y and variance yᵀ cov1 y, so E s³ = E[(mu1·y)³ + 3 (mu1·y)(yᵀ cov1 y)]
    = a³ + 3a mu1ᵀcov2 mu1 + 3a (mu2ᵀcov1 mu2 + tr(cov1 cov2)) + 6 mu1ᵀ cov2 cov1 mu2.
    """
    a = mu1 @ mu2
    second = np.trace((cov1 + np.outer(mu1, mu1)) @ (cov2 + np.outer(mu2, mu2)))
    third = (a**3 + 3 * a * (mu1 @ cov2 @ mu1) + 3 * a * (mu2 @ cov1 @ mu2 + np.trace(cov1 @ cov2))
             + 6 * mu1 @ cov2 @ cov1 @ mu2)
    return float(1 + 3 * a / dim + 3 * second / dim**2 + third / dim**3)


def closed_form_mmd2(mu1, cov1, mu2, cov2, dim: int) -> float:
    return (cubic_kernel_mean(mu1, cov1, mu1, cov1, dim) + cubic_kernel_mean(mu2, cov2, mu2, cov2, dim)
            - 2 * cubic_kernel_mean(mu1, cov1, mu2, cov2, dim))


def test_cubic_kernel_mean_matches_monte_carlo(gaussians):
    mu1, cov1, mu2, cov2 = gaussians
    rng = np.random.default_rng(7)
    x, y = rng.multivariate_normal(mu1, cov1, size=400_000), rng.multivariate_normal(mu2, cov2, size=400_000)
    kernel = (np.einsum("ij,ij->i", x, y) / DIM + 1) ** 3
    standard_error = kernel.std() / math.sqrt(len(kernel))
    assert abs(kernel.mean() - cubic_kernel_mean(mu1, cov1, mu2, cov2, DIM)) < 5 * standard_error


def test_frechet_distance_from_exact_stats_is_the_closed_form(gaussians):
    mu1, cov1, mu2, cov2 = gaussians
    exact = closed_form_fid(mu1, cov1, mu2, cov2)
    assert frechet_distance_from_stats(mu1, cov1, mu2, cov2) == pytest.approx(exact, abs=1e-8)
    assert frechet_distance_from_stats(torch.from_numpy(mu1), torch.from_numpy(cov1), mu2, cov2) == pytest.approx(exact, abs=1e-8)
    # The product of square roots is right only when the covariances commute; here it is off by 0.15.
    commuting_guess = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * linalg.sqrtm(cov1).real @ linalg.sqrtm(cov2).real)
    assert abs(commuting_guess - exact) > 0.1


def test_frechet_distance_of_large_samples_approaches_closed_form(gaussians):
    mu1, cov1, mu2, cov2 = gaussians
    rng = np.random.default_rng(11)
    n = 50_000
    fid = frechet_distance(rng.multivariate_normal(mu1, cov1, size=n), rng.multivariate_normal(mu2, cov2, size=n))
    # The SD of this sample FID over 30 seeds at n = 50,000 is 0.015 (its bias, tr(S1 + S2)/n, is 1e-4):
    # 0.075 is 5 SD, and half the error a commuting-covariance formula would make (0.15).
    assert fid == pytest.approx(closed_form_fid(mu1, cov1, mu2, cov2), abs=0.075)


def test_frechet_distance_of_a_set_with_itself_is_zero_even_with_singular_covariance():
    rng = np.random.default_rng(0)
    features = np.abs(rng.normal(size=(100, 256))) * rng.uniform(0.01, 3, size=256)  # 100 < 256: rank 99
    scale = np.trace(np.cov(features, rowvar=False))
    assert abs(frechet_distance(features, features)) < 1e-9 * scale


def test_frechet_distance_agrees_with_exact_nuclear_norm_and_with_sqrtm():
    """tr((S_a S_b)^½) is the nuclear norm of A Bᵀ for centred, scaled feature matrices A, B: exact even when singular."""
    rng = np.random.default_rng(3)
    for n, dim in [(60, 128), (2000, 32)]:
        a = np.abs(rng.normal(size=(n, dim))) * rng.uniform(0.01, 3, size=dim)
        b = np.abs(rng.normal(size=(n, dim))) * rng.uniform(0.01, 3, size=dim) + 0.05
        a_centred, b_centred = (a - a.mean(0)) / math.sqrt(n - 1), (b - b.mean(0)) / math.sqrt(n - 1)
        exact = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.sum(a_centred**2) + np.sum(b_centred**2)
                 - 2 * linalg.svdvals(a_centred @ b_centred.T).sum())
        assert frechet_distance(a, b) == pytest.approx(exact, rel=1e-10)
        if n > dim:  # well conditioned: the pytorch-fid formula (sqrtm of the product) gives the same number
            cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
            standard = closed_form_fid(a.mean(0), cov_a, b.mean(0), cov_b)
            assert frechet_distance(a, b) == pytest.approx(standard, rel=1e-9)


def brute_force_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    m, dim = x.shape
    kernel = lambda u, v: (float(np.dot(u, v)) / dim + 1) ** 3  # noqa: E731
    within = sum(kernel(x[i], x[j]) + kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    cross = sum(kernel(x[i], y[j]) for i in range(m) for j in range(m))
    return within / (m * (m - 1)) - 2 * cross / m**2


def test_kid_equals_brute_force_double_loop_on_whole_small_sets():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 5)), rng.normal(loc=0.4, size=(12, 5))
    # subset_size 1000 is clipped to 12, so every subset is a whole set, reordered: MMD² does not change.
    mean, sd = kernel_inception_distance(x, y, num_subsets=3, subset_size=1000)
    assert mean == pytest.approx(brute_force_mmd2(x, y), rel=1e-12)
    assert sd < 1e-12


def test_kid_of_a_set_with_itself():
    """With whole-set subsets, KID(a, a) = 2 (mean off-diagonal k - mean diagonal k) / n exactly: slightly negative."""
    rng = np.random.default_rng(6)
    features = rng.normal(size=(40, 16))
    gram = (features @ features.T / 16 + 1) ** 3
    off_diagonal = (gram.sum() - np.trace(gram)) / (40 * 39)
    expected = 2 * (off_diagonal - np.trace(gram) / 40) / 40
    mean, _ = kernel_inception_distance(features, features, num_subsets=2, subset_size=40)
    assert mean == pytest.approx(expected, rel=1e-10)
    assert expected < 0


@pytest.mark.parametrize("case", ["same", "mean_shift", "mean_and_covariance"])
def test_kid_matches_closed_form_mmd2_of_gaussians(gaussians, case):
    mu1, cov1, mu2, cov2 = gaussians
    mu_b, cov_b = {"same": (mu1, cov1), "mean_shift": (mu2, cov1), "mean_and_covariance": (mu2, cov2)}[case]
    rng = np.random.default_rng(21)
    a, b = rng.multivariate_normal(mu1, cov1, size=20_000), rng.multivariate_normal(mu_b, cov_b, size=20_000)
    mean, sd = kernel_inception_distance(a, b, num_subsets=100, subset_size=1000, seed=1)
    expected = closed_form_mmd2(mu1, cov1, mu_b, cov_b, DIM)
    # SD of the KID mean over 20 seeds with these sizes: 0.0009 (same), 0.0034 (mean shift, MMD² 0.064),
    # 0.011 (mean and covariance, MMD² 0.58); tolerances are 5 SD. A biased (V-statistic) estimate,
    # which keeps the i = j terms, is off by 0.016 in the "same" case.
    tolerance = {"same": 0.0045, "mean_shift": 0.017, "mean_and_covariance": 0.055}[case]
    assert mean == pytest.approx(expected, abs=tolerance)
    assert sd > 0


def test_kid_refuses_bad_options():
    features = np.zeros((5, 3))
    with pytest.raises(ValueError, match="num_subsets"):
        kernel_inception_distance(features, features, num_subsets=0)
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(features, features[:1])
    with pytest.raises(ValueError, match="one F"):
        kernel_inception_distance(features, np.zeros((5, 4)))


# ---------------------------------------------------------------- a small feature network on images


def small_feature_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1))  # [N, 32, 1, 1]: flattened by extract_features


def blob_images(count: int, seed: int) -> torch.Tensor:
    """[count, 1, 16, 16] images in [-1, 1]: one Gaussian blob each at a random place and width."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.arange(16.0)
    centres = torch.rand(count, 2, generator=generator) * 12 + 2
    widths = torch.rand(count, 1, 1, generator=generator) * 2 + 1.5
    squared = (grid[None, :, None] - centres[:, 0, None, None]) ** 2 + (grid[None, None, :] - centres[:, 1, None, None]) ** 2
    return (2 * torch.exp(-squared / (2 * widths**2)) - 1)[:, None]


def test_extract_features_batches_and_shape():
    network, images = small_feature_network(), blob_images(23, seed=0)
    features = extract_features(network, images, batch_size=5)
    assert features.shape == (23, 32) and features.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(features, network(images).flatten(1), atol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(network, images, batch_size=0)
    with pytest.raises(ValueError, match=r"\[N, F\]"):
        extract_features(nn.Conv2d(1, 2, 3), images)


def test_report_is_zero_for_identical_sets_and_grows_with_brightness_shift():
    network, images = small_feature_network(), blob_images(64, seed=1)
    same = image_generation_report(images, images.clone(), network, batch_size=16)
    assert same["n_generated"] == same["n_reference"] == 64 and same["feature_dim"] == 32
    assert same["kid_subset_size"] == 64 and same["kid_subsets"] == 100
    scale = float(np.trace(np.cov(extract_features(network, images).double().numpy(), rowvar=False)))
    assert abs(same["fid"]) < 1e-9 * scale
    assert -1e-3 < same["kid_mean"] <= 0  # exactly 2 (mean off-diagonal k - mean diagonal k) / n, see above

    reports = [image_generation_report(images, (images + shift).clamp(-1, 1), network, batch_size=16, subset_size=32)
               for shift in (0.1, 0.3)]
    assert 100 * scale * 1e-9 < reports[0]["fid"] < reports[1]["fid"]
    assert reports[0]["fid"] > 1e-3 * scale
    assert 0 < reports[0]["kid_mean"] < reports[1]["kid_mean"]
    assert reports[1]["kid_mean"] > 3 * reports[1]["kid_std"]
    assert reports[0]["notes"] == []


# ---------------------------------------------------------------- the FID Inception

# Derived from reading torchvision's inception.py and pytorch-fid's fid_inception_v3(), not from the module:
# top-level blocks in order (maxpool/avgpool/dropout hold no tensors; AuxLogits is dropped by aux_logits=False).
EXPECTED_BLOCKS = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                   "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                   "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc"]
EXPECTED_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": [32, 3, 3, 3],
    "Conv2d_1a_3x3.bn.running_var": [32],
    "Conv2d_4a_3x3.conv.weight": [192, 80, 3, 3],
    "Mixed_5b.branch_pool.conv.weight": [32, 192, 1, 1],
    "Mixed_5d.branch5x5_2.conv.weight": [64, 48, 5, 5],
    "Mixed_6a.branch3x3.conv.weight": [384, 288, 3, 3],
    "Mixed_6b.branch7x7_2.conv.weight": [128, 128, 1, 7],
    "Mixed_6e.branch7x7dbl_5.conv.weight": [192, 192, 1, 7],
    "Mixed_7a.branch7x7x3_4.conv.weight": [192, 192, 3, 3],
    "Mixed_7b.branch3x3dbl_1.conv.weight": [448, 1280, 1, 1],
    "Mixed_7c.branch3x3_2b.conv.weight": [384, 384, 3, 1],
    "Mixed_7c.branch_pool.conv.weight": [192, 2048, 1, 1],
    "Mixed_7c.branch_pool.bn.num_batches_tracked": [],
    "fc.weight": [1008, 2048],
    "fc.bias": [1008],
}
# Conv+BN units: 5 stem + 3 InceptionA x 7 + InceptionB 4 + 4 InceptionC x 10 + InceptionD 6 + 2 InceptionE x 9 = 94.
EXPECTED_CONV_UNITS = 94
# torchvision's Inception_V3_Weights meta gives 27,161,264 parameters with the aux head and 1000 classes. The aux
# head holds 128*768 + 2*128 (conv0) + 768*128*25 + 2*768 (conv1) + 768*1000 + 1000 (fc) = 3,326,696; 1008 classes
# add 8*2048 + 8 = 16,392 to fc: 27,161,264 - 3,326,696 + 16,392 = 23,850,960. The FID blocks only change forward.
EXPECTED_PARAMETERS = 23_850_960


def test_fid_inception_state_dict_matches_pytorch_fid_layout():
    network = FIDInceptionV3()
    state = network.state_dict()
    assert list(dict.fromkeys(key.split(".")[0] for key in state)) == EXPECTED_BLOCKS
    for key, shape in EXPECTED_SHAPES.items():
        assert list(state[key].shape) == shape, key
    # each unit has conv.weight and bn.{weight, bias, running_mean, running_var, num_batches_tracked}; plus fc
    assert len(state) == 6 * EXPECTED_CONV_UNITS + 2
    assert sum(key.endswith(".conv.weight") for key in state) == EXPECTED_CONV_UNITS
    assert sum(parameter.numel() for parameter in network.parameters()) == EXPECTED_PARAMETERS
    norms = [module for module in network.modules() if isinstance(module, nn.BatchNorm2d)]
    assert len(norms) == EXPECTED_CONV_UNITS and all(norm.eps == 0.001 for norm in norms)
    assert all(module.bias is None for module in network.modules() if isinstance(module, nn.Conv2d))


def test_fid_pooling_quirks_on_a_corner_spike():
    """FID blocks average without the zero padding (TensorFlow), and Mixed_7c's pool branch takes a max."""
    network = FIDInceptionV3().eval()
    for block, channels, size, pool_channels in [(network.Mixed_5b, 192, 35, 32), (network.Mixed_7b, 1280, 8, 192),
                                                 (network.Mixed_7c, 2048, 8, 192)]:
        spike = torch.zeros(1, channels, size, size)
        spike[..., 0, 0] = 1.0
        pooled = torch.zeros_like(spike)
        if block is network.Mixed_7c:
            pooled[..., :2, :2] = 1.0
        else:  # windows at (0,0), (0,1), (1,0), (1,1) cover 4, 6, 6 and 9 real pixels
            pooled[..., :2, :2] = torch.tensor([[1 / 4, 1 / 6], [1 / 6, 1 / 9]])
        with torch.no_grad():
            assert torch.allclose(block(spike)[:, -pool_channels:], block.branch_pool(pooled), atol=1e-6)


@pytest.fixture(scope="module")
def saved_inception(tmp_path_factory):
    """A randomly initialised FID Inception (scale-preserving convs, random BN statistics) saved as a plain state dict."""
    torch.manual_seed(0)
    network = FIDInceptionV3()
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(network.state_dict(), path)
    return network.eval(), path


def test_load_inception_round_trip_gives_2048_features(saved_inception):
    network, path = saved_inception
    loaded = load_inception(path)
    assert not loaded.training and not any(parameter.requires_grad for parameter in loaded.parameters())
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    gray = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    color = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        gray_features, color_features = loaded(gray), loaded(color)
        assert gray_features.shape == (2, 2048) and color_features.shape == (2, 2048)
        assert torch.isfinite(color_features).all() and color_features.std() > 1e-3
        assert torch.allclose(color_features, network(color), atol=1e-5)
        # grayscale is the same image in all three channels
        assert torch.allclose(gray_features, loaded(gray.expand(-1, 3, -1, -1)), atol=1e-5)
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        loaded(color * 127.5 + 127.5)


def one_line_error(call) -> str:
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    return message


def test_load_inception_refuses_missing_and_wrong_files(saved_inception, tmp_path):
    network, _ = saved_inception
    for path in (tmp_path / "absent.pth", None):
        message = one_line_error(lambda path=path: load_inception(path))
        assert message.startswith("--inception-weights: file not found: ")
        assert "pt_inception-2015-12-05-6726825d.pth" in message and "cdm4mi never downloads it" in message

    renamed = dict(network.state_dict())
    renamed["fc.weights"] = renamed.pop("fc.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    message = one_line_error(lambda: load_inception(tmp_path / "renamed.pth"))
    assert str(tmp_path / "renamed.pth") in message and "first missing key 'fc.weight'" in message

    imagenet_head = dict(network.state_dict(), **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    torch.save(imagenet_head, tmp_path / "imagenet.pth")
    message = one_line_error(lambda: load_inception(tmp_path / "imagenet.pth"))
    assert "imagenet.pth" in message and "fc.weight [1000, 2048] (expected [1008, 2048])" in message

    (tmp_path / "text.pth").write_text("not a checkpoint")
    assert "text.pth cannot be read" in one_line_error(lambda: load_inception(tmp_path / "text.pth"))


class _Payload:
    """Unpickling this runs ``exec`` of code that writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_load_inception_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"fc.weight": torch.zeros(1008, 2048), "payload": _Payload(marker)}, tmp_path / "payload.pth")
    message = one_line_error(lambda: load_inception(tmp_path / "payload.pth"))
    assert "payload.pth cannot be read as a plain state dict" in message
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(tmp_path / "payload.pth", weights_only=False)
    assert marker.read_text() == "ran"
