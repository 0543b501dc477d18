import pytest
import torch

from relmon.data import load_sample, to_tensor
from relmon.data.shifts import SEVERITIES, SHIFTS, apply_shift, mixed_window


@pytest.fixture(scope="module")
def raw():
    images, _ = load_sample()
    return to_tensor(images[:64], normalize=False)


@pytest.mark.parametrize("name", list(SHIFTS))
def test_shape_dtype_range_and_reproducible(raw, name):
    a = apply_shift(raw, name, 3, seed=7)
    b = apply_shift(raw, name, 3, seed=7)
    assert a.shape == raw.shape and a.dtype == raw.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, raw)


@pytest.mark.parametrize("name", ["gaussian_noise", "rotation", "occlusion"])
def test_random_shifts_depend_on_seed(raw, name):
    assert not torch.equal(apply_shift(raw, name, 3, seed=0), apply_shift(raw, name, 3, seed=1))


@pytest.mark.parametrize("name", list(SHIFTS))
def test_severity_monotone_in_pixel_mse(raw, name):
    mse = [float(((apply_shift(raw, name, s, seed=3) - raw) ** 2).mean()) for s in SEVERITIES]
    assert all(b > a for a, b in zip(mse[:-1], mse[1:], strict=True)), f"{name}: MSE by severity {mse}"


def test_three_channels_and_errors(raw):
    rgb = raw[:4].repeat(1, 3, 1, 1)
    for name in SHIFTS:
        out = apply_shift(rgb, name, 2, seed=0)
        assert out.shape == rgb.shape
    with pytest.raises(ValueError, match="severity"):
        apply_shift(raw, "blur", 6)
    with pytest.raises(ValueError, match="unknown shift"):
        apply_shift(raw, "fog", 1)
    with pytest.raises(ValueError, match="B, C, H, W"):
        apply_shift(raw[0], "blur", 1)


def test_mixed_window(raw):
    shifted = apply_shift(raw, "contrast", 5, seed=0)
    mixed, mask = mixed_window(raw, shifted, 0.25, seed=4)
    assert mixed.shape == raw.shape and int(mask.sum()) == 16
    assert torch.equal(mixed[mask], shifted[mask]) and torch.equal(mixed[~mask], raw[~mask])
    again, mask2 = mixed_window(raw, shifted, 0.25, seed=4)
    assert torch.equal(mask, mask2) and torch.equal(mixed, again)
    assert int(mixed_window(raw, shifted, 0.0)[1].sum()) == 0
    assert int(mixed_window(raw, shifted, 1.0)[1].sum()) == 64
    with pytest.raises(ValueError, match="proportion"):
        mixed_window(raw, shifted, 1.5)
