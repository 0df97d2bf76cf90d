"""Worker processes that hold envs, shared by ShardedVectorEnv (one game's envs over several cores) and
EnvPool (a fleet's many games): spawned (safe beside torch's and ALE's threads, about a second to start),
asked over pipes, their errors raised in the parent with the worker's traceback.

    workers = Workers(serve_fn, [args_of_worker_0, args_of_worker_1])
    workers.send_all([("step", a0), ("step", a1)]); replies = workers.gather()
    workers.close()

A worker's body is `serve(conn, build, handle)`: `build()` makes its envs (a list) and the first reply,
then every (command, data) request is answered with `handle(envs, command, data)` until "close", and the
envs are closed.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable, Sequence
from typing import Any


def serve(conn, build: Callable[[], tuple[list, Any]], handle: Callable[[list, str, Any], Any]) -> None:
    envs = None
    try:
        envs, ready = build()
        conn.send(("ok", ready))
        while True:
            command, data = conn.recv()
            if command == "close":
                break
            conn.send(("ok", handle(envs, command, data)))
    except (EOFError, KeyboardInterrupt):
        pass
    except Exception:  # the parent raises it
        conn.send(("error", traceback.format_exc()))
    finally:
        for env in envs or []:
            env.close()
        conn.close()


class Workers:
    """One spawned process per entry of `args`, each running `target(conn, *args[i])`."""

    def __init__(self, target: Callable, args: Sequence[tuple]):
        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for worker_args in args:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=target, args=(child, *worker_args), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def send_all(self, messages: Sequence[tuple[str, Any]]) -> None:
        for conn, message in zip(self.conns, messages, strict=True):
            conn.send(message)

    def gather(self, which: Sequence[int] | None = None) -> list:
        """The replies of the workers `which` (all), in order; a worker's error closes them all and raises."""
        out = []
        for i in range(len(self.conns)) if which is None else which:
            status, value = self.conns[i].recv()
            if status == "error":
                self.close()
                raise RuntimeError(f"an env worker failed:\n{value}")
            out.append(value)
        return out

    def ask(self, worker: int, command: str, data: Any) -> Any:
        self.conns[worker].send((command, data))
        return self.gather([worker])[0]

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []
