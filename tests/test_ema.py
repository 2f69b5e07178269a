"""The EMA of the weights: the plain average, its warm-up, and its state."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mixmatch.ema import EMA


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_update_is_the_exponential_average_of_every_float_tensor_and_copies_counters():
    model = small_model()
    ema = EMA(model, decay=0.9, warmup=False)
    start = [t.clone() for t in [*model.parameters(), *model.buffers()]]
    model.train()(torch.randn(5, 1, 8, 8))  # moves BatchNorm's running statistics and its counter
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    averaged = [*ema.module.parameters(), *ema.module.buffers()]
    for s, e, w in zip(start, averaged, [*model.parameters(), *model.buffers()], strict=True):
        if e.is_floating_point():
            torch.testing.assert_close(e, 0.9 * s + 0.1 * w)
        else:
            assert torch.equal(e, w)
    assert int(ema.updates) == 1
    assert not any(p.requires_grad for p in ema.parameters())


def test_a_zero_decay_average_is_the_model_and_the_average_converges_to_a_fixed_model():
    model = small_model()
    ema = EMA(model, decay=0.0)
    with torch.no_grad():
        model[3].weight.mul_(2)
    ema.update(model)
    assert torch.equal(ema.module[3].weight, model[3].weight)
    slow = EMA(small_model(), decay=0.5)
    for _ in range(60):
        slow.update(model)
    torch.testing.assert_close(slow.module[3].weight, model[3].weight)


def test_state_dict_round_trip_and_bad_decay():
    ema = EMA(small_model(), 0.999)
    ema.update(small_model())
    other = EMA(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)), 0.999)
    other.load_state_dict(ema.state_dict())
    assert int(other.updates) == 1
    for bad in (1.0, -0.1):
        try:
            EMA(small_model(), bad)
        except ValueError as error:
            assert "decay" in str(error)
        else:
            raise AssertionError("accepted a decay outside [0, 1)")


def test_warmup_decay_follows_tensorflows_num_updates_schedule():
    ema = EMA(small_model(), 0.999)
    decays = []
    for t in range(10_000):
        if t in (0, 1, 80, 8989, 8990, 9999):
            decays.append(ema.current_decay().item())
        ema.updates += 1
    expected = [0.1, 2 / 11, 0.9, 8990 / 8999, 0.999, 0.999]
    torch.testing.assert_close(torch.tensor(decays), torch.tensor(expected))
    assert EMA(small_model(), 0.999, warmup=False).current_decay().item() == torch.tensor(0.999).item()


@settings(max_examples=25, deadline=None)
@given(decay=st.floats(0.0, 0.9999), updates=st.integers(0, 50_000), seed=st.integers(0, 2**16))
def test_warmup_update_is_a_lerp_with_the_warmed_up_decay(decay, updates, seed):
    torch.manual_seed(seed)
    model = small_model()
    ema = EMA(model, decay)
    ema.updates.fill_(updates)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    before = [t.clone() for t in ema.module.parameters()]
    d = min(decay, (1 + updates) / (10 + updates))
    ema.update(model)
    for b, e, w in zip(before, ema.module.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(e, d * b + (1 - d) * w, atol=1e-6, rtol=1e-5)
    assert int(ema.updates) == updates + 1


def test_warmup_forgets_the_initial_weights_and_resumes_where_it_stopped():
    model = small_model()
    warm, plain = EMA(model, 0.999), EMA(model, 0.999, warmup=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for _ in range(100):
        warm.update(model)
        plain.update(model)
    # After 100 updates the warmed-up average holds the initial weights with weight prod(d_t) < 1e-3
    # (plain: 0.999 ** 100 = 0.90).
    gap = [(e - w).abs().max() for e, w in zip(warm.module.parameters(), model.parameters(), strict=True)]
    assert max(gap) < 1e-3
    assert min((e - w).abs().max() for e, w in zip(plain.module.parameters(), model.parameters(), strict=True)) > 0.8
    again = EMA(small_model(), 0.999)
    again.load_state_dict(warm.state_dict())
    assert int(again.updates) == 100
    torch.testing.assert_close(again.current_decay(), warm.current_decay())
