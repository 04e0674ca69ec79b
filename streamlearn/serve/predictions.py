"""The prediction endpoints: `/v1/predict`, `/v1/classify`, and the Open Inference Protocol (KServe v2)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from streamlearn.errors import InvalidConfig, StreamlearnError
from streamlearn.serve.app import TooLarge
from streamlearn.serve.backends import Item
from streamlearn.serve.schemas import ClassifyRequest, ClassifyResponse, InferRequest, PredictRequest, PredictResponse

router = APIRouter()


def _service(request: Request):
    return request.app.state.service


def _within(service, count: int, what: str) -> None:
    if count > service.config.max_items:
        raise TooLarge(f"{count:,} {what} in one request; the limit is {service.config.max_items:,} "
                       "(STREAMLEARN_SERVE_MAX_ITEMS)")


async def _answer(service, items: list[Item]):
    outcomes = await service.batcher.submit(items)
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, StreamlearnError):
            # Same class, so the same status; the message says which item.
            raise type(outcome)(f"items[{i}]: {outcome}")
    return outcomes


@router.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True,
             summary="Classify items of any tasks (rows of different tasks share batches).")
async def predict(body: PredictRequest, request: Request):
    """One result per item, in order; an item that cannot be answered fails the request, naming it."""
    service = _service(request)
    _within(service, len(body.items), "items")
    outcomes = await _answer(service, [Item(i.task, i.text, i.text_pair) for i in body.items])
    return {"results": [o.to_json(body.probabilities) for o in outcomes]}


@router.post("/v1/classify", response_model=ClassifyResponse, response_model_exclude_none=True,
             summary="Every text through several tasks at once (the Parallel path).")
async def classify(body: ClassifyRequest, request: Request):
    """For every text, every task's result; `tasks: "all"` is every task taking this kind of input."""
    service = _service(request)
    tasks = None if body.tasks == "all" else body.tasks
    _within(service, len(body.texts) * (len(tasks) if tasks else 1), "rows (texts x tasks)")
    if body.text_pairs is not None and len(body.text_pairs) != len(body.texts):
        raise InvalidConfig(f"{len(body.texts)} texts but {len(body.text_pairs)} text_pairs")
    if tasks is not None and len(set(tasks)) != len(tasks):
        raise InvalidConfig("tasks: a task is named twice")
    answered, rows = await service.batcher.call(service.inference.classify, body.texts, body.text_pairs, tasks)
    return {"tasks": answered,
            "results": [{t: r.to_json(body.probabilities) for t, r in row.items()} for row in rows]}


# -- Open Inference Protocol (KServe v2): the task is the model -----------------------------------

@router.get("/v2/health/live", summary="KServe v2: the server process is up.")
async def live():
    return {"live": True}


@router.get("/v2/health/ready", summary="KServe v2: the backbone is loaded and requests are answered.")
async def ready(request: Request):
    from streamlearn.serve.app import error

    if not _service(request).ready:
        return error(503, "not ready: the server is starting or stopping")
    return {"ready": True}


@router.get("/v2", summary="KServe v2: server metadata.")
async def server_metadata():
    from streamlearn.serve.app import _version

    return {"name": "streamlearn", "version": _version(), "extensions": []}


async def _loaded(request: Request, task: str):
    service = _service(request)
    return await service.batcher.call(service.resident.ensure, task)


@router.get("/v2/models/{task}", summary="KServe v2: a task's metadata (inputs, outputs, labels).")
async def model_metadata(task: str, request: Request):
    loaded = await _loaded(request, task)
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    if loaded.pair:
        inputs.append({"name": "text_pair", "datatype": "BYTES", "shape": [-1]})
    return {
        "name": task, "versions": [loaded.sha256], "platform": "streamlearn", "inputs": inputs,
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "score", "datatype": "FP32", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(loaded.labels)]}],
        "parameters": {"labels": list(loaded.labels)},
    }


@router.get("/v2/models/{task}/ready", summary="KServe v2: the task's artifact is loaded and verified.")
async def model_ready(task: str, request: Request):
    await _loaded(request, task)
    return {"name": task, "ready": True}


def _texts(tensor, name: str) -> list[str]:
    if tensor.datatype != "BYTES":
        raise InvalidConfig(f"input {name!r}: datatype must be BYTES, not {tensor.datatype}")
    count = 1
    for dim in tensor.shape:
        count *= dim
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1) or count != len(tensor.data):
        raise InvalidConfig(f"input {name!r}: shape {tensor.shape} must be [N] or [N, 1] with N = {len(tensor.data)}")
    if not all(isinstance(t, str) for t in tensor.data):
        raise InvalidConfig(f"input {name!r}: every element must be a string")
    return list(tensor.data)


@router.post("/v2/models/{task}/infer", summary="KServe v2: classify a BYTES input `text` (and `text_pair`).")
async def infer(task: str, body: InferRequest, request: Request):
    """Outputs `label` (BYTES [N]), `score` (FP32 [N]) and `probabilities` (FP32 [N, C], label order)."""
    service = _service(request)
    by_name = {t.name: t for t in body.inputs}
    unknown = set(by_name) - {"text", "text_pair"}
    if unknown or "text" not in by_name:
        raise InvalidConfig("inputs: give a BYTES input named 'text' (and 'text_pair' for a pair task)")
    texts = _texts(by_name["text"], "text")
    pairs = _texts(by_name["text_pair"], "text_pair") if "text_pair" in by_name else None
    if pairs is not None and len(pairs) != len(texts):
        raise InvalidConfig(f"{len(texts)} texts but {len(pairs)} text_pairs")
    _within(service, len(texts), "texts")
    outcomes = await _answer(service, [Item(task, t, pairs[i] if pairs else None) for i, t in enumerate(texts)])
    labels = list(outcomes[0].probabilities) if outcomes else []
    return {
        "model_name": task, "model_version": outcomes[0].sha256 if outcomes else None, "id": body.id,
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [len(outcomes)], "data": [o.label for o in outcomes]},
            {"name": "score", "datatype": "FP32", "shape": [len(outcomes)], "data": [o.score for o in outcomes]},
            {"name": "probabilities", "datatype": "FP32", "shape": [len(outcomes), len(labels)],
             "data": [o.probabilities[lab] for o in outcomes for lab in labels], "parameters": {"labels": labels}},
        ],
    }
