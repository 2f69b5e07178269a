"""Backbones of torchvision and timm: built for the data's channels and classes, started from a weights file or the
library's pretrained weights (one line where those cannot be had), normalised as their weights were, exported."""

import json
import urllib.error

import pytest
import torch
import torchvision
from PIL import Image

from conftest import photo_folder
from mixmatch.cli import main
from mixmatch.config import ConfigError, TrainConfig
from mixmatch.models import build_model
from mixmatch.models.backbones import BackboneError, build_backbone, spec
from mixmatch.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return photo_folder(tmp_path_factory.mktemp("photos") / "photos")


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """An ImageNet-shaped ResNet-18 state dict, saved as a user's file would be (torch.save)."""
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.manual_seed(7)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_a_backbone_takes_the_datas_channels_and_classes_and_its_files_weights(resnet18_file):
    saved = torch.load(resnet18_file, weights_only=True)
    model = build_model("resnet18", 5, 1, 32, weights_file=resnet18_file)
    assert model.fc.out_features == 5 and model.conv1.in_channels == 1
    torch.testing.assert_close(model.conv1.weight, saved["conv1.weight"].sum(1, keepdim=True))  # grey: RGB summed
    assert torch.equal(model.layer3[1].conv2.weight, saved["layer3.1.conv2.weight"])
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    rgb = build_backbone("resnet18", 7, 3)
    assert rgb.fc.out_features == 7 and rgb.conv1.in_channels == 3
    head = build_backbone("efficientnet_b0", 4, 3)
    assert head.classifier[-1].out_features == 4


def test_a_backbone_trained_here_on_grey_images_is_a_weights_file_for_grey_images(tmp_path):
    from safetensors.torch import save_file

    grey = build_backbone("resnet18", 5, 1)  # as `mixmatch export` writes a Fashion-MNIST run's model
    save_file(grey.state_dict(), str(tmp_path / "grey.safetensors"))
    model = build_model("resnet18", 3, 1, 28, weights_file=tmp_path / "grey.safetensors")
    assert torch.equal(model.conv1.weight, grey.conv1.weight) and model.fc.out_features == 3
    with pytest.raises(BackboneError, match="^resnet18 takes 1-channel images; these have 3$"):
        build_model("resnet18", 3, 3, 28, weights_file=tmp_path / "grey.safetensors")


