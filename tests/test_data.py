import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from mixmatch.config import TrainConfig, augmentation_of
from mixmatch.data.dataset import DataError
from mixmatch.data.loaders import STL10_CLASSES, load_dataset
from mixmatch.data.splits import choose_split, hold_out, labeled_split, read_split, save_split
from mixmatch.training.trainer import Trainer


@pytest.mark.slow
def test_the_data_layer_loads_the_folder_reader_only_for_a_folder():
    """`mixmatch.data` holds `folder` (a package's modules always load the package first), and loads it, with
    PIL, only when an image folder is read."""
    code = "import json, sys, mixmatch.data; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    loaded = json.loads(result.stdout)
    assert "mixmatch.data" in loaded and "mixmatch.data.folder" not in loaded and "PIL.Image" not in loaded, loaded


def test_the_public_data_names_are_the_modules_own():
    import mixmatch.data as data
    from mixmatch.data import dataset, loaders, splits

    for name in data.__all__:
        home = next(m for m in (dataset, loaders, splits) if hasattr(m, name))
        assert getattr(data, name) is getattr(home, name), name
    assert {
        "ImageDataset",
        "DataError",
        "load_dataset",
        "labeled_split",
        "load_for_config",
        "choose_split",
        "save_split",
        "read_split",
        "hold_out",
        "describe_split",
    } <= set(data.__all__)


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


# ---- the other registered data sets, on tiny files in their real formats ------------------------------------


