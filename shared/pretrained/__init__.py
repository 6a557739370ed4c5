"""Pretrained image backbones for DP fine-tuning: the owner registers them, jobs start from them.

* :mod:`.info`: what a registered backbone is, publicly (no torch; the researcher's catalogue).
* :mod:`.architectures`: the supported architectures as Opacus-ready feature extractors.
* :mod:`.weights`: loading an owner's checkpoint safely and checking it (sha256, shapes).
* :mod:`.frozen_bn`: BatchNorm with frozen statistics (per-record, so per-sample gradients hold).
* :mod:`.lora`: low-rank adapters on convolutions and linear layers.
* :mod:`.methods`: head / bitfit / lora / full: which parameters a fine-tuning job trains.
* :mod:`.model`: the classifier a job trains and releases (input adapter, backbone, head).
"""
