"""The engine's own pass through the encoder: embeddings -> layers [start, stop) -> pooling -> heads.

The Hugging Face modules are still what computes (the embeddings, each layer, the mask helper the
model itself uses), but the engine runs the layer loop, so that it can
- give rows of a top-k task their task's copy of a layer while the other rows share the backbone's;
- fan out a Parallel request where its tasks first differ (AdapterHub's `Parallel` block): one
  trunk of the batch runs the layers every task shares, and at each task's first own stage the
  trunk's rows are copied for it (`fan_out`);
- start at layer N from given hidden states: `encode(..., stop=N)` then `encode(..., start=N,
  hidden=h)` is the same as one `encode` (the call a training cache of the lower layers makes).
Every function runs under the `Route` set by the caller (`sites.routed`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from streamlearn.engine.sites import Route, current, prepare, routed


def _mask(backbone, hidden: torch.Tensor, attention_mask: torch.Tensor):
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=backbone.model.config, inputs_embeds=hidden, attention_mask=attention_mask)


def embed(backbone, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The embeddings' output (its LayerNorm is a site, so each row gets its task's)."""
    extra = {"token_type_ids": inputs["token_type_ids"]} if inputs.get("token_type_ids") is not None else {}
    return backbone.model.get_submodule(backbone.arch.embeddings)(input_ids=inputs["input_ids"], **extra)


