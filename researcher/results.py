"""A released job result: model, metrics and privacy report, usable without syft."""
from __future__ import annotations


class JobResult:
    def __init__(self, raw: dict):
        self.raw = raw

    @property
    def kind(self) -> str:
        return self.raw["kind"]

    @property
    def metrics(self) -> dict:
        return self.raw.get("metrics", {})

    @property
    def privacy(self) -> dict:
        return self.raw.get("privacy", {})

    @property
    def spec(self) -> dict:
        return self.raw.get("spec", {})

    @property
    def model(self):
        from shared.results import load_model

        return load_model(self.raw)

    def save_model(self, path: str) -> None:
        """Write the model as a plain torch file: state_dict plus its config."""
        import io

        import torch

        torch.save({"state_dict": torch.load(io.BytesIO(self.raw["model_state"]), weights_only=True),
                    "config": self.raw["model_config"]}, path)

    def __repr__(self) -> str:
        p = self.privacy
        return (f"<{self.kind} result: metrics {self.metrics}, "
                f"eps={p.get('epsilon')} at delta={p.get('delta')}>")
