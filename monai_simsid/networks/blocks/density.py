"""Gaussian density estimation of embeddings (CutPaste's GDE), pure torch."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["GaussianDensity", "ledoit_wolf_covariance"]


def ledoit_wolf_covariance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Ledoit-Wolf shrunk covariance of samples ``x`` (N, D).

    Same estimator as ``sklearn.covariance.LedoitWolf(assume_centered=False)``: with centred samples
    ``X``, ``S = X^T X / N``, ``mu = trace(S) / D`` and
    ``shrunk = (1 - a) * S + a * mu * I`` where the shrinkage ``a = min(b, d) / d`` uses
    ``d = ||S - mu I||_F^2 / D`` and ``b = (sum_n ||x_n x_n^T - S||_F^2 / N^2) / D`` (computed as in
    Ledoit & Wolf, 2004). Computed in float64.

    Args:
        x: samples ``(N, D)``, ``N >= 2``.

    Returns:
        ``(mean (D,), covariance (D, D), shrinkage)`` in float64 (shrinkage as a Python float).
    """
    if x.dim() != 2:
        raise ValueError(f"expected samples of shape (N, D), got {tuple(x.shape)}.")
    n, p = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 samples to estimate a covariance, got {n}.")
    x = x.detach().to(torch.float64)
    mean = x.mean(0)
    xc = x - mean
    emp_cov = xc.T @ xc / n
    x2 = xc.pow(2)
    emp_cov_trace = x2.sum(0) / n
    mu = emp_cov_trace.sum() / p
    beta_ = (x2.T @ x2).sum()
    delta_ = emp_cov.pow(2).sum()  # = sum((X^T X)^2) / n^2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * emp_cov_trace.sum() + p * mu**2) / p
    beta = torch.minimum(beta, delta)
    shrinkage = 0.0 if float(beta) == 0.0 else float(beta / delta)
    cov = (1.0 - shrinkage) * emp_cov
    cov.diagonal().add_(shrinkage * mu)
    return mean, cov, shrinkage


class GaussianDensity(nn.Module):
    """Multivariate Gaussian fitted to normal embeddings; scores by Mahalanobis distance.

    :meth:`fit` estimates the mean and a Ledoit-Wolf shrunk covariance (robust when ``N`` is not much
    larger than ``D``) and stores ``mean`` / ``precision`` (pseudo-inverse covariance) as buffers, so a
    fitted density travels with the model's ``state_dict``. ``forward`` returns the Mahalanobis distance
    ``sqrt((e - mean)^T P (e - mean))`` (higher = more anomalous).

    Args:
        dim: embedding dimension ``D``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if int(dim) < 1:
            raise ValueError(f"dim must be positive, got {dim}.")
        self.dim = int(dim)
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("precision", torch.eye(self.dim))
        self.register_buffer("shrinkage", torch.zeros(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    @torch.no_grad()
    def fit(self, embeddings: torch.Tensor) -> GaussianDensity:
        """Fit to normal embeddings ``(N, D)`` (``N >= 2``); returns ``self``."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of shape (N, {self.dim}), got {tuple(embeddings.shape)}.")
        mean, cov, shrinkage = ledoit_wolf_covariance(embeddings)
        precision = torch.linalg.pinv(cov, hermitian=True)
        self.mean.copy_(mean.to(self.mean))
        self.precision.copy_(precision.to(self.precision))
        self.shrinkage.fill_(shrinkage)
        self.fitted.fill_(True)
        return self

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance ``(N,)`` of ``embeddings`` ``(N, D)`` to the fitted Gaussian."""
        if not self.is_fitted:
            raise RuntimeError("GaussianDensity is not fitted: call fit(normal_embeddings) first.")
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of shape (N, {self.dim}), got {tuple(embeddings.shape)}.")
        diff = embeddings.to(torch.float64) - self.mean.to(device=embeddings.device, dtype=torch.float64)
        precision = self.precision.to(device=embeddings.device, dtype=torch.float64)
        d2 = ((diff @ precision) * diff).sum(1).clamp_min(0.0)
        return d2.sqrt().to(embeddings.dtype if embeddings.is_floating_point() else torch.float32)
