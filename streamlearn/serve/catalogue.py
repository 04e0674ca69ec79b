"""Reading and submitting over HTTP: the same queries as the CLI's `--json`, the same submission path.

`POST /v1/tasks` takes the dataset files as multipart parts (`train`, optional `validation` and
`test`) and the `submit-task` options as form fields named like the flags (`name`, `method`,
`epochs`, `adapter-size` or `adapter_size`, ...). The fields are parsed by the `submit-task`
command's own click options, so every range and choice is checked exactly as on the command line;
the files are written to a private temporary folder (under names the server picks, never a path
from the request) and go through `pipeline.submit_task`, which validates every line before
anything is stored or queued.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from streamlearn.errors import InvalidConfig, InvalidDataset

router = APIRouter()

FILE_PARTS = ("train", "validation", "test")
"""Multipart parts that carry dataset files."""
REFUSED_FIELDS = frozenset({"wait", "json", "data", "validation", "test", "train"})
"""`submit-task` options with no meaning over HTTP (or that would name a server path)."""
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def _job(job_id: str) -> dict:
    from streamlearn.catalogue.queries import job_status
    from streamlearn.catalogue.session import session_scope
    from streamlearn.recovery import idle_queue_warning

    with session_scope(readonly=True) as s:
        info = job_status(s, job_id)
        info["warning"] = idle_queue_warning(s) if info["status"] == "queued" else None
    return info


@router.get("/v1/tasks", summary="Every task (the JSON of `streamlearn tasks --json`).")
def tasks() -> list[dict]:
    from streamlearn.catalogue.queries import task_table
    from streamlearn.catalogue.session import session_scope

    with session_scope(readonly=True) as s:
        return task_table(s)


@router.get("/v1/tasks/{task}", summary="One task's row of `streamlearn tasks --json`.")
def task(task: str) -> dict:
    from streamlearn.catalogue.queries import task_table
    from streamlearn.catalogue.records import find_task
    from streamlearn.catalogue.session import session_scope

    with session_scope(readonly=True) as s:
        find_task(s, task)
        return next(r for r in task_table(s) if r["task"] == task)


@router.get("/v1/tasks/{task}/fusion", summary="A fused task's sources and mean attention (`streamlearn fusion TASK --json`).")
def task_fusion(task: str) -> dict:
    from streamlearn import jobs
    from streamlearn.catalogue import lineage
    from streamlearn.catalogue.session import session_scope

    with session_scope(readonly=True) as s:
        return lineage.fusion_report(s, task, jobs.artifact_path)


@router.get("/v1/jobs", summary="Jobs, oldest first (the JSON of `streamlearn jobs --json`).")
def jobs(status: Literal["queued", "running", "succeeded", "failed"] | None = None) -> list[dict]:
    from streamlearn.catalogue.queries import list_jobs
    from streamlearn.catalogue.session import session_scope

    with session_scope(readonly=True) as s:
        return list_jobs(s, status)


@router.get("/v1/jobs/{job_id}", summary="One job (the JSON of `streamlearn status JOB --json`).")
def job(job_id: str) -> dict:
    return _job(job_id)


@router.get("/v1/storage", summary="The storage report (the JSON of `streamlearn storage --json`).")
def storage() -> dict:
    from streamlearn.catalogue.queries import storage_report
    from streamlearn.catalogue.session import session_scope

    with session_scope(readonly=True) as s:
        return storage_report(s)


def _argv(fields: dict[str, str]) -> list[str]:
    """Form fields -> `submit-task` flags (`adapter_size=8` -> `--adapter-size 8`)."""
    from streamlearn.cli.service import submit_task_command

    flags = {p.name: p for p in submit_task_command.params}
    by_flag = {opt.lstrip("-"): p for p in submit_task_command.params for opt in p.opts if opt.startswith("--")}
    argv: list[str] = []
    for key, value in fields.items():
        name = key.replace("_", "-")
        param = by_flag.get(name) or flags.get(key)
        if name in REFUSED_FIELDS or param is None or param.name in REFUSED_FIELDS:
            raise InvalidConfig(f"form field {key!r} is not a submit-task option here")
        flag = next(opt for opt in param.opts if opt.startswith("--"))
        if getattr(param, "is_flag", False):
            if value.strip().lower() not in ("", "0", "false", "no", "off"):
                argv.append(flag)
        else:
            argv += [flag, value]
    return argv


def _parse(fields: dict[str, str], train: str, folder: Path) -> dict:
    import click

    from streamlearn.cli.service import submit_task_command

    try:
        ctx = submit_task_command.make_context("submit-task", [train, *_argv(fields)])
    except click.ClickException as exc:
        raise InvalidConfig(exc.format_message().replace(str(folder) + "/", "")) from None
    return ctx.params


def _submit(params: dict, paths: dict[str, Path], folder: Path) -> dict:
    from streamlearn import pipeline, sweep
    from streamlearn.data import DataSpec
    from streamlearn.methods import MethodConfig
    from streamlearn.training import TrainConfig

    p = params
    try:
        submission = pipeline.submit_task(
            paths["train"], name=p["name"], validation=paths.get("validation"), test=paths.get("test"),
            method=MethodConfig(method=p["method"], adapter_size=p["adapter_size"], top_k=p["top_k"],
                                sigma=p["sigma"], pooling=p["pooling"], fuse_from=p["fuse_from"],
                                fusion_rank=p["fusion_rank"], fusion_top=p["fusion_top"]),
            train_config=TrainConfig(epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"],
                                     max_length=p["max_length"], seed=p["seed"], warmup=p["warmup"],
                                     weight_decay=p["weight_decay"], max_grad_norm=p["max_grad_norm"]),
            spec=DataSpec(text_field=p["text_field"], label_field=p["label_field"], max_classes=p["max_classes"],
                          max_line_bytes=p["max_line_bytes"]),
            force=p["force"], sweep=sweep.resolve(p["sweep_name"], p["grid"], p["seeds"], p["prefer_smaller"]),
        )
    except (InvalidDataset, InvalidConfig) as exc:
        # The CLI's FILE:LINE message, with the upload's own file name instead of the temp folder.
        raise type(exc)(_unfold(str(exc), folder)) from None
    return _job(submission.job_id) | {"created": submission.created}


def _unfold(message: str, folder: Path) -> str:
    for part in FILE_PARTS:
        message = message.replace(f"{folder}/{part}/", "")
    return message.replace(str(folder), "<upload>")


async def _save(upload: UploadFile, folder: Path, part: str) -> Path:
    # The client's file name is kept (it names the default task and the error messages), but
    # only its last component, in characters that cannot walk out of the folder.
    name = _SAFE_NAME.sub("_", Path(upload.filename or "").name).lstrip(".") or f"{part}.jsonl"
    target = folder / part / name
    target.parent.mkdir()
    with target.open("wb") as out:
        while chunk := await upload.read(1 << 20):
            out.write(chunk)
    return target


@router.post("/v1/tasks", status_code=201, summary="Submit a task: multipart files + submit-task options.",
             openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["train"],
                 "properties": {"train": {"type": "string", "format": "binary"},
                                "validation": {"type": "string", "format": "binary"},
                                "test": {"type": "string", "format": "binary"},
                                "name": {"type": "string"}, "method": {"type": "string"},
                                "epochs": {"type": "integer"}},
                 "additionalProperties": {"type": "string"}}}}}})
async def submit(request: Request):
    """Validate, store and queue like `streamlearn submit-task`; 201 with the job (`created` false for an identical one)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidConfig("send multipart/form-data: a file part 'train' (and 'validation', 'test'), "
                            "and submit-task options as fields")
    form = await request.form(max_files=len(FILE_PARTS), max_fields=64)
    folder = Path(tempfile.mkdtemp(prefix="streamlearn-upload-"))
    try:
        paths, fields = {}, {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in FILE_PARTS or key in paths:
                    raise InvalidConfig(f"file part {key!r}: expected one each of {', '.join(FILE_PARTS)}")
                paths[key] = await _save(value, folder, key)
            elif key in FILE_PARTS:
                raise InvalidConfig(f"part {key!r} must be a file upload")
            else:
                fields[key] = value
        if "train" not in paths:
            raise InvalidConfig("a file part 'train' is required")
        params = _parse(fields, str(paths["train"]), folder)
        return await run_in_threadpool(_submit, params, paths, folder)
    finally:
        await form.close()
        shutil.rmtree(folder, ignore_errors=True)
