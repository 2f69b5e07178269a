import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import LookupModel
from mixmatch import algorithm

settings.register_profile("ci", deadline=None, max_examples=40)
settings.load_profile("ci")

dims = st.integers(min_value=1, max_value=12)
temperatures = st.floats(min_value=0.05, max_value=5.0)


def random_probs(n: int, classes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(n, classes, generator=g), dim=-1)


@given(n=dims, classes=st.integers(2, 12), T=temperatures, seed=st.integers(0, 2**16))
def test_sharpen_rows_sum_to_one_and_keep_argmax(n, classes, T, seed):
    p = random_probs(n, classes, seed)
    q = algorithm.sharpen(p, T)
    assert q.shape == p.shape
    torch.testing.assert_close(q.sum(-1), torch.ones(n))
    assert (q >= 0).all()
    assert torch.equal(q.argmax(-1), p.argmax(-1))


@given(n=dims, classes=st.integers(2, 12), seed=st.integers(0, 2**16))
def test_sharpen_t1_is_identity(n, classes, seed):
    p = random_probs(n, classes, seed)
    torch.testing.assert_close(algorithm.sharpen(p, 1.0), p)


@given(n=dims, classes=st.integers(2, 12), seed=st.integers(0, 2**16), T=st.floats(0.1, 0.9))
def test_sharpen_lowers_entropy_below_t1(n, classes, seed, T):
    p = random_probs(n, classes, seed)

    def entropy(x):
        return -(x * x.clamp_min(1e-30).log()).sum(-1)

    assert (entropy(algorithm.sharpen(p, T)) <= entropy(p) + 1e-5).all()


def test_sharpen_tends_to_one_hot():
    p = torch.tensor([[0.3, 0.5, 0.2], [0.34, 0.33, 0.33]])
    q = algorithm.sharpen(p, 1e-3)
    torch.testing.assert_close(q, F.one_hot(p.argmax(-1), 3).float())


def test_sharpen_refuses_nonpositive_temperature():
    with pytest.raises(ValueError, match="T must be > 0"):
        algorithm.sharpen(torch.ones(1, 2) / 2, 0.0)


@given(n=st.integers(1, 64), alpha=st.floats(0.05, 10.0))
def test_mix_weights_at_least_half(n, alpha):
    lam = algorithm.sample_mix_weights(n, alpha, torch.zeros(1))
    assert lam.shape == (n,)
    assert ((lam >= 0.5) & (lam <= 1.0)).all()


@given(n=st.integers(1, 32), classes=st.integers(2, 10), alpha=st.floats(0.05, 10.0), seed=st.integers(0, 2**16))
def test_mixup_stays_closer_to_first_input(n, classes, alpha, seed):
    torch.manual_seed(seed)
    x1, x2 = torch.ones(n, 3, 4, 4), torch.zeros(n, 3, 4, 4)
    y1, y2 = random_probs(n, classes, seed), random_probs(n, classes, seed + 1)
    x, y = algorithm.mixup(x1, y1, x2, y2, alpha)
    lam = x[:, 0, 0, 0]
    assert x.shape == x1.shape and y.shape == y1.shape
    assert (lam >= 0.5).all()
    # One lambda per example, the same for every pixel and for the label.
    torch.testing.assert_close(x, lam.view(-1, 1, 1, 1).expand_as(x))
    torch.testing.assert_close(y, lam[:, None] * y1 + (1 - lam[:, None]) * y2)
    torch.testing.assert_close(y.sum(-1), torch.ones(n))


def test_mixup_draws_one_lambda_per_example():
    half = torch.ones(256, 2) / 2
    x, _ = algorithm.mixup(torch.ones(256, 1), half, torch.zeros(256, 1), half, 0.75)
    assert x.unique().numel() > 200


def test_mixup_alpha_zero_is_no_mixing():
    x1, x2 = torch.randn(5, 3), torch.randn(5, 3)
    y1, y2 = torch.eye(3)[[0, 1, 2, 0, 1]], torch.eye(3)[[2, 2, 2, 2, 2]]
    x, y = algorithm.mixup(x1, y1, x2, y2, 0.0)
    torch.testing.assert_close(x, x1)
    torch.testing.assert_close(y, y1)


def test_mix_weights_follow_folded_beta():
    # E[max(l, 1-l)] for l ~ Beta(1, 1) (uniform) is 3/4.
    lam = algorithm.sample_mix_weights(200_000, 1.0, torch.zeros(1))
    assert abs(lam.mean().item() - 0.75) < 0.005


