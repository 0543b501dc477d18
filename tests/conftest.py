import pytest
import torch

from relmon.data import load_sample, to_tensor
from relmon.models import load_embedded


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def sample_batch():
    images, labels = load_sample()
    return to_tensor(images[:8]), torch.from_numpy(labels[:8])


@pytest.fixture(scope="session")
def cnn():
    return load_embedded("fmnist_cnn")


@pytest.fixture(scope="session")
def vgg():
    return load_embedded("fmnist_vgg")