@pytest.fixture
def trust_checksums(monkeypatch):
    """The tiny files below cannot match torchvision's md5 sums: accept any file that exists."""
    import torchvision.datasets.cifar
    import torchvision.datasets.stl10
    import torchvision.datasets.svhn

    for module in (torchvision.datasets.cifar, torchvision.datasets.svhn, torchvision.datasets.stl10):
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def write_cifar(root, folder: str, batches: dict[str, tuple], meta_name: str, meta: dict) -> None:
    """CIFAR's python batches: pickled dicts of `data` (N, 3072) uint8 rows (R, G, B planes) and labels."""
    (root / folder).mkdir(parents=True)
    for name, (images, labels, label_key) in batches.items():
        entry = {"data": images.reshape(len(images), -1).numpy(), label_key: labels.tolist()}
        (root / folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    (root / folder / meta_name).write_bytes(pickle.dumps(meta, protocol=2))


def test_cifar10_loader_reads_python_batches(tmp_path, trust_checksums):
    images = torch.randint(0, 256, (6, 12, 3, 32, 32), dtype=torch.uint8)  # 5 train batches + test, 12 each
    labels = torch.arange(72).reshape(6, 12) % 10
    batches = {f"data_batch_{i + 1}": (images[i], labels[i], "labels") for i in range(5)}
    batches["test_batch"] = (images[5], labels[5], "labels")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_cifar(tmp_path, "cifar-10-batches-py", batches, "batches.meta", {"label_names": names})
    data = load_dataset("cifar10", str(tmp_path))
    assert data.train_images.shape == (60, 3, 32, 32) and data.test_images.shape == (12, 3, 32, 32)
    assert torch.equal(data.train_images, images[:5].flatten(0, 1)) and torch.equal(data.test_images, images[5])
    assert torch.equal(data.train_labels, labels[:5].flatten()) and data.classes == names
    assert data.extra_unlabeled is None


def test_cifar100_loader_reads_fine_labels(tmp_path, trust_checksums):
    images = torch.randint(0, 256, (2, 200, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(400).reshape(2, 200) % 100
    names = [f"class{i}" for i in range(100)]
    batches = {"train": (images[0], labels[0], "fine_labels"), "test": (images[1], labels[1], "fine_labels")}
    write_cifar(tmp_path, "cifar-100-python", batches, "meta", {"fine_label_names": names})
    data = load_dataset("cifar100", str(tmp_path))
    assert data.num_classes == 100 and torch.equal(data.train_images, images[0])
    assert torch.equal(data.test_labels, labels[1])
    assert torch.bincount(data.train_labels[labeled_split(data.train_labels, 100, 100, 0)]).tolist() == [1] * 100


def write_svhn(path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """SVHN's .mat: X is (32, 32, 3, N) uint8, y is (N, 1) with digit 0 stored as 10."""
    from scipy.io import savemat

    savemat(path, {"X": images.permute(2, 3, 1, 0).numpy(), "y": torch.where(labels == 0, 10, labels)[:, None].numpy()})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["svhn", "svhn-extra"])
def test_svhn_loader_reads_mat_files_and_extra_pool(tmp_path, trust_checksums, name):
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(50) % 10
    write_svhn(tmp_path / "train_32x32.mat", images[:20], labels[:20])
    write_svhn(tmp_path / "test_32x32.mat", images[20:30], labels[20:30])
    write_svhn(tmp_path / "extra_32x32.mat", images[30:], labels[30:])
    data = load_dataset(name, str(tmp_path))
    assert torch.equal(data.train_images, images[:20]) and torch.equal(data.train_labels, labels[:20])
    assert torch.equal(data.test_images, images[20:30]) and data.classes == [str(i) for i in range(10)]
    if name == "svhn":
        assert data.extra_unlabeled is None
    else:
        assert torch.equal(data.extra_unlabeled, images[30:])
        trainer = Trainer(TrainConfig(dataset=name, data_dir=str(tmp_path), num_labels=10, arch="cnn"))
        assert trainer.unlabeled_x.shape[0] == 40  # the training images and the extra pool
        assert augmentation_of(name) == augmentation_of("svhn") == (4, False)  # no flips of digits


@pytest.mark.parametrize("with_class_names", [True, False])
def test_stl10_loader_reads_binaries_and_unlabeled_split(tmp_path, trust_checksums, with_class_names):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = torch.randint(0, 256, (14, 3, 96, 96), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])

    def write_x(name: str, x: torch.Tensor) -> None:  # STL-10 stores each channel column-major
        (folder / name).write_bytes(x.transpose(2, 3).contiguous().numpy().tobytes())

    write_x("train_X.bin", images[:8])
    (folder / "train_y.bin").write_bytes((labels[:8] + 1).to(torch.uint8).numpy().tobytes())  # 1-based on disk
    write_x("test_X.bin", images[8:12])
    (folder / "test_y.bin").write_bytes((labels[8:12] + 1).to(torch.uint8).numpy().tobytes())
    write_x("unlabeled_X.bin", images[12:])
    if with_class_names:
        (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES[::-1]) + "\n")
    data = load_dataset("stl10", str(tmp_path))
    assert torch.equal(data.train_images, images[:8]) and torch.equal(data.train_labels, labels[:8])
    assert torch.equal(data.test_images, images[8:12]) and torch.equal(data.extra_unlabeled, images[12:])
    assert data.classes == (STL10_CLASSES[::-1] if with_class_names else STL10_CLASSES)


@pytest.mark.parametrize(
    ("name", "listed"),
    [
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("fashion-mnist", "FashionMNIST/raw/train-images-idx3-ubyte"),
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar-100-python/train"),
        ("svhn", "train_32x32.mat"),
        ("svhn-extra", "extra_32x32.mat"),
        ("stl10", "stl10_binary/train_X.bin"),
    ],
)
def test_missing_data_set_names_files_place_and_source(tmp_path, name, listed):
    with pytest.raises(DataError) as caught:
        load_dataset(name, str(tmp_path))
    message = str(caught.value)
    assert "\n" not in message and f"{name} is not in {tmp_path}" in message and listed in message
    assert "--download" in message and "http" in message


def test_svhn_extra_needs_its_extra_file(tmp_path, trust_checksums):
    write_svhn(tmp_path / "train_32x32.mat", torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.arange(2))
    write_svhn(tmp_path / "test_32x32.mat", torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.arange(2))
    assert load_dataset("svhn", str(tmp_path)).train_images.shape[0] == 2
    with pytest.raises(DataError, match=r"missing extra_32x32\.mat there"):
        load_dataset("svhn-extra", str(tmp_path))


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match=r"downloading cifar10 into .* failed \(<urlopen error no network>\); get"):
        load_dataset("cifar10", str(tmp_path), download=True)


