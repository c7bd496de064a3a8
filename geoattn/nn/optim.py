"""The optimizer for models with manifold parameters: geoopt's Riemannian Adam."""
from __future__ import annotations

import geoopt
from torch import nn

from ..geometry import Geometry


def riemannian_optimizer(model: nn.Module, lr: float = 1e-3, geometry_lr: float | None = None,
                         **kwargs) -> geoopt.optim.RiemannianAdam:
    """``geoopt.optim.RiemannianAdam`` over every trainable parameter of ``model``.

    On a ``geoopt.ManifoldParameter`` it takes Riemannian steps (Riemannian gradient, retraction,
    vector transport: Bécigneul & Ganea, "Riemannian Adaptive Optimization Methods", ICLR 2019), so the
    parameter stays on its manifold; on ordinary parameters it is exactly ``torch.optim.Adam``.
    ``geometry_lr`` puts the geometries' own parameters (curvatures, temperatures, metrics) in a
    separate group with that learning rate. ``kwargs`` go to RiemannianAdam (``weight_decay``,
    ``betas``, ``stabilize``, ...)::

        opt = geoattn.riemannian_optimizer(model, lr=3e-4)
        loss.backward(); opt.step(); opt.zero_grad()
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (all have requires_grad=False)")
    if geometry_lr is None:
        return geoopt.optim.RiemannianAdam(params, lr=lr, **kwargs)
    geo_ids = {id(p) for m in model.modules() if isinstance(m, Geometry) for p in m.parameters()}
    groups = [{"params": [p for p in params if id(p) not in geo_ids]},
              {"params": [p for p in params if id(p) in geo_ids], "lr": geometry_lr}]
    return geoopt.optim.RiemannianAdam([g for g in groups if g["params"]], lr=lr, **kwargs)