def test_a_weights_file_of_another_architecture_or_no_state_dict_is_one_line(resnet18_file, tmp_path):
    with pytest.raises(BackboneError, match=r"^--weights .*resnet18.pth does not fit resnet34: missing layer1\.2\."):
        build_model("resnet34", 3, 3, 32, weights_file=resnet18_file)
    (tmp_path / "notes.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="loads safely: it is not a file that torch.save or safetensors wrote$"):
        build_model("resnet18", 3, 3, 32, weights_file=tmp_path / "notes.pth")
    torch.save(torchvision.models.resnet18(), tmp_path / "whole.pth")  # the model object, not its state dict
    with pytest.raises(BackboneError, match=r"holds Python objects, such as a whole pickled model: save model\.state"):
        build_model("resnet18", 3, 3, 32, weights_file=tmp_path / "whole.pth")
    (tmp_path / "empty.pth").touch()
    with pytest.raises(BackboneError, match=r"empty.pth is empty \(0 bytes\)$"):
        build_model("resnet18", 3, 3, 32, weights_file=tmp_path / "empty.pth")
    with pytest.raises(BackboneError, match="nope.pth does not exist"):
        build_model("resnet18", 3, 3, 32, weights_file=tmp_path / "nope.pth")
    with pytest.raises(BackboneError, match="cnn has no pretrained weights"):
        build_model("cnn", 3, 3, 32, pretrained=True)


def test_pretrained_without_a_network_or_a_cached_file_says_which_file_to_put_where(tmp_path, monkeypatch, cli_error):
    from mixmatch.models import backbones

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    # Where the host answers but the download fails, and where it does not answer (then nothing is tried).
    for answers, reason in ((True, "<urlopen error no network>"), (False, "download.pytorch.org cannot be reached")):
        monkeypatch.setattr(backbones, "reachable", lambda url, answers=answers: answers)
        line = cli_error("train", "--arch", "resnet18", "--pretrained", "--steps", "1", "--out", str(tmp_path / "run"))
        assert line == ("mixmatch: error: --pretrained: resnet18's weights are not in torch's cache and cannot be "
                        f"downloaded here ({reason}): put https://download.pytorch.org/models/resnet18-f37072fd.pth "
                        f"at {expected}, or give --weights PATH")


def test_timm_pretrained_without_a_network_names_the_cache_at_once(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install 'mixmatch[timm]'")
    from huggingface_hub import constants

    from mixmatch.models import backbones

    offline_before = constants.HF_HUB_OFFLINE
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(backbones, "reachable", lambda url: False)  # the hub is then asked offline: no retries
    with pytest.raises(BackboneError) as error:
        build_backbone("timm/resnet10t", 3, 3, pretrained=True)
    assert str(error.value) == (
        f"--pretrained: timm/resnet10t's weights are not in the Hugging Face cache ({tmp_path / 'hub'}) and cannot "
        "be downloaded here (huggingface.co cannot be reached): fetch https://huggingface.co/"
        f"{timm.models.get_pretrained_cfg('resnet10t').hf_hub_id}/resolve/main/model.safetensors on a machine with "
        "a network and give --weights PATH"
    )
    assert offline_before == constants.HF_HUB_OFFLINE  # the hub is online again for whatever comes next


def test_weights_come_from_one_source_and_a_warm_up_leaves_steps_at_the_full_rate(resnet18_file):
    with pytest.raises(ConfigError, match="^weights and --pretrained are two sources"):
        TrainConfig(arch="resnet18", pretrained=True, weights=str(resnet18_file)).validate()
    with pytest.raises(ConfigError, match="^weights is for torchvision and timm backbones, not wrn28_2"):
        TrainConfig(arch="wrn28_2", weights=str(resnet18_file)).validate()
    with pytest.raises(ConfigError, match="warmup_steps 50 leaves none of the 10 steps"):
        TrainConfig(arch="resnet18", steps=10, warmup_steps=50).validate()
    TrainConfig(arch="resnet18", steps=10, warmup_steps=9).validate()
    pytest.importorskip("timm", reason="timm is an optional extra: pip install 'mixmatch[timm]'")
    with pytest.raises(ValueError, match="^timm has no model 'resnet1800'; the closest: "):
        build_model("timm/resnet1800", 3, 3, 32)


def test_pretrained_weights_bring_their_normalisation_and_image_size(photos, resnet18_file):
    imagenet = spec("resnet18")
    assert (imagenet.mean, imagenet.image_size) == ((0.485, 0.456, 0.406), 224)
    cfg = TrainConfig(dataset="folder", data_dir=str(photos), arch="resnet18", weights=str(resnet18_file))
    assert cfg.resolved().image_size == 224  # a folder is read at the weights' size ...
    assert TrainConfig(**{**cfg.to_dict(), "image_size": 64}).resolved().image_size == 64  # ... unless given
    assert TrainConfig(dataset="folder", arch="resnet18").resolved().image_size == 32  # random weights: ours
    assert TrainConfig(dataset="digits", arch="resnet18", pretrained=True).resolved().image_size == 32
    with pytest.raises(ConfigError, match="pretrained is for torchvision and timm backbones, not wrn10_1"):
        TrainConfig(arch="wrn10_1", pretrained=True).validate()
    with pytest.raises(ConfigError, match="unknown architecture 'resnet1800'; choose one of wrn28_2"):
        TrainConfig(arch="resnet1800").validate()


def trained_folder_run(photos, tmp_path, arch, weights, capsys):
    run = tmp_path / "run"
    args = ["train", "--dataset", "folder", "--data-dir", str(photos), "--image-size", "32", "--arch", arch,
            "--weights", str(weights), "--steps", "3", "--eval-every", "3", "--batch-size", "6", "--rampup-steps", "2",
            "--amp", "off", "--no-progress", "--out", str(run)]
    assert main(args) == 0
    capsys.readouterr()
    return run


@pytest.mark.slow
def test_a_resnet18_trains_from_a_weights_file_and_its_export_predicts_as_it_evaluated(photos, resnet18_file,
                                                                                      tmp_path, capsys):
    run = trained_folder_run(photos, tmp_path, "resnet18", resnet18_file, capsys)
    trainer = Trainer(TrainConfig(**{**json.loads((run / "config.json").read_text()), "progress": False}))
    trainer.resume()
    assert trainer.model.fc.out_features == 3
    torch.testing.assert_close(trainer.augment.mean.cpu(), torch.tensor([0.485, 0.456, 0.406]))
    with torch.no_grad():
        trainer.eval_model.eval()
        expected = trainer.eval_model(trainer.augment.plain(trainer.data.test_images)).argmax(-1)
    assert main(["export", str(run)]) == 0
    capsys.readouterr()
    meta = json.loads((run / "model.json").read_text())
    assert (meta["arch"], meta["image_size"], meta["weights_source"]) == ("resnet18", 32, str(resnet18_file))
    test_files = sorted((photos / "test").rglob("*.png"))
    assert main(["predict", "--model", str(run), *map(str, test_files)]) == 0
    predicted = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]
    classes = trainer.data.classes
    assert predicted == [classes[i] for i in expected.tolist()]


@pytest.mark.slow
def test_a_timm_model_trains_from_a_weights_file(photos, tmp_path, capsys):
    timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install 'mixmatch[timm]'")
    weights = tmp_path / "timm-resnet18.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet18").state_dict(), str(weights))
    run = trained_folder_run(photos, tmp_path, "timm/resnet18", weights, capsys)
    state = torch.load(sorted((run / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert state["model"]["fc.weight"].shape == (3, 512)
    assert main(["export", str(run)]) == 0
    assert main(["evaluate", "--model", str(run), "--data-dir", str(photos)]) == 0
    # model.json names its model; a grey copy of the folder is evaluated as predict reads grey files, in RGB
    grey = tmp_path / "grey"
    for image in photos.rglob("*.png"):
        (grey / image.relative_to(photos)).parent.mkdir(parents=True, exist_ok=True)
        Image.open(image).convert("L").save(grey / image.relative_to(photos))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run / "model.json"), "--data-dir", str(grey), "--out",
                 str(tmp_path / "grey.png")]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == len(list((photos / "test").rglob("*.png")))


# ---- fine-tuning: the backbone's rate, the warm-up, the decay per group -----------------------------------------


def test_fine_tuning_takes_its_own_optimiser_settings_and_a_flag_wins(resnet18_file):
    from mixmatch.config import FINETUNE

    tuned = TrainConfig(dataset="fashion-mnist", arch="resnet18", weights=str(resnet18_file), method="fixmatch")
    cfg = tuned.resolved()
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.backbone_lr_scale) == tuple(
        FINETUNE[k] for k in ("optimizer", "lr", "weight_decay")) + (1.0,)  # not FixMatch's SGD
    assert cfg.warmup_steps == 0
    mine = TrainConfig(**{**tuned.to_dict(), "lr": 0.01, "warmup_steps": 7, "backbone_lr_scale": 1.0}).resolved()
    assert (mine.lr, mine.warmup_steps, mine.backbone_lr_scale) == (0.01, 7, 1.0)
    scratch = TrainConfig(dataset="fashion-mnist", arch="resnet18").resolved()  # random weights: nothing to spare
    assert (scratch.warmup_steps, scratch.backbone_lr_scale, scratch.lr) == (0, 1.0, 0.002)
    # The unlabelled loss ramps up over the whole run where it fine-tunes (the preset's 2000 of 5000 otherwise);
    # FixMatch, which has no ramp-up, keeps none; a flag wins.
    assert cfg.rampup_steps == 0 and scratch.rampup_steps == 2000
    for steps in (5000, 300):
        ramped = TrainConfig(dataset="fashion-mnist", arch="resnet18", weights=str(resnet18_file), steps=steps)
        assert ramped.resolved().rampup_steps == steps
    own = TrainConfig(dataset="fashion-mnist", arch="resnet18", weights=str(resnet18_file), rampup_steps=40)
    assert own.resolved().rampup_steps == 40
    with pytest.raises(ConfigError, match="backbone_lr_scale is for torchvision and timm backbones, not wrn10_1"):
        TrainConfig(arch="wrn10_1", backbone_lr_scale=0.5).validate()
    with pytest.raises(ConfigError, match="the onecycle schedule warms the learning rate up itself"):
        TrainConfig(warmup_steps=10, schedule="onecycle").validate()


