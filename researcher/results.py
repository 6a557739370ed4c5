"""A released job result: model, metrics and privacy report, usable without syft."""
from __future__ import annotations

from shared.display import escape


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
    def answers(self) -> list[dict]:
        """DP statistics: the noisy answers with their 95% noise intervals."""
        return self.raw.get("answers", [])

    @property
    def rounds(self) -> list[dict]:
        """DP active learning: per-round metrics, labelled-set sizes, selected counts, and each
        group's epsilon after the round."""
        return self.raw.get("rounds", [])

    @property
    def plan(self) -> dict | None:
        return self.raw.get("plan")

    def plot_learning_curve(self, path: str, baselines: dict | None = None,
                            metric: str = "accuracy") -> str:
        """Accuracy (or ``metric``) against labelled-set size, for this active-learning run and
        ``baselines`` (name -> JobResult of other runs, e.g. naive or passive)."""
        from shared.dpal import plot_accuracy

        curves = {self.spec.get("mode", "this run"): self.rounds}
        curves.update({name: r.rounds for name, r in (baselines or {}).items()})
        return plot_accuracy(curves, path, metric=metric)

    def plot_group_epsilon(self, path: str) -> str:
        """Each labelled group's epsilon after each round."""
        from shared.dpal import plot_group_epsilon
        from shared.dpal import Plan

        return plot_group_epsilon(Plan.from_dict(self.plan), path)

    @property
    def backbone(self) -> dict | None:
        """For a fine-tuned model: the registered backbone it started from (name, sha256,
        arch, source)."""
        return self.raw.get("backbone")

    @property
    def model(self):
        return self.load_model()

    def load_model(self, backbone_weights=None):
        """The trained model. ``backbone_weights``: for a model fine-tuned from the owner's
        backbone, its weights file (checked by sha256; an installed weights package's file
        is found without it)."""
        from shared.training.results import load_model

        return load_model(self.raw, backbone_weights=backbone_weights)

    def save_model(self, path: str) -> None:
        """Write the model as a plain torch file: state_dict plus its config."""
        import torch

        from shared.training.serialise import load_state

        torch.save({"state_dict": load_state(self.raw["model_state"]),
                    "config": self.raw["model_config"]}, path)

    def __repr__(self) -> str:
        p = self.privacy
        return (f"<{escape(str(self.kind))} result: metrics {escape(str(self.metrics), 2000)}, "
                f"eps={p.get('epsilon')} at delta={p.get('delta')}>")
