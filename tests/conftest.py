import os
from pathlib import Path

import pytest
import torch
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
