"""Pickle-free training state: optimiser, scheduler and RNG states survive the round trip exactly."""

from __future__ import annotations

import random

import numpy as np
import torch

from land_core.train.data import CaseOrder, derived_seed
from land_core.train.loop import lr_lambda
from land_core.train.config import train_preset
from land_core.train.state import (
    flatten_optimizer,
    read_training_state,
    rng_state,
    scheduler_state,
    set_rng_state,
    unflatten_optimizer,
    write_training_state,
)


def _trained_optimizer(seed: int):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(train_preset("tiny").vae))
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
    return net, opt, sched


def test_optimizer_scheduler_and_rng_round_trip(tmp_path):
    net, opt, sched = _trained_optimizer(0)
    tensors, meta = flatten_optimizer("main", opt.state_dict())
    rng_t, rng_m = rng_state()
    write_training_state(tmp_path, {**tensors, **rng_t}, {"optim": meta, "sched": scheduler_state(sched), "rng": rng_m})
    expected = (torch.rand(3), np.random.rand(3), random.random())

    t2, m2 = read_training_state(tmp_path)
    net2, opt2, sched2 = _trained_optimizer(1)  # other weights and moments, then loaded
    opt2.load_state_dict(unflatten_optimizer("main", t2, m2["optim"]))
    sched2.load_state_dict(m2["sched"])
    net2.load_state_dict(net.state_dict())
    set_rng_state(t2, m2["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    assert opt2.state_dict()["param_groups"][0]["betas"] == (0.8, 0.95)
    assert sched2.get_last_lr() == sched.get_last_lr()
    x = torch.randn(5, 4)
    for o, n, s in ((opt, net, sched), (opt2, net2, sched2)):  # one more identical step
        o.zero_grad()
        n(x).pow(2).mean().backward()
        o.step()
        s.step()
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


def test_case_order_is_a_seeded_permutation_per_epoch():
    order = CaseOrder(5, seed=3)
    first = [order.case(g) for g in range(5)]
    second = [order.case(g) for g in range(5, 10)]
    assert sorted(first) == sorted(second) == list(range(5)) and first != second
    assert [CaseOrder(5, seed=3).case(g) for g in range(10)] == first + second
    assert order.describe(7)["epoch"] == 1 and order.describe(7)["position"] == 2
    assert derived_seed(0, 1, 2) != derived_seed(0, 2, 1) and derived_seed(0, 1, 2) == derived_seed(0, 1, 2)


def test_model_grid_is_the_most_common_edge_at_the_median_spacing():
    from types import SimpleNamespace

    from land_core.train.data import TrainingCase, model_grid

    def case(shape, spacing):
        return TrainingCase("c", None, shape, spacing)  # type: ignore[arg-type]

    data = SimpleNamespace(cases=[case((128, 128, 128), (2.0, 2.0, 2.0)), case((128, 120, 128), (2.0, 2.0, 2.0)),
                                  case((96, 96, 96), (1.5, 1.5, 1.5))])
    assert model_grid(data) == (128, 2.0)
    data = SimpleNamespace(cases=[case((100, 100, 100), (1.0, 1.0, 1.0))])
    assert model_grid(data, multiple=64) == (128, 1.0)  # rounded up to what the networks take