def encode(backbone, inputs: Mapping[str, torch.Tensor], start: int = 0, stop: int | None = None,
           hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Hidden states after layers [start, stop) (from the embeddings when `hidden` is None).

    Args:
        backbone: The shared backbone (with its sites installed).
        inputs: `input_ids`, `attention_mask` and optionally `token_type_ids`, one row per route row.
        start: First layer to run; `hidden` must be given when it is above 0.
        stop: Layer to stop before (default: all layers).
        hidden: The states entering layer `start`.
    """
    prepare(backbone)
    stop = backbone.info.layers if stop is None else stop
    if hidden is None:
        if start:
            raise ValueError("encode from a layer above 0 needs the hidden states entering it")
        hidden = embed(backbone, inputs)
    for i in range(start, stop):
        hidden = layer(backbone, i, hidden, inputs["attention_mask"])
    return hidden


def layer(backbone, i: int, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Run layer `i`: the backbone's for rows whose task has no copy of it, each task's copy for its rows."""
    route = current()
    shared = backbone.layer(i)
    copies = [p.copy_of(i) if p is not None else None for p in (route.parts if route else ())]
    if not any(c is not None for c in copies):
        return shared(hidden, _mask(backbone, hidden, attention_mask))
    if route.index is None:
        return copies[0](hidden, _mask(backbone, hidden, attention_mask))
    out = torch.empty_like(hidden)
    todo = {}
    for position, rows in route.groups():
        todo.setdefault(id(copies[position]) if copies[position] is not None else None, (copies[position], []))[1].append(rows)
    for module, row_sets in todo.values():
        rows = torch.cat(row_sets)
        sub, sub_mask = hidden.index_select(0, rows), attention_mask.index_select(0, rows)
        with routed(route.rows(rows)):
            out[rows] = (module or shared)(sub, _mask(backbone, sub, sub_mask))
    return out


def pool(states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Mask-aware mean over tokens, or the first token (`cls`)."""
    if pooling == "cls":
        return states[:, 0]
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _take(inputs: Mapping[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.index_select(0, rows) for k, v in inputs.items() if v is not None}


def forward(backbone, inputs: Mapping[str, torch.Tensor], row_parts: Sequence, training: bool = False) -> list[torch.Tensor]:
    """Logits of each row with its own task's parts (a mixed batch); one (C_task,) tensor per row.

    Rows of tasks with their own encoder copy (full) run on it; all other rows share one pass
    through the backbone, each site and layer applying the row's task's parts.
    """
    distinct = list(dict.fromkeys(row_parts))
    position = {id(p): j for j, p in enumerate(distinct)}
    index = torch.tensor([position[id(p)] for p in row_parts], device=inputs["input_ids"].device)
    out: list[torch.Tensor | None] = [None] * len(row_parts)
    shared = [j for j, p in enumerate(distinct) if p.encoder is None]
    for j, parts in enumerate(distinct):
        if parts.encoder is not None:
            rows = (index == j).nonzero().squeeze(1)
            sub = _take(inputs, rows)
            states = parts.encoder(**sub).last_hidden_state
            _scatter(out, rows, parts.head(pool(states, sub["attention_mask"], parts.pooling)))
    if shared:
        rows = torch.isin(index, torch.tensor(shared, device=index.device)).nonzero().squeeze(1)
        sub = _take(inputs, rows) if len(rows) != len(row_parts) else dict(inputs)
        local = torch.tensor([shared.index(int(j)) for j in index.index_select(0, rows).tolist()], device=index.device)
        route = Route(tuple(distinct[j] for j in shared), None if len(shared) == 1 else local, training)
        with routed(route):
            states = encode(backbone, sub)
        for k, parts in enumerate(route.parts):
            mine = (local == k).nonzero().squeeze(1)
            pooled = pool(states.index_select(0, mine), sub["attention_mask"].index_select(0, mine), parts.pooling)
            _scatter(out, rows.index_select(0, mine), parts.head(pooled))
    return out


def _scatter(out: list, rows: torch.Tensor, logits: torch.Tensor) -> None:
    for r, row in zip(rows.tolist(), logits):
        out[r] = row


def fan_out(backbone, inputs: Mapping[str, torch.Tensor], tasks: Sequence) -> list[torch.Tensor]:
    """Parallel: the same rows for every task; shared stages once, fanned out where tasks differ.

    Args:
        backbone: The shared backbone.
        inputs: One batch of B rows.
        tasks: The TaskParts of each task.

    Returns:
        One (B, C_task) logits tensor per task, in `tasks` order.
    """
    prepare(backbone)
    layers, b = backbone.info.layers, inputs["input_ids"].shape[0]
    device = inputs["input_ids"].device
    out: list[torch.Tensor | None] = [None] * len(tasks)
    for t, parts in enumerate(tasks):
        if parts.encoder is not None:
            out[t] = forward(backbone, inputs, [parts] * b)
            out[t] = torch.stack(out[t])
    pending = sorted((t for t, p in enumerate(tasks) if p.encoder is None), key=lambda t: tasks[t].divergence(layers))
    if not pending:
        return out
    members: list[int | None] = []  # per block of b rows: the task it belongs to, None for the trunk
    hidden = None
    for stage in range(layers + 1):
        joining = [t for t in pending if tasks[t].divergence(layers) == stage]
        later = [t for t in pending if tasks[t].divergence(layers) > stage]
        if stage == 0:
            members = ([None] if later else []) + joining
            rows = torch.arange(b, device=device).repeat(len(members))
            route = _route(tasks, members, b, device)
            with routed(route):
                hidden = embed(backbone, _take(inputs, rows))
        else:
            if joining or (None in members and not later):
                trunk = hidden[members.index(None) * b:(members.index(None) + 1) * b]
                kept = [(m, hidden[k * b:(k + 1) * b]) for k, m in enumerate(members) if m is not None]
                members = [m for m, _ in kept] + joining + ([None] if later else [])
                blocks = [h for _, h in kept] + [trunk] * len(joining) + ([trunk] if later else [])
                hidden = torch.cat(blocks)
            route = _route(tasks, members, b, device)
            with routed(route):
                hidden = layer(backbone, stage - 1, hidden, inputs["attention_mask"].repeat(len(members), 1))
    for k, t in enumerate(members):
        block = hidden[k * b:(k + 1) * b]
        # a task with no parts below its head (N = L) reads the trunk
        for owner in ([t] if t is not None else [u for u in pending if tasks[u].divergence(layers) > layers]):
            out[owner] = tasks[owner].head(pool(block, inputs["attention_mask"], tasks[owner].pooling))
    return out


def _route(tasks: Sequence, members: Sequence[int | None], b: int, device: torch.device) -> Route:
    parts = tuple(tasks[m] if m is not None else None for m in members)
    index = None if len(members) == 1 else torch.arange(len(members), device=device).repeat_interleave(b)
    return Route(parts, index)
