import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixmatch.augment import Augmenter, _reflect, crop_flip, cutout, fastai_augment, normalize


def test_reflect_matches_numpy_reflect_padding():
    size, pad = 6, 4
    padded = np.pad(np.arange(size), pad, mode="reflect")
    index = torch.arange(-pad, size + pad)
    assert _reflect(index, size).tolist() == padded.tolist()


def all_crops(image: np.ndarray, pad: int, flip: bool) -> list[np.ndarray]:
    """Every crop (and mirror) the paper's augmentation can produce from one (C, H, W) image."""
    c, h, w = image.shape
    padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    crops = [padded[:, y : y + h, x : x + w] for y in range(2 * pad + 1) for x in range(2 * pad + 1)]
    return crops + [crop[:, :, ::-1] for crop in crops] if flip else crops


@pytest.mark.parametrize(("pad", "flip"), [(4, True), (2, False), (0, True)])
def test_crop_flip_yields_only_reflect_padded_crops(pad, flip):
    images = torch.randint(0, 256, (16, 3, 12, 10), dtype=torch.uint8)
    out = crop_flip(images, pad, flip)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for i in range(len(images)):
        candidates = all_crops(images[i].numpy(), pad, flip)
        assert any(np.array_equal(out[i].numpy(), c) for c in candidates)


def test_crop_flip_is_random_per_example():
    image = torch.randint(0, 256, (1, 1, 8, 8), dtype=torch.uint8)
    out = crop_flip(image.repeat(64, 1, 1, 1), 2, True)
    assert len({tuple(o.flatten().tolist()) for o in out}) > 20


def test_no_pad_no_flip_is_identity():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    assert torch.equal(crop_flip(images, 0, False), images)


