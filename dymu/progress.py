"""A small progress reporter for long training loops: one plain line every so often, no global state.

Lines look like::

    [edge] step 300/3000 (10%)  loss 0.532  tau 4.25  1.2 it/s  ETA 0:37:10

Plain lines (no carriage returns, no terminal control) so that logs redirected to a file or
collected from several ranks stay readable. In distributed training pass ``enabled=(rank == 0)``.
Set the environment variable ``DYMU_QUIET=1`` to silence every reporter.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Progress", "quiet_from_env"]

_QUIET_VALUES = {"1", "true", "yes", "on"}


def quiet_from_env() -> bool:
    """Whether ``DYMU_QUIET`` asks for silence (``1``, ``true``, ``yes`` or ``on``, any case)."""
    return os.environ.get("DYMU_QUIET", "").strip().lower() in _QUIET_VALUES


def _format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(max(seconds, 0.0)))))


def _format_scalar(value: Any) -> str:
    if hasattr(value, "item") and callable(value.item):  # 0-d tensors and numpy scalars
        value = value.item()
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _format_rate(steps_per_second: float) -> str:
    # Slow loops read better as seconds per step.
    if steps_per_second >= 1.0:
        return f"{steps_per_second:.1f} it/s"
    return f"{1.0 / steps_per_second:.1f} s/it"


class Progress:
    """Prints a progress line every ``every`` steps and/or every ``interval_s`` seconds.

    Args:
        total_steps: the number of steps the loop will run.
        desc: a short label printed in brackets at the start of every line.
        every: print when at least this many steps passed since the last line (default
            ``ceil(total_steps / 20)``: about 20 lines per run; ``total_steps`` for time-based only).
        interval_s: also print when at least this many seconds passed since the last line; ``None``
            disables the time trigger.
        stream: where lines go (default ``sys.stderr``, looked up when the reporter is created).
        enabled: ``False`` prints nothing (e.g. on ranks other than 0). ``DYMU_QUIET=1`` in the
            environment also disables it.
        initial_step: the step the loop starts from (when resuming), so rates and ETAs count only
            the steps run now.
        clock: a monotonic clock in seconds (tests inject a fake one).

    ``update(step, **scalars)`` takes the number of steps completed so far (1-based: call it after
    step ``step`` finished). The last step always prints a line. ``close()`` prints the total time
    once; the reporter is a context manager that closes itself.

    Example (a fake clock that advances one second per reading):
        >>> import io, itertools
        >>> out = io.StringIO()
        >>> clock = itertools.count().__next__
        >>> with Progress(4, "demo", every=2, stream=out, clock=clock) as bar:
        ...     for step in range(1, 5):
        ...         printed = bar.update(step, loss=1.0 / step)
        >>> print(out.getvalue(), end="")
        [demo] step 2/4 (50%)  loss 0.5  1.0 it/s  ETA 0:00:02
        [demo] step 4/4 (100%)  loss 0.25  1.0 it/s  ETA 0:00:00
        [demo] done 4 steps in 0:00:05 (1.2 s/it)
    """

    def __init__(
        self,
        total_steps: int,
        desc: str,
        every: int | None = None,
        interval_s: float | None = 60.0,
        stream: TextIO | None = None,
        enabled: bool = True,
        *,
        initial_step: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if int(total_steps) < 1:
            raise ValueError(f"Progress: total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)
        if every is None:
            every = max(1, math.ceil(self.total_steps / 20))
        if int(every) < 1:
            raise ValueError(f"Progress: every must be >= 1, got {every}")
        if interval_s is not None and interval_s <= 0:
            raise ValueError(f"Progress: interval_s must be > 0 or None, got {interval_s}")
        if not 0 <= int(initial_step) <= self.total_steps:
            raise ValueError(f"Progress: initial_step must lie in [0, {self.total_steps}], got {initial_step}")
        self.desc = desc
        self.every = int(every)
        self.interval_s = interval_s
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(enabled) and not quiet_from_env()
        self.initial_step = int(initial_step)
        self._clock = clock
        self._start = clock()
        self._last_time = self._start
        self._last_step = self.initial_step
        self._step = self.initial_step
        self._closed = False

    def _write(self, text: str) -> None:
        if self.enabled:
            self.stream.write(f"[{self.desc}] {text}\n")
            self.stream.flush()

    def _due(self, step: int, now: float) -> bool:
        if step == self.total_steps:
            return True
        if step - self._last_step >= self.every:
            return True
        return self.interval_s is not None and now - self._last_time >= self.interval_s

    def update(self, step: int, **scalars: Any) -> bool:
        """Record that ``step`` steps are done; print a line with ``scalars`` if one is due. Returns whether it printed.

        Raises:
            ValueError: ``step`` is negative, beyond ``total_steps``, or the reporter is closed.
        """
        if self._closed:
            raise ValueError(f"Progress [{self.desc}]: update after close()")
        step = int(step)
        if not 0 <= step <= self.total_steps:
            raise ValueError(f"Progress [{self.desc}]: step {step} outside [0, {self.total_steps}]")
        self._step = step
        now = self._clock()
        if not self._due(step, now):
            return False
        self._last_step, self._last_time = step, now
        if not self.enabled:
            return False
        parts = [f"step {step}/{self.total_steps} ({100 * step // self.total_steps}%)"]
        parts += [f"{name} {_format_scalar(value)}" for name, value in scalars.items()]
        elapsed = now - self._start
        done = step - self.initial_step
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(_format_rate(rate))
            parts.append(f"ETA {_format_duration((self.total_steps - step) / rate)}")
        self._write("  ".join(parts))
        return True

    def log(self, message: str) -> None:
        """Print ``message`` with this reporter's label (e.g. a validation result), unless silenced."""
        self._write(message)

    @property
    def elapsed_s(self) -> float:
        """Seconds since the reporter was created."""
        return self._clock() - self._start

    def close(self) -> None:
        """Print the total time once (later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        elapsed = self._clock() - self._start
        done = self._step - self.initial_step
        rate = f" ({_format_rate(done / elapsed)})" if done > 0 and elapsed > 0 else ""
        if self._step >= self.total_steps:
            self._write(f"done {done} steps in {_format_duration(elapsed)}{rate}")
        else:
            self._write(f"stopped at step {self._step}/{self.total_steps} after {_format_duration(elapsed)}{rate}")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
