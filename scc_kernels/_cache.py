"""Memo for the tables the loss builds once per shape (band index, Hermitian weights, twiddles).

`TableCache` bounds its tensors' bytes (`SCC_KERNELS_TABLE_CACHE_MB` per cache, default 256) and
builds outside autograd and torch.func; `clear_caches()` empties every cache (docs/internals.md).
"""

from __future__ import annotations

import collections
import functools
import os
import threading
import warnings
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, ParamSpec, TypeVar

import torch

_DEFAULT_BUDGET_MB = 256


def _budget_from_environment() -> int:
    """Bytes per cache: SCC_KERNELS_TABLE_CACHE_MB, or the default (with a warning) if unreadable."""
    text = os.environ.get("SCC_KERNELS_TABLE_CACHE_MB")
    if text is None:
        return _DEFAULT_BUDGET_MB * 2**20
    try:
        megabytes = float(text)
        if not megabytes >= 0:
            raise ValueError
    except ValueError:
        warnings.warn(
            f"scc_kernels: SCC_KERNELS_TABLE_CACHE_MB={text!r} is not a number of megabytes >= 0; "
            f"using {_DEFAULT_BUDGET_MB}",
            stacklevel=2,
        )
        megabytes = _DEFAULT_BUDGET_MB
    return int(megabytes * 2**20)


def tensor_bytes(value: torch.Tensor | Iterable[object]) -> int:
    """Bytes of the distinct storages of the tensors in `value` (a tensor or a tuple of them)."""
    tensors = [value] if isinstance(value, torch.Tensor) else [v for v in value if isinstance(v, torch.Tensor)]
    storages = {(t.device, t.untyped_storage().data_ptr()): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


_Args = ParamSpec("_Args")
_Table = TypeVar("_Table", bound="torch.Tensor | tuple[object, ...]")  # a tensor, or a tuple of them


class TableCache(Generic[_Args, _Table]):
    """LRU memo of one table builder, bounded by the bytes of the tensors it holds (`budget`)."""

    def __init__(self, build: Callable[_Args, _Table]):
        functools.update_wrapper(self, build)
        self.build = build  # the builder itself, uncached
        self.budget = _budget_from_environment()
        self._entries: collections.OrderedDict[Hashable, tuple[_Table, int]] = (
            collections.OrderedDict()
        )  # key -> (table, bytes)
        self._bytes = 0
        self._lock = threading.Lock()
        _CACHES.append(self)

    def __call__(self, *args: _Args.args, **kwargs: _Args.kwargs) -> _Table:
        if torch.compiler.is_compiling():
            return self.build(*args, **kwargs)
        key = (args, tuple(sorted(kwargs.items()))) if kwargs else args
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry[0]
        with torch.no_grad(), torch._C._DisableFuncTorch():
            table = self.build(*args, **kwargs)
        size = tensor_bytes(table)
        with self._lock:
            if key in self._entries:  # another thread built it meanwhile: keep one
                return self._entries[key][0]
            self._entries[key] = (table, size)
            self._bytes += size
            while self._bytes > self.budget and len(self._entries) > 1:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
        return table

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


_CACHES: list[TableCache[..., Any]] = []


def clear_caches() -> None:
    """Drop every table scc_kernels keeps per shape (band index, Hermitian weights, DFT twiddles),
    on every device; they are rebuilt on the next call that needs them."""
    for cache in _CACHES:
        cache.clear()
