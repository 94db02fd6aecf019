"""The models one server serves: each with its names, its backend, and its own scheduler (queue and worker).

A request names its model in the `model` field of any dialect. With one model the field may be omitted;
with several it is required (400 naming the served names). An unknown name is a 404 listing them.

Names a model answers to: its served name (--served-model-name, else a default from the model id), the
--model value as given, its --model-alias values, and the names its family is known by (e.g.
"jina-reranker-v3" for a Jina V3 checkpoint, which clients of Jina's API send). An implicit name claimed by
two models is dropped from both (only explicit names are guaranteed); two models with the same explicit
name are a start-up error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Callable

from lastrank.engine.backend import Backend, Capabilities
from lastrank.engine.runner import ModelRunner
from lastrank.errors import InvalidRequestError, LastrankError, NotFoundError
from lastrank.families import detect_family, family_spec, load_backend
from lastrank.model.packaged import canonical_id, packaged_names
from lastrank.model.resolve import resolve_checkpoint


@dataclass
class ServedModel:
    name: str  # shown in responses, /v1/models, the ledger and metrics
    model_id: str = ""  # what --model said (hub id, short name or folder)
    aliases: tuple[str, ...] = ()  # explicit extra names (--model-alias)
    implicit_names: tuple[str, ...] = ()  # names its family is known by; dropped when two models claim one
    load: Callable[[], Any] | None = None  # -> a Backend; run in a thread at start-up
    backend: Backend | None = None
    scheduler: ModelRunner | None = None  # a Scheduler, a Ray ModelClient (api/ray.py) or a test fake
    capabilities: Capabilities | None = None
    random_weights: bool = False
    dtype_choice: Any = None  # a DtypeChoice told by a Ray replica (api/ray.py); a local backend carries its own
    card: dict | None = None  # parameters, languages, license as its folder says (api/catalogue.model_card)
    ready: bool = False
    load_error: str | None = None
    stopping: bool = False  # the server is draining (SIGTERM) or ending: not ready, and not "loading" either
    # USD per 1,000 documents for this model (e.g. from a router config); None: --price, else --price-per-1k-docs
    price_per_1k_docs: float | None = None

    def explicit_names(self) -> set[str]:
        return {n for n in (self.name, self.model_id, *self.aliases) if n}

    def describe(self) -> dict:
        """/v1/models' entry (without the list envelope)."""
        caps = self.capabilities.as_dict() if self.capabilities is not None else {}
        # the type it runs in and, for dtype auto, why (engine/dtype_choice.py); absent until it is loaded
        choice = getattr(self.backend, "dtype_choice", None) or self.dtype_choice
        dtype = {"dtype": choice.dtype, "dtype_choice": choice.as_dict()} if choice is not None else {}
        # a routed model (lastrank/router): its policy and each provider's health and score rule, never a key or URL
        routed = self.scheduler.describe() if self.scheduler is not None else {}
        return {"id": self.name, "object": "model", "owned_by": "lastrank", "root": self.model_id or self.name,
                "ready": self.ready, "random_weights": self.random_weights, **caps, **(self.card or {}), **dtype,
                **routed,
                **({"load_error": self.load_error} if self.load_error else {})}


def default_served_name(model_id: str, family_names: tuple[str, ...] = ()) -> str:
    """The family's public name if it has one (jina-reranker-v3), else the last part of the id or folder."""
    if family_names:
        return family_names[0]
    return PurePath(model_id.rstrip("/\\")).name or model_id


def served_model(settings, index: int, family_names: tuple[str, ...] = (), **sources) -> ServedModel:
    """The index-th --model of `settings` as a ServedModel, the one naming rule: --served-model-name, else
    the family's public name, else the id's last part; answering also to its --model-alias values, its
    family's names and, for a model shipped in a package, its hub id and short names. `sources`: the
    ServedModel's scheduler / backend / load (and capabilities when known)."""
    model_id = settings.model[index] if index < len(settings.model) else ""
    if index < len(settings.served_model_name):
        name = settings.served_model_name[index]
    else:
        name = default_served_name(canonical_id(model_id), family_names)
    implicit = [n for n in (*family_names, *packaged_names(model_id)) if n != name]
    return ServedModel(name=name, model_id=model_id, aliases=settings.aliases_for(index, name),
                       implicit_names=tuple(dict.fromkeys(implicit)), **sources)


def served_models(settings) -> list[ServedModel]:
    """One ServedModel per --model: resolved (a missing folder or offline hub id fails here, before torch
    is imported), its family detected from the folder, named, with a loader that runs in the background.
    What `lastrank serve` and the Ray Serve deployment (api/ray.py) serve."""
    paths = [resolve_checkpoint(m) for m in settings.model]
    if len(settings.served_model_name) > len(settings.model):
        raise LastrankError(f"{len(settings.served_model_name)} --served-model-name for {len(settings.model)} --model")
    models = []
    for i, (model_id, path) in enumerate(zip(settings.model, paths)):
        family = detect_family(path)
        model = served_model(settings, i, family_spec(family).names)
        model.load = loader(model_id, path, family, model.name, settings)
        models.append(model)
    return models


def loader(model_id: str, path, family: str, name: str, settings) -> Callable[[], Backend]:
    """The background load of one served model: load, warm up, one line on stderr saying what runs."""
    def load():
        backend = load_backend(model_id, device=settings.device, dtype=settings.dtype, path=path, family=family)
        backend.warmup()
        note = " -- RANDOM WEIGHTS (a make-checkpoint folder): its scores mean nothing" if backend.random_weights else ""
        choice = backend.dtype_choice  # "auto": what it picked on this machine and why (engine/dtype_choice.py)
        print(f"lastrank: model {name} ({backend.capabilities.family}, {model_id}) loaded and warmed up "
              f"({settings.device}, {choice.describe()}); ready{note}", file=sys.stderr, flush=True)
        if choice.warning:  # e.g. int8 on a CPU without VNNI (model/int8.py: speed_note)
            print(f"lastrank: warning: model {name}: {choice.warning}", file=sys.stderr, flush=True)
        return backend

    return load


class ModelTable:
    def __init__(self, models: list[ServedModel]):
        if not models:
            raise ValueError("a server needs at least one model")
        self.models = list(models)
        owners: dict[str, ServedModel] = {}
        for m in self.models:
            for n in m.explicit_names():
                other = owners.get(n)
                if other is not None and other is not m:
                    raise ValueError(f"the name {n!r} is given to two served models ({other.name!r} and {m.name!r}); "
                                     "give each a distinct --served-model-name")
                owners[n] = m
        claims: dict[str, list[ServedModel]] = {}
        for m in self.models:
            for n in m.implicit_names:
                if n not in owners:
                    claims.setdefault(n, []).append(m)
        self._by_name = dict(owners)
        for n, claimants in claims.items():
            if len(claimants) == 1:
                self._by_name[n] = claimants[0]

    def __iter__(self):
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def names_of(self, model: ServedModel) -> list[str]:
        return sorted(n for n, m in self._by_name.items() if m is model)

    def served_names(self) -> str:
        return ", ".join(repr(m.name) for m in self.models)

    def resolve(self, requested: str | None) -> ServedModel:
        if requested is None:
            if len(self.models) == 1:
                return self.models[0]
            raise InvalidRequestError(f"`model` is required: this server serves {self.served_names()}")
        model = self._by_name.get(requested)
        if model is None:
            raise NotFoundError(f"model {requested!r} is not served here; this server serves {self.served_names()}")
        return model
