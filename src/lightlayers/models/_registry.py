"""Model registry: every model is built by name through :func:`create_model`."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from lightlayers.models.interface import ClassifierBase, ModelInfo
from lightlayers.params import ParamCount, count_params

__all__ = ["ModelInfo", "check_options", "create_model", "list_models", "model_info",
           "model_options", "model_params", "register_model"]


Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class _Entry:
    pattern: str  # e.g. "study-light-k{k}" or a plain name
    builder: Builder
    # A ModelInfo, or a function making one on first use (transfer models read theirs from
    # torchvision's weights metadata, which would slow down `import lightlayers`).
    info_source: ModelInfo | Callable[[], ModelInfo]
    listed_k: tuple[int, ...] = ()

    @property
    def info(self) -> ModelInfo:
        if isinstance(self.info_source, ModelInfo):
            return self.info_source
        if self.pattern not in _INFO_CACHE:
            _INFO_CACHE[self.pattern] = self.info_source()
        return _INFO_CACHE[self.pattern]

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile("^" + re.escape(self.pattern).replace(r"\{k\}", r"(\d+)") + "$")

    def names(self) -> list[str]:
        if "{k}" not in self.pattern:
            return [self.pattern]
        return [self.pattern.format(k=k) for k in self.listed_k]


_REGISTRY: dict[str, _Entry] = {}
_INFO_CACHE: dict[str, ModelInfo] = {}


def register_model(
    pattern: str, info: ModelInfo | Callable[[], ModelInfo], listed_k: Iterable[int] = ()
) -> Callable[[Builder], Builder]:
    """Register ``builder(num_classes=, in_chans=, [k=,] **kw)`` under ``pattern``.

    The builder must return a :class:`~lightlayers.models.interface.ClassifierBase`: the
    interface the harness relies on. ``info`` may be a function, called on first use.

    A pattern containing ``{k}`` accepts any integer k >= 1 (``study-light-k7``); ``listed_k``
    are the values :func:`list_models` shows.
    """

    def deco(builder: Builder) -> Builder:
        if pattern in _REGISTRY:
            raise ValueError(f"model {pattern!r} is registered twice")
        _REGISTRY[pattern] = _Entry(pattern, builder, info, tuple(listed_k))
        return builder

    return deco


def _resolve(name: str) -> tuple[_Entry, int | None]:
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    for entry in _REGISTRY.values():
        m = entry.regex.match(name)
        if m:
            if "{k}" not in entry.pattern:
                return entry, None
            k = int(m.group(1))
            if k < 1:
                raise ValueError(f"{name!r}: k must be >= 1")
            return entry, k
    known = list_models()
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown model {name!r}.{hint} `lightlayers.list_models()` lists all "
        f"{len(known)} names; names with k accept any k >= 1 (e.g. study-light-k7)."
    )


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of ``name`` (k filled in for ``...-k{k}`` families)."""
    entry, k = _resolve(name)
    return replace(entry.info, name=name, k=k) if k is not None else entry.info


def create_model(
    name: str, num_classes: int | None = None, in_chans: int | None = None, **kwargs: Any
) -> ClassifierBase:
    """Build a registered model by name; it returns logits.

    ``num_classes`` and ``in_chans`` default (``None``) to the model's own: 2 and 3 for the
    study models, 10 and 1 for the paper's MNIST models. Other keyword arguments go to the
    builder as given (``weights=None`` means no pretrained weights for ``transfer-*``).

    Example:
        >>> m = create_model("study-light-k3")
        >>> m(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 2])
    """
    entry, k = _resolve(name)
    info = model_info(name)
    num_classes = info.num_classes if num_classes is None else num_classes
    in_chans = info.in_chans if in_chans is None else in_chans
    for arg, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: {arg} must be an integer >= 1, got {value!r}")
    check_options(name, kwargs)
    if k is not None:
        kwargs["k"] = k
    model = entry.builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if not isinstance(model, ClassifierBase):
        raise TypeError(f"{name}: its builder returned a {type(model).__name__}, not a "
                        "ClassifierBase (lightlayers.models.interface)")
    model.model_info = replace(info, num_classes=num_classes, in_chans=in_chans)
    return model


def model_params(name: str, num_classes: int | None = None) -> ParamCount:
    """:func:`~lightlayers.params.count_params` of ``create_model(name, num_classes)`` (no
    pretrained weights), without initialising any weight: the model is built on PyTorch's meta
    device (shapes only, no memory), which takes milliseconds even for InceptionV3."""
    kwargs: dict[str, Any] = {"weights": None} if "weights" in model_options(name) else {}
    with torch.device("meta"):
        return count_params(create_model(name, num_classes=num_classes, **kwargs))


def model_options(name: str) -> list[str]:
    """The keyword options ``create_model(name, ...)`` accepts beyond classes and channels."""
    import inspect

    entry, _ = _resolve(name)
    params = inspect.signature(entry.builder).parameters
    return [p for p in params if p not in ("num_classes", "in_chans", "k")]


def check_options(name: str, options: dict[str, Any]) -> None:
    """A ValueError naming the options ``name`` does not take (e.g. weights for a model trained
    from scratch), instead of a TypeError from inside its builder."""
    known = model_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "no options"
        raise ValueError(f"{name} does not take {', '.join(unknown)} (it takes: {takes})")


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by an fnmatch pattern (``"study-*"``)."""
    names = [n for entry in _REGISTRY.values() for n in entry.names()]
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return sorted(names, key=_natural_key)


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
