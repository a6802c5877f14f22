"""Redis Cluster's one-slot rule, checked on a single Redis: every command this test process
sends, every script call and every MULTI/EXEC transaction must name keys of one hash slot.

``SlotCheck.watching()`` wraps the asyncio client's command and pipeline execution and the
store's own pipelines (``boundary.send_all``): the real commands still go to the real Redis; the
keys of each command are those Redis itself names (``COMMAND GETKEYS``), their slots are
redis-py's ``key_slot``, as a cluster client computes them. Pub/sub connections are not
covered (they send no keyed command here).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis.asyncio.client as aioclient
from redis import Redis as SyncRedis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from reviewstream.store import boundary


class SlotCheck:
    def __init__(self, redis_url: str) -> None:
        self._redis = SyncRedis.from_url(redis_url, decode_responses=True)
        self.violations: list[str] = []
        self.commands: collections.Counter[str] = collections.Counter()
        self.keyed: collections.Counter[str] = collections.Counter()  # of them, with keys
        self.scripts: collections.Counter[str] = collections.Counter()  # by SHA1

    def close(self) -> None:
        self._redis.close()

    def keys_of(self, args: Sequence[Any]) -> list[str]:
        name = str(args[0]).upper()
        if name in ("EVALSHA", "EVAL"):
            return [str(k) for k in args[3 : 3 + int(args[2])]]
        words = [*str(args[0]).split(), *args[1:]]  # redis-py names "XGROUP CREATE" as one
        try:
            return [str(k) for k in self._redis.command_getkeys(*words)]
        except ResponseError:
            return []  # a command without keys (PING, TIME, SCRIPT LOAD, ...)

    def check(self, what: str, commands: Sequence[Sequence[Any]]) -> None:
        """``commands`` run as one unit (a command, or a transaction): one slot for all."""
        keys: list[str] = []
        for args in commands:
            name = str(args[0]).upper()
            self.commands[name] += 1
            if name == "EVALSHA":
                self.scripts[str(args[1])] += 1
            found = self.keys_of(args)
            self.keyed[name] += bool(found)
            keys += found
        slots = {key_slot(k.encode()) for k in keys}
        if len(slots) > 1:
            names = " ".join(str(c[0]) for c in commands)
            self.violations.append(f"{what} [{names}] spans slots {sorted(slots)}: {keys}")

    @contextlib.contextmanager
    def watching(self) -> Iterator[SlotCheck]:
        check = self
        execute_command: Any = aioclient.Redis.execute_command
        pipeline_execute = aioclient.Pipeline.execute

        async def checked_command(self: aioclient.Redis, *args: Any, **options: Any) -> Any:
            check.check("command", [args])
            return await execute_command(self, *args, **options)

        async def checked_pipeline(self: aioclient.Pipeline, raise_on_error: bool = True) -> Any:
            stack = [args for args, _ in self.command_stack]
            if self.is_transaction:
                check.check("transaction", stack)
            else:
                for args in stack:
                    check.check("pipelined command", [args])
            return await pipeline_execute(self, raise_on_error)

        send_all = boundary.send_all

        async def checked_send_all(
            redis: Any, commands: Sequence[boundary.Command], **options: Any
        ) -> Any:
            for args in commands:
                check.check("pipelined command", [args])
            return await send_all(redis, commands, **options)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(aioclient.Redis, "execute_command", checked_command)
            patch.setattr(boundary, "send_all", checked_send_all)
            patch.setattr(aioclient.Pipeline, "execute", checked_pipeline)
            yield self
