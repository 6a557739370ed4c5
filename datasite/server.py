"""The datasite's PySyft server process (the *low side*).

It holds mock data, users and code requests -- never real data -- and it never executes
submitted code: the owner runs approved jobs on the high side (``datasite.owner``) and only
deposits released results here. This contains PySyft 0.9.5's unenforced single-use policy
(OpenMined/PySyft#9391): there is nothing on this server a second execution could reach, and
execution itself is switched off.

Run as ``python -m datasite.server --home HOME [--host H] [--port P]``.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from .config import SiteHome

NO_EXECUTION = (
    "dp-datasite: code never runs on this server. The data owner runs approved jobs on the "
    "private side and releases the result; fetch it with request.wait()."
)
NO_SIGNUP = ("dp-datasite: accounts are created by the data owner (`datasite users add`); "
             "ask them for one.")
NO_RESET = ("dp-datasite: password resets go through the data owner; ask them to set a new "
            "password for you, then change it with client.account.set_password().")

# Syft API paths open below the owner roles (ADMIN / DATA_OWNER always pass). Anything else --
# worker pools and images, custom API endpoints, blob uploads, sync, migrations, settings,
# projects, data subjects, attestation, user management and endpoints a later syft adds -- is
# refused at the dispatch point. Researchers browse datasets and mocks, submit code requests,
# follow them, and read (never write) the results the owner released to them.
RESEARCHER_PATHS = frozenset({
    "metadata.get_metadata",
    "user.get_current_user",
    "user.update",  # own name / password / institution / website only (check_api_call)
    "dataset.get_all", "dataset.search",
    "action.get", "action.get_mock", "action.exists",  # the stash checks read permission
    "blob_storage.read",  # large results; the entry's ACL grants the author on release
    "code.request_code_execution", "code.call", "code.get_all", "code.get_by_id",
    "code_status.get_by_uid",
    "request.get_all", "request.get_by_uid",
    "output.has_output_read_permissions",
    "notifications.get_all", "notifications.resolve_object",
    "job.get", "job.get_by_user_code_id", "log.get_stdout",
})
# a guest (not logged in) only learns what the server is, to log in
GUEST_PATHS = frozenset({"metadata.get_metadata"})
# calls syft answers before any service is resolved
ALWAYS_OPEN = frozenset({"metadata"})
# closed for everyone, the owner too: a datasite never peers, and network.* makes the
# server send HTTP requests to addresses the caller chooses (SSRF)
DISABLED_SERVICES = frozenset({"network"})
SELF_EDITABLE_USER_FIELDS = frozenset({"name", "password", "password_verify", "institution",
                                       "website"})


def _harden(worker) -> None:
    """Switch off code execution, let researchers read results the owner deposited, close
    sign-up, and refuse every API call outside the researcher/guest allow-lists."""
    from syft.service.action.action_permissions import ActionObjectPermission, ActionPermission
    from syft.service.action.action_service import ActionService
    from syft.service.job.job_service import JobService
    from syft.types.errors import SyftException
    from syft.types.result import as_result

    @as_result(SyftException)
    def _refuse_execution(self, context, code_item, kwargs, result_id=None):
        raise SyftException(public_message=NO_EXECUTION)

    ActionService._user_code_execute = _refuse_execution

    original = JobService.create_job_for_user_code_id

    def create_job_for_user_code_id(self, context, user_code_id, result=None, **kwargs):
        job = original(self, context, user_code_id, result=result, **kwargs)
        if result is not None:
            # Depositing a result is the owner's release: its author may read it (and the job).
            code = context.server.services.user_code.get_by_uid(context=context, uid=user_code_id)
            owner = code.user_verify_key
            context.server.services.action.stash.add_permission(
                ActionObjectPermission(result.id, ActionPermission.READ, owner)
            ).unwrap()
            entry_id = getattr(result, "syft_blob_storage_entry_id", None)
            if entry_id is not None:  # large results live in blob storage, with their own ACL
                context.server.services.blob_storage.stash.add_permission(
                    ActionObjectPermission(entry_id, ActionPermission.READ, owner)
                ).unwrap()
            self.add_read_permission_job_for_code_owner(context, job, code)
            self.add_read_permission_log_for_code_owner(context, job.log_id, code)
        return job

    # the server dispatches by getattr(service, name), so the class attribute is what runs
    JobService.create_job_for_user_code_id = create_job_for_user_code_id
    _close_registration()
    _guard_dispatch(worker)
    from .server_roles import install

    install()


def _journal_requests(worker, path: Path) -> None:
    """Append each new request's id to the site's request journal, so the owner's round
    servers find new requests in O(new) (``datasite.request_journal``)."""
    from syft.service.request.request_service import RequestService

    from .request_journal import record

    JOURNALS[str(worker.id)] = path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)  # readers take a missing journal for an old server
    original = RequestService.submit
    if getattr(original, "_dpds_journaled", False):
        return

    def submit(self, *args, **kwargs):
        request = original(self, *args, **kwargs)
        context = kwargs.get("context", args[0] if args else None)
        journal = JOURNALS.get(str(getattr(getattr(context, "server", None), "id", "")))
        if journal is not None:
            try:
                record(journal, request.id.to_string())
            except OSError:  # readers fall back to a periodic full listing
                pass
        return request

    submit._dpds_journaled = True
    RequestService.submit = submit


# server id -> its request journal (the class-level hook serves every server in the process)
JOURNALS: dict[str, Path] = {}


def _close_registration() -> None:
    """Refuse self-service sign-up whatever the server settings say (the owner adds users),
    and unauthenticated "forgot password" requests."""
    from syft.service.user.user_roles import ServiceRole
    from syft.service.user.user_service import UserService
    from syft.types.errors import SyftException

    original = UserService.register

    @functools.wraps(original)  # the /register route looks the method up by __qualname__
    def register(self, context, new_user):
        # created_by is the caller's signing key (None for a guest); syft would let anyone
        # register once signup_enabled is set, so only an owner's key counts here
        creator = new_user.created_by
        role = ServiceRole.GUEST if creator is None else self.get_role_for_credentials(creator).unwrap()
        if role.value < ServiceRole.DATA_OWNER.value:
            raise SyftException(public_message=NO_SIGNUP)
        return original(self, context, new_user=new_user)

    UserService.register = register

    @functools.wraps(UserService.forgot_password)
    def forgot_password(self, context, email):
        # unauthenticated: lets anyone spam users and the owner with notifications and probe
        # which e-mail is the admin's; dp-datasite has no e-mail, the owner resets passwords
        raise SyftException(public_message=NO_RESET)

    UserService.forgot_password = forgot_password


def _user_update_fields(args: tuple, kwargs: dict) -> set[str]:
    """Every UserUpdate field a ``user.update`` call would set (splatted or as an object)."""
    from syft.service.user.user import UserUpdate
    from syft.types.syft_metaclass import EmptyType
    from syft.types.uid import UID

    bookkeeping = {"id", "syft_server_location", "syft_client_verify_key"}
    dates = {"created_date", "updated_date", "deleted_date"}  # None unless set; syft refuses them
    fields = set(kwargs) - {"uid", "user_update", "communication_protocol"}  # splatted fields
    objects = [*args] + [kwargs[k] for k in ("uid", "user_update") if k in kwargs]
    for value in objects:
        if isinstance(value, UserUpdate):
            fields |= {f for f in UserUpdate.model_fields if f not in bookkeeping
                       and not isinstance(getattr(value, f, None), EmptyType)
                       and not (f in dates and getattr(value, f, None) is None)}
        elif not isinstance(value, UID):
            fields.add(f"<{type(value).__name__} argument>")  # unexpected: refused below
    return fields


def check_api_call(role, path: str, args: tuple = (), kwargs: dict | None = None) -> str | None:
    """Why ``role`` may not call the syft service ``path`` on this datasite (None: allowed)."""
    from syft.service.user.user_roles import ServiceRole

    if path.split(".")[0] in DISABLED_SERVICES:
        return (f"dp-datasite: {path} is switched off on this datasite: it never peers with "
                "other servers.")
    if role.value >= ServiceRole.DATA_OWNER.value:
        return None
    allowed = RESEARCHER_PATHS if role == ServiceRole.DATA_SCIENTIST else GUEST_PATHS
    if path not in allowed:
        who = "researchers" if role == ServiceRole.DATA_SCIENTIST else "guests (log in first)"
        return (f"dp-datasite: {path} is not open to {who} on this datasite; it serves dataset "
                "browsing, code requests and released results. Ask the data owner if you "
                "need something else.")
    if path == "user.update":
        bad = _user_update_fields(args, kwargs or {}) - SELF_EDITABLE_USER_FIELDS
        if bad:
            return (f"dp-datasite: you may change only your name, institution, website and "
                    f"password here, not {', '.join(sorted(bad))}: your e-mail and key are your "
                    "identity for privacy budgets. Ask the data owner to change them.")
    return None


def _guard_dispatch(worker) -> None:
    """Enforce :func:`check_api_call` on every API call, before syft resolves its path.

    ``handle_api_call_with_unsigned_result`` is where syft 0.9.5 turns a signed call into a
    service method (blocking, queued and forwarded calls alike), so a path that is not on
    the allow-lists is closed by default, including endpoints added by a later syft.
    """
    from syft.client.api import SignedSyftAPICall
    from syft.service.response import SyftError

    original = worker.handle_api_call_with_unsigned_result

    from .server_roles import call_scope

    def guarded(api_call, job_id=None, check_call_location=True):
        with call_scope():  # the caller's role is read once per call
            return _guarded(api_call, job_id, check_call_location)

    def _guarded(api_call, job_id, check_call_location):
        # the credentials below are only trusted once the signature over the call is checked
        if not isinstance(api_call, SignedSyftAPICall) or not api_call.is_valid:
            return SyftError(message="dp-datasite: this server only takes API calls signed "
                                     "with your key; log in with syft and call through the client.")
        message = api_call.message
        if check_call_location and message.server_uid != worker.id:
            return SyftError(message="dp-datasite: this datasite does not forward calls to "
                                     "other servers; connect to that server directly.")
        role = worker.get_role_for_credentials(credentials=api_call.credentials)
        if message.path not in ALWAYS_OPEN:
            try:
                refusal = check_api_call(role, message.path, tuple(message.args or ()),
                                         dict(message.kwargs or {}))
            except Exception:  # fail closed: a call we cannot check is not run
                refusal = (f"dp-datasite: could not check the call {message.path}; refused. "
                           "Check its arguments.")
            if refusal is not None:
                return SyftError(message=refusal)
        return original(api_call, job_id=job_id, check_call_location=check_call_location)

    # handle_api_call looks the method up on the instance, so this wraps every entry point
    worker.handle_api_call_with_unsigned_result = guarded


def build_worker(site: SiteHome):
    """Construct the PySyft Datasite with this site's identity, keys, password and storage."""
    cfg = site.load()
    os.environ["SERVER_UID"] = cfg.server_uid
    os.environ["SERVER_PRIVATE_KEY"] = site.signing_key_hex()
    os.environ.setdefault("SYFT_TEMP_ROOT", str(site.syft_dir / "tmp"))
    from syft.server.datasite import Datasite
    from syft.server.server import ServerSideType
    from syft.store.blob_storage.on_disk import OnDiskBlobStorageClientConfig, OnDiskBlobStorageConfig
    from syft.store.db.sqlite import SQLiteDBConfig
    from syft.types.uid import UID
    from syft.server.credentials import SyftSigningKey

    if cfg.db_url:
        from urllib.parse import urlparse

        from syft.store.db.postgres import PostgresDBConfig

        url = urlparse(cfg.db_url)
        # syft's own URL parser requires a password; trust/peer auth has none
        db_config = PostgresDBConfig(host=url.hostname or "127.0.0.1", port=url.port or 5432,
                                     user=url.username or "postgres", password=url.password or "",
                                     database=url.path.lstrip("/"))
    else:
        db_config = SQLiteDBConfig(filename="syft.db", path=site.syft_dir)
    blob = OnDiskBlobStorageConfig(
        client_config=OnDiskBlobStorageClientConfig(base_directory=site.syft_dir / "blob")
    )
    worker = Datasite(
        name=cfg.name,
        id=UID(cfg.server_uid),
        signing_key=SyftSigningKey.from_string(site.signing_key_hex()),
        db_config=db_config,
        blob_storage_config=blob,
        root_email=cfg.root_email,
        root_username="Data owner",
        root_password=site.root_password(),
        server_side_type=ServerSideType.LOW_SIDE,
        deployment_type="remote",
        n_consumers=0,
        create_producer=False,
    )
    _harden(worker)
    from .request_journal import journal_path

    _journal_requests(worker, journal_path(site.syft_dir))
    return worker


def serve(site: SiteHome, host: str, port: int) -> None:
    import uvicorn
    from fastapi import APIRouter, FastAPI
    from syft.server.routes import make_routes

    worker = build_worker(site)
    app = FastAPI(title=f"dp-datasite {worker.name}")
    router = APIRouter()
    router.include_router(make_routes(worker=worker))
    app.include_router(router, prefix="/api/v2")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datasite.server")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    site = SiteHome(args.home)
    port = args.port or site.load().port
    print(f"dp-datasite serving {site.root} on {args.host}:{port}", flush=True)
    serve(site, args.host, port)


if __name__ == "__main__":
    sys.exit(main())
