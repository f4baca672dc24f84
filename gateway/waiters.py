"""Waiting for a view to show something: waiters per key, woken when the key's entry changes."""
from __future__ import annotations

import asyncio
from typing import Callable, TypeVar

__all__ = ["Waiters"]

T = TypeVar("T")


class Waiters:
    """Callers awaiting `check()` to give something for a key; `wake(key)` after the key changed."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[asyncio.Event]] = {}

    def wake(self, key: str) -> None:
        for waiter in self._waiting.pop(key, ()):
            waiter.set()

    async def until(self, key: str, check: Callable[[], T | None], timeout_s: float) -> T | None:
        """What `check()` gives once it gives something (it is asked after each wake), or None after timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (found := check()) is None:
            left = deadline - loop.time()
            if left <= 0:
                return None
            waiter = asyncio.Event()
            self._waiting.setdefault(key, []).append(waiter)
            try:
                await asyncio.wait_for(waiter.wait(), left)
            except TimeoutError:
                return None
            finally:
                waiting = self._waiting.get(key)
                if waiting and waiter in waiting:
                    waiting.remove(waiter)
        return found