@given(k=st.integers(1, 4), b=st.integers(1, 8), T=temperatures, seed=st.integers(0, 2**16))
def test_guess_labels_averages_views_then_sharpens(k, b, T, seed):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(k * b, 5, generator=g)
    views = torch.arange(k * b, dtype=torch.float32).view(k, b, 1, 1, 1).expand(k, b, 1, 2, 2)
    q = algorithm.guess_labels(LookupModel(table), views, T)
    expected = algorithm.sharpen(torch.softmax(table, -1).view(k, b, 5).mean(0), T)
    assert q.shape == (b, 5)
    torch.testing.assert_close(q, expected)
    torch.testing.assert_close(q.sum(-1), torch.ones(b))


def test_guess_labels_has_no_gradient():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    q = algorithm.guess_labels(model, torch.randn(2, 3, 3, 2, 2), 0.5)
    assert not q.requires_grad


def test_frozen_batchnorm_keeps_running_stats_and_uses_batch_stats():
    model = nn.Sequential(nn.BatchNorm2d(3, momentum=0.5)).train()
    before = [model[0].running_mean.clone(), model[0].running_var.clone(), model[0].num_batches_tracked.clone()]
    x = torch.randn(8, 3, 4, 4) + 5
    with algorithm.frozen_batchnorm_stats(model):
        out = model(x)
    after = [model[0].running_mean, model[0].running_var, model[0].num_batches_tracked]
    assert all(torch.equal(kept, now) for kept, now in zip(before, after, strict=True))
    torch.testing.assert_close(out, F.batch_norm(x, None, None, training=True, eps=model[0].eps))
    assert model[0].momentum == 0.5 and model[0].track_running_stats
    model(x)
    assert not torch.equal(model[0].running_mean, before[0])


@given(k=st.integers(1, 3), b=st.integers(1, 8), alpha=st.floats(0.0, 4.0), seed=st.integers(0, 2**16))
def test_mixmatch_batch_assembly(k, b, alpha, seed):
    torch.manual_seed(seed)
    classes = 4
    x = torch.full((b, 1, 2, 2), 10.0)
    u = torch.full((k, b, 1, 2, 2), -10.0)
    p = F.one_hot(torch.randint(classes, (b,)), classes).float()
    q = random_probs(b, classes, seed)
    x_mix, p_mix, u_mix, q_mix = algorithm.mix_batches(x, p, u, q, alpha)
    assert x_mix.shape == (b, 1, 2, 2) and p_mix.shape == (b, classes)
    assert u_mix.shape == (k * b, 1, 2, 2) and q_mix.shape == (k * b, classes)
    torch.testing.assert_close(p_mix.sum(-1), torch.ones(b))
    torch.testing.assert_close(q_mix.sum(-1), torch.ones(k * b))
    # lambda' >= 0.5: each mixed labelled image stays on the labelled side, each unlabelled one on its side.
    assert (x_mix >= 0).all() and (u_mix <= 0).all()
    if alpha < 1e-6:
        torch.testing.assert_close(x_mix, x)
        torch.testing.assert_close(q_mix, q.repeat(k, 1))


def test_mixmatch_partners_come_from_both_sets():
    torch.manual_seed(0)
    b, k = 64, 2
    x = torch.full((b, 1, 1, 1), 1.0)
    u = torch.full((k, b, 1, 1, 1), -1.0)
    p = torch.eye(2)[torch.zeros(b, dtype=torch.long)]
    q = torch.eye(2)[torch.ones(b, dtype=torch.long)]
    x_mix, _, u_mix, _ = algorithm.mix_batches(x, p, u, q, 0.75)
    assert (x_mix < 1).any() and (x_mix == 1).any()  # some X' partners are unlabelled, some labelled
    assert (u_mix > -1).any() and (u_mix == -1).any()


@given(batch=st.integers(3, 100), nu=st.integers(1, 4))
def test_interleave_offsets_cover_the_batch(batch, nu):
    offsets = algorithm.interleave_offsets(batch, nu)
    assert offsets[0] == 0 and offsets[-1] == batch and len(offsets) == nu + 2
    sizes = [b - a for a, b in zip(offsets, offsets[1:], strict=False)]
    assert max(sizes) - min(sizes) <= 1


