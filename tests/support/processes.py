"""Many short `stockroom` processes run a few at a time, for tests parametrized over cases
that each need one (a refused setting, an unusable database): the processes are as an
operator runs them, and a module's cases start together instead of one after another."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Generic, TypeVar

Case = TypeVar("Case", bound=Hashable)

Ran = tuple[subprocess.CompletedProcess[str], Path]

# Processes at once: a core each and some waiting on I/O, on a 2-core machine.
AT_ONCE = 4


class Batch(Generic[Case]):
    """The processes of every case, started at the first ask (a few at a time); each test
    then waits for its own case's result, so a failure is reported by the test it is for."""

    def __init__(
        self,
        cases: Sequence[Case],
        command: Callable[[Case], tuple[list[str], dict[str, str], Path]],
    ) -> None:
        self._cases = cases
        self._command = command
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[Case, Future[Ran]] = {}

    def result(self, case: Case) -> Ran:
        """The case's process, finished, and the folder it ran in."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=AT_ONCE, thread_name_prefix="cli")
            # The asked-for case first, then the others in order. Each case's command (and
            # folder) is made here, in the test's thread (tmp_path_factory is not
            # thread-safe); only the processes run in the pool.
            for each in [case, *(c for c in self._cases if c != case)]:
                self._futures[each] = self._pool.submit(self._run, *self._command(each))
        return self._futures[case].result()

    @staticmethod
    def _run(args: list[str], env: dict[str, str], cwd: Path) -> Ran:
        done = subprocess.run(
            args, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
        )
        return done, cwd

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=False)
