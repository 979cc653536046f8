"""Shared helpers for objective tests: tiny objectives and float64 full-logit references."""

import torch
from omegaconf import OmegaConf

from charlit.run import build_objective
from tests.conftest import compose


def tiny_objective(method, *extra):
    cfg = compose(
        [f"method={method}", "model=tiny", "logger=none", "sampler.max_new_tokens=6", "data.batch_size=2", *extra]
    )
    if cfg.data.kind != "prompts":  # prompts have no length setting
        OmegaConf.update(cfg, "data.max_length", 160)
    return build_objective(cfg)


@torch.no_grad()
def response_logits(model, context, response):
    """Float64 logits ``[len(response), V]`` predicting each response token, from the model's full forward."""
    was = model.training
    model.eval()
    try:
        logits = model(torch.tensor([context + response])).logits[0]
    finally:
        model.train(was)
    return logits[len(context) - 1 : len(context) - 1 + len(response)].double()


def kl(p_logits, q_logits):
    """Per-row KL(softmax(p) ‖ softmax(q)) in float64."""
    lp, lq = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def perturb(model, scale=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen))


def lowers_own_loss(objective, batch, steps=4, lr=1e-2):
    """Loss on a fixed batch before and after a few Adam steps (the objective's own compute_loss)."""
    params = [p for p in objective.policy.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    first = None
    for _ in range(steps):
        optimizer.zero_grad()
        loss, _, _ = objective.compute_loss(batch)
        first = loss.item() if first is None else first
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        last, _, _ = objective.compute_loss(batch)
    return first, last.item()