def test_real_data_sets_when_present(shared_data):
    """Every registered data set found in ../shared/data loads with its published counts; absent ones skip."""
    counts = {"mnist": (60000, 10000), "cifar10": (50000, 10000), "cifar100": (50000, 10000), "svhn": (73257, 26032)}
    counts["stl10"] = (5000, 8000)
    absent = []
    for name, (train, test) in counts.items():
        try:
            data = load_dataset(name, str(shared_data))
        except DataError as error:
            assert "is not in" in str(error)
            absent.append(name)
            continue
        assert (data.train_labels.shape[0], data.test_labels.shape[0]) == (train, test)
        assert data.train_images.dtype == torch.uint8 and data.num_classes in (10, 100)
    if absent:
        pytest.skip(f"not in {shared_data}: {', '.join(absent)}")


# ---- labelled splits: uneven classes, hold-out, split files -------------------------------------------------


def test_the_paper_protocol_split_is_unchanged():
    """The balanced split still picks the indices the committed digits results were trained on."""
    committed = json.loads((Path(__file__).parents[1] / "results/digits-50/mixmatch-seed0/split.json").read_text())
    assert labeled_split(load_dataset("digits").train_labels, 50, 10, seed=0).tolist() == committed["indices"]


def test_uneven_split_is_as_balanced_as_the_classes_allow():
    labels = torch.tensor([0] * 100 + [1] * 5 + [2] * 50)
    split = labeled_split(labels, 60, 3, seed=0, even=False)
    assert torch.bincount(labels[split]).tolist() == [28, 5, 27]  # 20 each, class 1's shortfall shared out
    assert torch.equal(split, labeled_split(labels, 60, 3, seed=0, even=False))
    assert torch.bincount(labels[labeled_split(labels, 7, 3, 0, even=False)]).tolist() == [3, 2, 2]
    assert labeled_split(labels, 155, 3, 0, even=False).tolist() == list(range(155))
    with pytest.raises(DataError, match="more than the 155 labelled training images"):
        labeled_split(labels, 156, 3, 0, even=False)


def test_choose_split_takes_every_label_of_a_folder_by_default():
    data = load_dataset("digits")
    assert choose_split(data, None, 0).tolist() == list(range(1297))
    with pytest.raises(DataError, match="not a multiple"):
        choose_split(data, 55, 0)  # registered data sets keep the paper's exact balance
    data.files = [f"{i}.png" for i in range(1297)]
    assert choose_split(data, 55, 0).shape == (55,)


def test_hold_out_is_stratified_fixed_and_leaves_the_train_split():
    data = load_dataset("digits")
    held = hold_out(data, 0.2)
    assert held.train_labels.shape[0] + held.test_labels.shape[0] == 1297
    per_class = torch.bincount(held.test_labels).tolist()
    assert per_class == [round(0.2 * n) for n in torch.bincount(data.train_labels).tolist()]
    assert torch.equal(held.test_images, hold_out(data, 0.2).test_images)  # the same for every seed
    with pytest.raises(DataError, match="between 0 and 1"):
        hold_out(data, 1.0)


def test_split_file_round_trip_and_refusals(tmp_path):
    data = load_dataset("digits")
    split = labeled_split(data.train_labels, 50, 10, seed=5)
    save_split(tmp_path / "split.json", "digits", split, 5, data)
    assert torch.equal(read_split(tmp_path / "split.json", data), split)
    assert torch.equal(choose_split(data, 250, 0, str(tmp_path / "split.json")), split)  # the file wins
    mnist_like = dataclasses.replace(data, name="mnist")
    with pytest.raises(DataError, match=r"is a split of 'digits', not of 'mnist'"):
        read_split(tmp_path / "split.json", mnist_like)
    with pytest.raises(DataError, match="splits 1297 training images, this digits has 1038"):
        read_split(tmp_path / "split.json", hold_out(data, 0.2))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not a readable split.json"):
        read_split(tmp_path / "bad.json", data)
    (tmp_path / "range.json").write_text(json.dumps({"dataset": "digits", "seed": 0, "indices": [0, 5000]}))
    with pytest.raises(DataError, match="outside 0..1296"):
        read_split(tmp_path / "range.json", data)
