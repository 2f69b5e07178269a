"""MixMatchStep: the one step object of the Trainer and the fastai callback, on its own."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import LookupModel
from mixmatch import algorithm
from mixmatch.config import TrainConfig
from mixmatch.methods.mixmatch import ALIGNMENT_DECAY, MIX_MODES, MixMatchStep, class_marginal


def lookup_views(k: int, b: int) -> torch.Tensor:
    return torch.arange(k * b, dtype=torch.float32).view(k, b, 1, 1, 1).expand(k, b, 1, 2, 2)


def test_from_config_takes_the_mixmatch_fields():
    cfg = TrainConfig(k=3, temperature=0.4, alpha=0.5, lambda_u=10, rampup_steps=7, mix="separate",
                      bn_mode="interleave").resolved()
    step = MixMatchStep.from_config(cfg)
    assert (step.K, step.T, step.alpha, step.lambda_u, step.rampup_steps) == (3, 0.4, 0.5, 10, 7)
    assert (step.mix_mode, step.bn_mode, step.distribution_alignment) == ("separate", "interleave", False)
    assert step.guess_marginal is None
    assert not MixMatchStep.from_config(cfg, labeled_y=torch.tensor([0, 0, 1, 2]), num_classes=3).distribution_alignment
    cfg.distribution_alignment = True
    aligned = MixMatchStep.from_config(cfg, labeled_y=torch.tensor([0, 0, 1, 2]), num_classes=3)
    assert aligned.distribution_alignment
    torch.testing.assert_close(aligned.labeled_marginal, torch.tensor([0.5, 0.25, 0.25]))
    torch.testing.assert_close(aligned.guess_marginal, torch.full((3,), 1 / 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(K=0), "K must be >= 1"),
        (dict(T=0.0), "T must be > 0"),
        (dict(alpha=-0.1), "alpha and lambda_u must be >= 0"),
        (dict(lambda_u=-3.0), "alpha and lambda_u must be >= 0"),
        (dict(mix="both"), "mix must be one of all, labeled, unlabeled, separate"),
        (dict(bn_mode="split"), "bn_mode must be one of concat, interleave"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixMatchStep(**kwargs)


def test_lambda_u_ramps_up_linearly_then_stays():
    step = MixMatchStep(lambda_u=75, rampup_steps=4)
    assert [step.lambda_u_at(s) for s in (0, 1, 2, 4, 100)] == [0.0, 18.75, 37.5, 75.0, 75.0]
    assert MixMatchStep(lambda_u=75, rampup_steps=0).lambda_u_at(0) == 75.0


def test_loss_weights_l_u_by_the_given_lambda_u():
    torch.manual_seed(0)
    lx, lu, tu = torch.randn(4, 3), torch.randn(8, 3), torch.softmax(torch.randn(8, 3), -1)
    tx = F.one_hot(torch.tensor([0, 1, 2, 0]), 3).float()
    step = MixMatchStep(lambda_u=75, rampup_steps=4)
    total, loss_x, loss_u = step.loss(lx, tx, lu, tu, step.lambda_u_at(2))
    torch.testing.assert_close(total, loss_x + 37.5 * loss_u)
    torch.testing.assert_close(loss_x, algorithm.soft_cross_entropy(lx, tx))
    torch.testing.assert_close(loss_u, algorithm.l2_consistency(lu, tu))


@settings(deadline=None, max_examples=30)
@given(k=st.integers(1, 3), b=st.integers(1, 6), T=st.floats(0.1, 2.0), seed=st.integers(0, 2**16))
def test_guess_averages_views_and_sharpens_with_T(k, b, T, seed):
    table = torch.randn(k * b, 4, generator=torch.Generator().manual_seed(seed))
    q = MixMatchStep(K=k, T=T).guess(LookupModel(table), lookup_views(k, b))
    torch.testing.assert_close(q, algorithm.sharpen(torch.softmax(table, -1).view(k, b, 4).mean(0), T))


def test_guess_calls_forward_and_freezes_the_models_batchnorm():
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(4, 3)).train()
    calls = []

    def forward(x):
        calls.append(x.shape)
        return model(x)

    q = MixMatchStep(K=2).guess(model, torch.randn(2, 5, 1, 2, 2) + 3, forward)
    assert calls == [(10, 1, 2, 2)] and q.shape == (5, 3) and not q.requires_grad
    assert torch.equal(model[0].running_mean, torch.zeros(1)) and int(model[0].num_batches_tracked) == 0


def test_guess_moves_the_alignment_marginal_only_when_asked():
    table = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    model, views = LookupModel(table), lookup_views(2, 2)
    target = torch.tensor([0.2, 0.3, 0.5])
    step = MixMatchStep(K=2, T=0.5, labeled_marginal=target)
    p = torch.softmax(table, -1).view(2, 2, 3).mean(0)
    uniform = torch.full((3,), 1 / 3)

    q = step.guess(model, views, update_alignment=False)
    torch.testing.assert_close(step.guess_marginal, uniform)  # left as it was
    torch.testing.assert_close(q, algorithm.sharpen(algorithm.align_distribution(p, uniform, target), 0.5))

    q = step.guess(model, views)
    moved = uniform.lerp(p.mean(0), 1 - ALIGNMENT_DECAY)
    torch.testing.assert_close(step.guess_marginal, moved)  # first moved, then used
    torch.testing.assert_close(q, algorithm.sharpen(algorithm.align_distribution(p, moved, target), 0.5))


def test_the_marginal_moves_by_the_injected_average_of_processes():
    """Under torchrun the batch mean of the guesses is averaged over processes before it enters the marginal."""
    seen = []
    other = torch.tensor([0.0, 0.0, 1.0])  # what the other processes' mean brings in

    def average(t):
        seen.append(t.clone())
        return (t + other) / 2

    table = torch.randn(4, 3)
    step = MixMatchStep(K=2, labeled_marginal=torch.full((3,), 1 / 3), average=average)
    step.guess(LookupModel(table), lookup_views(2, 2))
    p = torch.softmax(table, -1).view(2, 2, 3).mean(0)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], p.mean(0))
    torch.testing.assert_close(step.guess_marginal, torch.full((3,), 1 / 3).lerp((p.mean(0) + other) / 2, 0.01))


def test_class_marginal_counts_every_class():
    marginal = class_marginal(torch.tensor([0, 0, 2, 2, 2, 1, 0, 0]), 4)
    assert torch.equal(marginal, torch.tensor([0.5, 0.125, 0.375, 0.0]))


def mix_inputs(b=32, k=2):
    """X all +1 with label 0, U all -1 guessed as class 1: a mixed value shows where its partner came from."""
    x, u = torch.ones(b, 1, 1, 1), -torch.ones(k, b, 1, 1, 1)
    p, q = torch.eye(2)[torch.zeros(b, dtype=torch.long)], torch.eye(2)[torch.ones(b, dtype=torch.long)]
    return x, p, u, q


@pytest.mark.parametrize("mode", MIX_MODES)
def test_each_mix_mode_draws_partners_from_where_it_says(mode):
    torch.manual_seed(0)
    x, p, u, q = mix_inputs()
    x_mix, p_mix, u_mix, q_mix = MixMatchStep(mix=mode).mix(x, p, u, q)
    assert x_mix.shape == (32, 1, 1, 1) and u_mix.shape == (64, 1, 1, 1) and q_mix.shape == (64, 2)
    # An X' row has an unlabelled partner exactly when its value (and its target) moved off +1 (class 0).
    x_has_u_partner, u_has_x_partner = x_mix < 1, u_mix > -1
    assert x_has_u_partner.any() == (mode == "all") and u_has_x_partner.any() == (mode == "all")
    assert torch.equal(x_has_u_partner.flatten(), p_mix[:, 1] > 0)
    torch.testing.assert_close(p_mix.sum(-1), torch.ones(32))
    if mode == "all":
        assert (x_mix == 1).any() and (u_mix == -1).any()
        torch.manual_seed(0)
        ref = algorithm.mix_batches(x, p, u, q, 0.75)
        for a, b in zip((x_mix, p_mix, u_mix, q_mix), ref, strict=True):
            assert torch.equal(a, b)  # the paper's mode is algorithm.mixmatch, draw for draw


@pytest.mark.parametrize("mode", ["labeled", "unlabeled", "separate"])
def test_an_ablation_mixes_within_a_part_and_leaves_the_other(mode):
    torch.manual_seed(0)
    x, u = torch.randn(16, 1, 2, 2), torch.randn(2, 16, 1, 2, 2)
    p, q = F.one_hot(torch.arange(16) % 3, 3).float(), torch.softmax(torch.randn(16, 3), -1)
    x_mix, p_mix, u_mix, q_mix = MixMatchStep(mix=mode).mix(x, p, u, q)
    x_mixed, u_mixed = not torch.equal(x_mix, x), not torch.equal(u_mix, u.flatten(0, 1))
    assert x_mixed == (mode != "unlabeled") and u_mixed == (mode != "labeled")
    if not x_mixed:
        assert torch.equal(p_mix, p)
    if not u_mixed:
        assert torch.equal(q_mix, q.repeat(2, 1))


def test_alpha_zero_leaves_every_mode_unmixed():
    x, p, u, q = mix_inputs()
    for mode in MIX_MODES:
        x_mix, p_mix, u_mix, q_mix = MixMatchStep(alpha=0.0, mix=mode).mix(x, p, u, q)
        assert torch.equal(x_mix, x) and torch.equal(p_mix, p) and torch.equal(q_mix, q.repeat(2, 1))


def small_bn_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 16, 3))


@pytest.mark.parametrize("bn_mode", ["concat", "interleave"])
def test_forward_mixed_updates_running_stats_once(bn_mode):
    model = small_bn_model().train()
    logits_x, logits_u = MixMatchStep(bn_mode=bn_mode).forward_mixed(model, torch.randn(8, 1, 4, 4),
                                                                     torch.randn(16, 1, 4, 4))
    assert logits_x.shape == (8, 3) and logits_u.shape == (16, 3)
    assert int(model[1].num_batches_tracked) == 1


def test_interleave_batch_statistics_differ_from_concat_in_training_mode():
    """In training mode the two modes normalise with different batches: the mode really changes the pass."""
    model = small_bn_model().train()
    torch.manual_seed(0)
    x, u = torch.randn(8, 1, 4, 4), torch.randn(16, 1, 4, 4) + 2
    concat = MixMatchStep(bn_mode="concat").forward_mixed(model, x, u)
    inter = MixMatchStep(bn_mode="interleave").forward_mixed(model, x, u)
    assert not torch.allclose(concat[0], inter[0])
    model.eval()
    concat = MixMatchStep(bn_mode="concat").forward_mixed(model, x, u)
    inter = MixMatchStep(bn_mode="interleave").forward_mixed(model, x, u)
    for a, b in zip(concat, inter, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
