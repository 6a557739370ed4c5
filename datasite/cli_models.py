"""`datasite models add|list|remove`: the pretrained backbones researchers fine-tune from (the
work is done by :mod:`datasite.models`)."""
from __future__ import annotations

import json

from shared.display import escape

from .config import open_site


def _site(args):
    from .owner import OwnerSite

    return OwnerSite(open_site(args.name, args.home))


def cmd_add(args) -> None:
    source = dict(torchvision=args.torchvision, weights=args.weights, file=args.file,
                  arch=args.arch, package=args.package, input_size=args.input_size)
    from .models import check_model_args  # torch: imported by the commands that need it

    check_model_args(args.model, **source)  # before the site is opened or logged into
    info = _site(args).add_model(args.model, replace=args.replace, **source)
    print(f"Registered model {escape(info.name)}"
          + (" (new weights)" if args.replace else "") + f" on {escape(args.name)}: "
          f"{escape(info.arch)}, {info.input_size}x{info.input_size} input, "
          f"{info.n_params / 1e6:.2f}M parameters, {info.feature_dim} features, sha256 "
          f"{info.sha256[:12]}; weights: {escape(info.source, 300)}.")
    print("  Published in the site's model catalogue (researchers: site.models); the weights "
          "stay on this machine.")


def cmd_list(args) -> None:
    site = _site(args)
    local = site.local_backbones()
    if args.json:
        print(json.dumps([{**b.info.to_dict(), "path": b.path} for _, b in sorted(local.items())],
                         indent=2))
        return
    if not local:
        print(f"No models registered on {escape(args.name)} (add one with `datasite models "
              "add`).")
    for _, b in sorted(local.items()):
        i = b.info
        print(f"{escape(i.name)}: {escape(i.arch)}, {i.input_size}x{i.input_size} input, "
              f"{i.n_params / 1e6:.2f}M parameters, {i.feature_dim} features, sha256 "
              f"{i.sha256[:12]}")
        print(f"  weights: {escape(i.source, 300)}; file {escape(b.path, 500)}")


def cmd_remove(args) -> None:
    info = _site(args).remove_model(args.model)
    print(f"Removed model {escape(info.name)} (sha256 {info.sha256[:12]}) from "
          f"{escape(args.name)}: out of the published catalogue, its weights deleted.")
