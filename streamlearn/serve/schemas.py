"""Request bodies of the prediction endpoints (validated by pydantic: a wrong type is a 422)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TaskName = Field(min_length=1, max_length=64, description="A task name, as in `streamlearn tasks`.")
Text = Field(min_length=1, description="A non-empty text.")


class PredictItem(BaseModel):
    """One row: a task and its input."""

    model_config = ConfigDict(extra="forbid")
    task: str = TaskName
    text: str = Text
    text_pair: str | None = Field(default=None, min_length=1, description="The second text of a pair task.")


class PredictRequest(BaseModel):
    """`POST /v1/predict`: rows of any tasks, answered in order."""

    model_config = ConfigDict(extra="forbid")
    items: list[PredictItem] = Field(min_length=1)
    probabilities: bool = Field(default=True, description="Include every class's probability.")


class PredictResult(BaseModel):
    """One row's answer."""

    task: str
    label: str
    score: float = Field(description="Probability of `label`.")
    probabilities: dict[str, float] | None = None


class PredictResponse(BaseModel):
    """`POST /v1/predict`'s answer: one result per item, in order."""

    results: list[PredictResult]


class ClassifyRequest(BaseModel):
    """`POST /v1/classify`: every text through several tasks at once (the Parallel path)."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1)
    text_pairs: list[str] | None = Field(default=None, description="Second texts, one per text (pair tasks).")
    tasks: list[str] | Literal["all"] = Field(
        default="all", description="Task names, or \"all\": every task with an artifact taking this kind of input.")
    probabilities: bool = True


class ClassifyResponse(BaseModel):
    """`POST /v1/classify`'s answer: the tasks asked, and per text {task: result}."""

    tasks: list[str]
    results: list[dict[str, PredictResult]]


class InferTensor(BaseModel):
    """An Open Inference Protocol (KServe v2) input tensor."""

    name: str
    shape: list[int]
    datatype: str
    data: list
    parameters: dict | None = None


class InferRequest(BaseModel):
    """`POST /v2/models/{task}/infer`: a BYTES input `text` (and `text_pair` for a pair task)."""

    id: str | None = None
    inputs: list[InferTensor] = Field(min_length=1, max_length=2)
    outputs: list[dict] | None = None
    parameters: dict | None = None