@given(batch=st.integers(3, 40), nu=st.integers(1, 3))
def test_interleave_is_its_own_inverse_and_mixes(batch, nu):
    batches = [torch.full((batch, 2), float(i)) for i in range(nu + 1)]
    mixed = algorithm.interleave(batches, batch)
    assert all(m.shape == (batch, 2) for m in mixed)
    if batch >= nu + 1:
        assert set(mixed[0][:, 0].tolist()) == set(range(nu + 1))
    restored = algorithm.interleave(mixed, batch)
    for a, b in zip(restored, batches, strict=True):
        torch.testing.assert_close(a, b)


def test_linear_rampup_at_start_half_and_end():
    assert algorithm.linear_rampup(0, 3000) == 0.0
    assert algorithm.linear_rampup(1500, 3000) == 0.5
    assert algorithm.linear_rampup(3000, 3000) == 1.0
    assert algorithm.linear_rampup(10_000, 3000) == 1.0
    assert algorithm.linear_rampup(5, 0) == 1.0
    ramp = algorithm.linear_rampup(torch.tensor([0, 1500, 4000]), 3000)
    torch.testing.assert_close(ramp, torch.tensor([0.0, 0.5, 1.0]))


def test_soft_cross_entropy_matches_hard_labels():
    logits = torch.randn(6, 5)
    labels = torch.randint(5, (6,))
    torch.testing.assert_close(
        algorithm.soft_cross_entropy(logits, F.one_hot(labels, 5).float()), F.cross_entropy(logits, labels)
    )


def test_l2_is_squared_error_over_classes_and_batch():
    logits = torch.randn(4, 10)
    targets = torch.softmax(torch.randn(4, 10), -1)
    probs = torch.softmax(logits, -1)
    expected = sum(((probs[i] - targets[i]) ** 2).sum() / 10 for i in range(4)) / 4
    torch.testing.assert_close(algorithm.l2_consistency(logits, targets), expected)


def test_mixmatch_loss_combines_terms():
    lx, lu = torch.randn(4, 3), torch.randn(8, 3)
    tx, tu = torch.softmax(torch.randn(4, 3), -1), torch.softmax(torch.randn(8, 3), -1)
    total, loss_x, loss_u = algorithm.mixmatch_loss(lx, tx, lu, tu, 75.0)
    torch.testing.assert_close(total, loss_x + 75.0 * loss_u)
    assert math.isclose(loss_u.item(), algorithm.l2_consistency(lu, tu).item())


@given(n=dims, classes=st.integers(2, 12), seed=st.integers(0, 2**16))
def test_distribution_alignment_is_a_renormalised_reweighting(n, classes, seed):
    p = random_probs(n, classes, seed)
    model_marginal = random_probs(1, classes, seed + 1)[0].clamp_min(1e-3)
    target = torch.full((classes,), 1 / classes)
    aligned = algorithm.align_distribution(p, model_marginal, target)
    torch.testing.assert_close(aligned.sum(-1), torch.ones(n))
    # Every row is p scaled class by class by the same weights target / model (up to its own normaliser).
    weights = target / model_marginal
    scale = aligned / p
    torch.testing.assert_close(scale / scale[:, :1], (weights / weights[0]).expand(n, -1), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(algorithm.align_distribution(p, target, target), p)


def test_distribution_alignment_brings_back_a_vanishing_class():
    """Guesses that under-predict class 2 (marginal 0.05 against 1/3 labelled) get class 2 raised."""
    p = torch.tensor([[0.5, 0.3, 0.2], [0.45, 0.45, 0.1]])
    aligned = algorithm.align_distribution(p, torch.tensor([0.5, 0.45, 0.05]), torch.full((3,), 1 / 3))
    assert (aligned[:, 2] > p[:, 2]).all() and aligned[0].argmax() == 2


def test_guess_labels_aligns_before_sharpening():
    table = torch.randn(6, 4)
    views = torch.arange(6, dtype=torch.float32).view(2, 3, 1, 1, 1).expand(2, 3, 1, 2, 2)
    marginal, target = torch.tensor([0.4, 0.3, 0.2, 0.1]), torch.full((4,), 0.25)

    def aligned(p):
        return algorithm.align_distribution(p, marginal, target)

    q = algorithm.guess_labels(LookupModel(table), views, 0.5, aligned)
    p = torch.softmax(table, -1).view(2, 3, 4).mean(0)
    torch.testing.assert_close(q, algorithm.sharpen(algorithm.align_distribution(p, marginal, target), 0.5))
