"""DP synthetic data: a Gaussian copula measured with priced Gaussian noise (the owner's DP
mock). Importable without syft; see :mod:`shared.synth.copula`."""
from .copula import dp_copula_mock, fit, sample

__all__ = ["dp_copula_mock", "fit", "sample"]
