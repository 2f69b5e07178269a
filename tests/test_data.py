import json

import pytest
import torch

from mixmatch.data import DataError, labeled_split, load_dataset


def test_digits_is_embedded_and_split_fixed():
    data = load_dataset("digits")
    assert data.train_images.shape == (1297, 1, 8, 8) and data.test_images.shape == (500, 1, 8, 8)
    assert data.train_images.dtype == torch.uint8 and int(data.train_images.max()) == 255
    assert data.num_classes == 10
    again = load_dataset("digits")
    assert torch.equal(data.test_labels, again.test_labels)
    assert torch.bincount(data.test_labels).tolist() == [50, 51, 49, 51, 50, 51, 50, 50, 48, 50]  # stratified


def test_split_is_class_balanced_and_seed_stable():
    labels = torch.arange(1000) % 10
    split = labeled_split(labels, 50, 10, seed=3)
    assert split.shape == (50,) and len(set(split.tolist())) == 50
    assert torch.bincount(labels[split], minlength=10).tolist() == [5] * 10
    assert torch.equal(split, labeled_split(labels, 50, 10, seed=3))
    assert not torch.equal(split, labeled_split(labels, 50, 10, seed=4))


def test_split_refuses_uneven_and_too_many_labels():
    labels = torch.arange(100) % 10
    with pytest.raises(DataError, match="not a multiple of the 10 classes"):
        labeled_split(labels, 55, 10, 0)
    with pytest.raises(DataError, match="class 0 has only 10"):
        labeled_split(labels, 200, 10, 0)
    with pytest.raises(DataError, match="must be positive"):
        labeled_split(labels, 0, 10, 0)


def test_channel_stats_of_digits():
    mean, std = load_dataset("digits").channel_stats()
    pixels = load_dataset("digits").train_images.float() / 255
    torch.testing.assert_close(mean, pixels.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, pixels.std((0, 2, 3), unbiased=False), atol=1e-4, rtol=1e-4)


def test_unknown_and_missing_data_sets_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", str(tmp_path / "absent"))
    with pytest.raises(DataError, match="mnist is not in"):
        load_dataset("mnist", str(tmp_path))


def write_idx(path, array: torch.Tensor) -> None:
    """The IDX format of (Fashion-)MNIST's raw files: magic, dims, big-endian, then uint8 data."""
    dims = list(array.shape)
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + array.numpy().astype("uint8").tobytes())


def test_mnist_loader_reads_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train_x = torch.randint(0, 256, (30, 28, 28), dtype=torch.uint8)
    train_y = torch.arange(30) % 10
    write_idx(raw / "train-images-idx3-ubyte", train_x)
    write_idx(raw / "train-labels-idx1-ubyte", train_y)
    write_idx(raw / "t10k-images-idx3-ubyte", train_x[:10])
    write_idx(raw / "t10k-labels-idx1-ubyte", train_y[:10])
    data = load_dataset("mnist", str(tmp_path))
    assert data.train_images.shape == (30, 1, 28, 28)
    assert torch.equal(data.train_images[:, 0], train_x) and torch.equal(data.train_labels, train_y)
    assert data.test_images.shape == (10, 1, 28, 28) and data.num_classes == 10


def test_real_fashion_mnist(shared_data):
    data = load_dataset("fashion-mnist", str(shared_data))
    assert data.train_images.shape == (60000, 1, 28, 28) and data.test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    # The first training images of Fashion-MNIST are an ankle boot, a T-shirt, a T-shirt, a dress.
    assert data.train_labels[:4].tolist() == [9, 0, 0, 3]
    assert data.classes[9] == "Ankle boot"
    split = labeled_split(data.train_labels, 100, 10, seed=0)
    assert torch.bincount(data.train_labels[split]).tolist() == [10] * 10
    json.dumps(split.tolist())
