import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from mixmatch.data import ImageDataset, load_dataset

# The real data sets: ../shared/data beside the repo on the project's machines, or wherever
# MIXMATCH_TEST_DATA names (a folder in torchvision's layout, e.g. a torchvision download root).
SHARED_DATA = Path(
    os.environ.get("MIXMATCH_TEST_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
).resolve()


@pytest.fixture
def shared_data() -> Path:
    """The real data sets (SHARED_DATA); tests that need them skip where Fashion-MNIST is not there."""
    if not (SHARED_DATA / "FashionMNIST" / "raw").is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA} (MIXMATCH_TEST_DATA may name one with FashionMNIST/raw)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits() -> ImageDataset:
    """The embedded digits data set, loaded once for every test module that trains on it."""
    return load_dataset("digits")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: on two cores shared with other processes, two
    spinning threads per process ran up to ten times slower than one. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli_error(capsys):
    """Run `mixmatch ARGS...` in this process; assert exit status 2 and one `mixmatch: error:` line; return it."""
    from mixmatch.cli import main

    def run(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mixmatch: error: "), err
        return err[0]

    return run


class LookupModel(nn.Module):
    """Logits read from the input's first pixel, so a test knows each view's prediction (`from conftest import`)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()]


def photo_folder(root, classes=("a", "b", "c"), per_class=6, unlabelled=12, size=40):
    """RGB photos of three colours with noise: labeled/<class>/, test/<class>/ and unlabeled/."""
    g = torch.Generator().manual_seed(0)
    colours = {"a": (200, 40, 40), "b": (40, 200, 40), "c": (40, 40, 200)}

    def photo(colour):
        base = torch.tensor(colour).view(3, 1, 1).expand(3, size, size).float()
        pixels = (base + 30 * torch.randn(3, size, size, generator=g)).clamp(0, 255).to(torch.uint8)
        return Image.fromarray(pixels.permute(1, 2, 0).numpy())

    for split, n in (("labeled", per_class), ("test", per_class // 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                photo(colours[c]).save(root / split / c / f"{i}.png")
    (root / "unlabeled").mkdir()
    for i in range(unlabelled):
        photo(colours[classes[i % len(classes)]]).save(root / "unlabeled" / f"{i}.png")
    return root
