"""Cox partial log-likelihood for deep survival models (Breslow's handling of tied times).

For risk scores eta, times t and event indicators d: the negative log partial likelihood is
``-sum_{i: d_i=1} [eta_i - log sum_{j: t_j >= t_i} exp(eta_j)] / n_events``. Tied times share one
risk set (Breslow), as scikit-survival's ``CoxPHSurvivalAnalysis(ties="breslow")``. A batch with
no event carries no information: the loss is 0 (with a graph, so backward still works).

Usage: ``loss = cox_partial_nll(risk, time, event)``
"""
from __future__ import annotations

import torch


def cox_partial_nll(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    risk = risk.reshape(-1).float()
    time = time.reshape(-1).to(risk.device).float()
    event = event.reshape(-1).to(risk.device).float()
    n_events = event.sum()
    if n_events.item() == 0:
        return risk.sum() * 0.0
    order = torch.argsort(time, descending=True, stable=True)
    r, t, e = risk[order], time[order], event[order]
    log_cum = torch.logcumsumexp(r, dim=0)
    # Position of the last member of each tie group in the descending order: its risk set.
    t_asc = torch.flip(t, dims=[0])
    last = len(t) - torch.searchsorted(t_asc.contiguous(), t.contiguous(), right=False) - 1
    log_risk_set = log_cum[last]
    return -((r - log_risk_set) * e).sum() / n_events
