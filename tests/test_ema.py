import torch
from torch import nn

from mixmatch.ema import EMA


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_update_is_the_exponential_average_of_every_float_tensor_and_copies_counters():
    model = small_model()
    ema = EMA(model, decay=0.9)
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
