"""Pieces of the trainer base: frozen() and average_gradients() in a single process."""

from __future__ import annotations

import torch

from monai_simsid.engines.base import average_gradients, frozen


def test_frozen_blocks_parameter_gradients_but_not_input_gradients():
    net = torch.nn.Linear(3, 1)
    x = torch.randn(2, 3, requires_grad=True)
    with frozen(net):
        assert not any(p.requires_grad for p in net.parameters())
        net(x).sum().backward()
    assert all(p.requires_grad for p in net.parameters())
    assert all(p.grad is None for p in net.parameters())
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_frozen_restores_only_what_it_froze():
    net = torch.nn.Linear(3, 1)
    net.bias.requires_grad_(False)
    with frozen(net):
        pass
    assert net.weight.requires_grad and not net.bias.requires_grad
    with frozen(None):
        pass


def test_average_gradients_is_a_no_op_in_one_process():
    net = torch.nn.Linear(3, 1)
    net(torch.ones(1, 3)).sum().backward()
    before = [p.grad.clone() for p in net.parameters()]
    average_gradients(net.parameters())
    for p, g in zip(net.parameters(), before):
        assert torch.equal(p.grad, g)
