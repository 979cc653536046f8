"""Running a module in eval mode for a while and restoring whatever mode it had."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def eval_mode(module: torch.nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