def test_the_schedule_warms_up_linearly_then_follows_its_shape():
    from mixmatch.training.trainer import cosine_factor, schedule_factor

    assert schedule_factor("constant", 100, 0) is None
    constant = schedule_factor("constant", 100, 10)
    assert [constant(k) for k in (0, 4, 9, 10, 99)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    cosine, plain = schedule_factor("cosine", 100, 10), cosine_factor(100)
    assert cosine(4) == pytest.approx(0.5 * plain(4)) and cosine(50) == plain(50)


@pytest.mark.slow
def test_the_backbone_learns_at_its_share_of_the_rate_and_decays_at_its_own(digits, resnet18_file):
    cfg = TrainConfig(dataset="digits", arch="resnet18", weights=str(resnet18_file), steps=20, warmup_steps=4,
                      backbone_lr_scale=0.25, lr=0.004, weight_decay=0.5, amp="off", progress=False, out=None)
    trainer = Trainer(cfg, digits)
    body, head = trainer.optimizer.param_groups
    assert [p is trainer.model.fc.weight for p in head["params"]] == [True, False]  # fc weight and bias
    assert len(body["params"]) + 2 == len(list(trainer.model.parameters()))
    assert (body["lr"], head["lr"]) == pytest.approx((0.004 * 0.25 / 4, 0.004 / 4))  # step 0 of the warm-up
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    for p in trainer.model.parameters():  # a step that moves nothing but the decay
        p.requires_grad_(False)
    trainer.optimizer.step = lambda: None
    trainer.method.batch_loss = lambda ctx, batch: (torch.zeros((), requires_grad=True),) * 3
    trainer.train_step()
    scale = {name: p / before[name] for name, p in trainer.model.named_parameters() if before[name].abs().min() > 0}
    torch.testing.assert_close(scale["fc.weight"], torch.full_like(scale["fc.weight"], 1 - 0.5 * 0.001))
    torch.testing.assert_close(scale["layer1.0.conv1.weight"], torch.full_like(before["layer1.0.conv1.weight"],
                                                                                1 - 0.5 * 0.00025))
    assert torch.equal(trainer.model.bn1.weight, before["bn1.weight"])  # BatchNorm is not decayed
    assert (body["lr"], head["lr"]) == pytest.approx((0.004 * 0.25 / 2, 0.004 / 2))  # step 1