def test_normalize_uint8_to_standardised_float():
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.5, 1.0]), torch.tensor([0.5, 0.25, 1.0])
    out = normalize(images, mean, std)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[:, :, 0, 0], torch.tensor([[1.0, 2.0, 0.0]] * 2))
    assert normalize(images, mean, std, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_views_are_k_independent_augmentations():
    aug = Augmenter(torch.zeros(3), torch.ones(3), pad=4, flip=True)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    views = aug.views(images, 3)
    assert views.shape == (3, 8, 3, 32, 32) and views.dtype == torch.float32
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    # each view is an augmentation of the same source image
    for k in range(3):
        src = images[5].numpy() / 255
        assert any(np.allclose(views[k, 5].numpy(), c) for c in all_crops(src, 4, True))


def test_augmenter_keeps_data_on_its_device():
    aug = Augmenter(torch.zeros(1), torch.ones(1), pad=1, flip=False, channels_last=True)
    out = aug(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    assert out.device == torch.device("cpu") and out.is_contiguous(memory_format=torch.channels_last)


def test_batch_and_views_is_the_batch_and_its_views_in_one_call():
    mean, std = torch.tensor([0.5]), torch.tensor([0.25])
    x = torch.randint(0, 256, (3, 1, 6, 6), dtype=torch.uint8)
    u = torch.randint(0, 256, (4, 1, 6, 6), dtype=torch.uint8)
    plain = Augmenter(mean, std, pad=0, flip=False)
    xa, views = plain.batch_and_views(x, u, 2)
    assert torch.equal(xa, plain.plain(x)) and views.shape == (2, 4, 1, 6, 6)
    assert all(torch.equal(view, plain.plain(u)) for view in views)
    random_views = Augmenter(mean, std, pad=2, flip=True).batch_and_views(x, u, 2)[1]
    assert not torch.equal(random_views[0], random_views[1])  # independent draws per view


@settings(max_examples=50, deadline=None)
@given(height=st.integers(1, 12), width=st.integers(1, 12), size=st.integers(0, 14), seed=st.integers(0, 2**16))
def test_cutout_fills_one_clipped_square_per_image_and_nothing_else(height, width, size, seed):
    torch.manual_seed(seed)
    images = torch.randint(0, 127, (5, 2, height, width), dtype=torch.uint8)  # never the fill value
    out = cutout(images, size, fill=200)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for image, result in zip(images, out, strict=True):
        filled = result == 200
        assert torch.equal(filled[0], filled[1])  # the same square in every channel
        assert torch.equal(result[~filled], image[~filled])
        rows, cols = filled[0].nonzero(as_tuple=True)
        if size == 0:
            assert rows.numel() == 0
            continue
        # one square of side `size` whose centre is inside the image, cut off at the borders
        assert rows.numel() >= 1 and rows.max() - rows.min() < size and cols.max() - cols.min() < size
        assert rows.numel() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert (rows.max() - rows.min() + 1 == size) or rows.min() == 0 or rows.max() == height - 1
        assert (cols.max() - cols.min() + 1 == size) or cols.min() == 0 or cols.max() == width - 1


def test_strong_views_are_k_seeded_views_unlike_the_weak_ones():
    aug = Augmenter(torch.tensor([0.5]), torch.tensor([0.25]), pad=2, flip=True)
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    torch.manual_seed(0)
    strong = aug.strong_views(images, 2)
    assert strong.shape == (2, 20, 1, 28, 28) and strong.dtype == torch.float32
    torch.manual_seed(0)
    assert torch.equal(aug.strong_views(images, 2), strong)  # the global RNG decides everything
    assert not torch.equal(strong[0], strong[1])
    gray = (127 / 255 - 0.5) / 0.25
    # Cutout takes at least a quarter of the side squared from every view (a corner centre), at most 14^2
    covered = torch.isclose(strong, torch.tensor(gray), atol=1e-5).flatten(2).sum(-1)
    assert (covered >= 7 * 7).all() and (covered <= 14 * 14 + 28 * 28 // 4).all()


# ---- the seed's augmentation: fastai's aug_transforms() ---------------------------------------------------


def test_fastai_augment_without_its_draws_is_the_image_and_with_them_stays_in_range():
    images = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    plain = fastai_augment(images, flip=False, p_affine=0.0, p_lighting=0.0)
    torch.testing.assert_close(plain, images.float() / 255, atol=1e-5, rtol=0)  # an identity grid, no lighting
    torch.manual_seed(0)
    out = fastai_augment(images)
    assert out.shape == images.shape and out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, images.float() / 255, atol=0.05)
    torch.manual_seed(0)
    torch.testing.assert_close(fastai_augment(images), out)  # seeded: the same draws


def test_fastai_augment_flips_and_only_where_asked():
    image = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    image[..., :4] = 255  # the left half white
    flips = torch.stack([fastai_augment(image, flip=True, p_affine=0.0, p_lighting=0.0) for _ in range(40)])
    left = flips[..., :4].mean((1, 2, 3, 4))
    assert ((left > 0.99) | (left < 0.01)).all() and 0 < (left < 0.01).sum() < 40  # whole flips, some of them
    never = torch.stack([fastai_augment(image, flip=False, p_affine=0.0, p_lighting=0.0) for _ in range(10)])
    assert (never[..., :4] > 0.99).all()


def test_lighting_moves_brightness_in_logit_space_around_the_middle_grey():
    grey = torch.full((200, 1, 4, 4), 128, dtype=torch.uint8)
    out = fastai_augment(grey, flip=False, p_affine=0.0, p_lighting=1.0)
    means = out.mean((1, 2, 3))
    assert means.min() > 0.35 and means.max() < 0.65 and means.std() > 0.02  # brightness U(0.4, 0.6) around 0.5


def test_the_augmenter_takes_a_family_and_refuses_others():
    mean, std = torch.tensor([0.5]), torch.tensor([0.25])
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    fastai = Augmenter(mean, std, pad=2, flip=True, family="fastai")
    assert fastai(images).shape == images.shape and fastai.strong_views(images, 2).shape == (2, 4, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown augmentation 'autoaugment'; choose one of crop-flip, fastai"):
        Augmenter(mean, std, pad=2, flip=True, family="autoaugment")
