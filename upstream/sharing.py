"""Concurrent requests for random clues share upstream calls."""

from __future__ import annotations

import asyncio

from batching import Batcher
from upstream.client import MAX_BATCH, Clue, JServiceClient, UpstreamError

Ask = tuple[int, float]  # (count, timeout in seconds)


class SharedUpstream:
    """Hands out random clues from as few upstream calls as it can: while `max_calls` calls are in
    flight, new asks wait and then go out together, as one call for the sum of their counts (up to
    MAX_BATCH), each ask getting its own slice of the answer. Under load the upstream sees a few
    large calls instead of one small call per request; each ask keeps its own timeout."""

    def __init__(self, client: JServiceClient, max_calls: int) -> None:
        self._client = client
        self._calls: Batcher[Ask, list[Clue | None]] = Batcher(
            self._fetch_for, max_calls, MAX_BATCH, weight=lambda ask: ask[0]
        )

    async def fetch_random(self, count: int, timeout: float) -> list[Clue | None]:
        """Up to `count` random clues, None for each unusable item the upstream sent; raises
        UpstreamError when the call failed or did not answer within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                return await self._calls.submit((min(count, MAX_BATCH), timeout))
        except TimeoutError:
            raise UpstreamError(
                "timeout", f"the upstream did not answer within {timeout:g}s", transient=True
            ) from None

    async def _fetch_for(self, asks: list[Ask]) -> list[list[Clue | None]]:
        items = await self._client.fetch_random(sum(count for count, _ in asks), max(t for _, t in asks))
        # Sliced by position, unusable items included: each ask gets what it would have got alone,
        # rather than the last asks bearing every gap.
        slices: list[list[Clue | None]] = []
        offset = 0
        for count, _ in asks:
            slices.append(items[offset : offset + count])
            offset += count
        return slices
