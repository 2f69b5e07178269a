"""How well VAT's finite-difference power iteration finds the direction it estimates, at each step size xi.

vat_utils.generate_perturbation (google-research/mixmatch third_party) takes the gradient of KL(clean || perturbed)
at a step of xi = 1e-6 along a random direction: a finite-difference estimate of the KL's Hessian times that
direction. This prints, for several xi, the cosine between that gradient (in float32, as the official code and
mixmatch.methods.vat compute it) and the exact Hessian-vector product (double backward), per image: WRN-10-1 after
a few steps of training, on augmented Fashion-MNIST images (or random ones without --data-dir).

    python bench/vat_xi.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from mixmatch.algorithm import frozen_batchnorm_stats
from mixmatch.augment import Augmenter
from mixmatch.data import load_dataset
from mixmatch.methods.vat import kl_from_logits, unit_directions
from mixmatch.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST in torchvision's layout (else random images)")
    parser.add_argument("--xi", nargs="+", type=float, default=[1e-6, 1e-4, 1e-2, 1e-1])
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.data_dir:
        data = load_dataset("fashion-mnist", args.data_dir)
        images, labels = data.train_images, data.train_labels
    else:
        images, labels = torch.randint(0, 256, (4096, 1, 28, 28), dtype=torch.uint8), torch.arange(4096) % 10
    mean = images.float().mean() / 255
    std = images.float().std() / 255
    augment = Augmenter(mean.view(1), std.view(1), pad=2, flip=True, channels_last=True)
    model = build_model("wrn10_1", 10, 1, 28).train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(30):  # off its initial weights
        idx = torch.randint(0, len(images), (64,))
        loss = F.cross_entropy(model(augment(images[idx])), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    u = augment(images[:64])
    to_input = 1 / (2 * std)  # the official [-1, 1] units -> the model's input units
    d = unit_directions(torch.randn_like(u))
    with frozen_batchnorm_stats(model):
        image = u.detach().requires_grad_(True)
        logits = model(image)
        probe = torch.zeros_like(logits, requires_grad=True)
        (pulled,) = torch.autograd.grad(logits, image, grad_outputs=probe, create_graph=True)
        (jd,) = torch.autograd.grad(pulled, probe, grad_outputs=d * to_input)
        q = torch.softmax(logits.detach(), -1)
        (exact,) = torch.autograd.grad(logits, image, grad_outputs=q * jd - q * (q * jd).sum(-1, keepdim=True))
        with torch.no_grad():
            clean = model(u)
        for xi in args.xi:
            step = (xi * d).requires_grad_(True)
            (grad,) = torch.autograd.grad(kl_from_logits(clean, model(u + step * to_input)).mean(), step)
            cos = F.cosine_similarity(grad.flatten(1), (exact * to_input).flatten(1))
            print(f"xi {xi:g}: cosine to the exact Hessian-vector product, mean {cos.mean():.3f}, min {cos.min():.3f}")


if __name__ == "__main__":
    main()
