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
import os
import sys
from pathlib import Path

from .config import SiteHome

NO_EXECUTION = (
    "dp-datasite: code never runs on this server. The data owner runs approved jobs on the "
    "private side and releases the result; fetch it with request.wait()."
)


def _harden(worker) -> None:
    """Switch off code execution and let researchers read results the owner deposited."""
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
