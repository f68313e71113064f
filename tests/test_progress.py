import io
import re

import pytest
import torch

from dymu.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def not_quiet(monkeypatch):
    monkeypatch.delenv("DYMU_QUIET", raising=False)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_line_format_rate_and_eta():
    out, clock = io.StringIO(), FakeClock()
    bar = Progress(3000, "edge", every=300, stream=out, clock=clock)
    clock.now = 250.0  # 300 steps in 250 s: 1.2 it/s, 2700 left -> 2250 s
    assert bar.update(300, loss=0.5321, tau=4.25)
    assert lines(out) == ["[edge] step 300/3000 (10%)  loss 0.532  tau 4.25  1.2 it/s  ETA 0:37:30"]


def test_slow_loops_show_seconds_per_step_and_scalars_of_any_kind():
    out, clock = io.StringIO(), FakeClock()
    bar = Progress(10, "slow", every=1, stream=out, clock=clock)
    clock.now = 8.0
    bar.update(2, loss=torch.tensor(0.25), epoch=3, big=12345.0)
    assert lines(out) == ["[slow] step 2/10 (20%)  loss 0.25  epoch 3  big 1.23e+04  4.0 s/it  ETA 0:00:32"]


def test_step_throttling_always_prints_the_last_step():
    out = io.StringIO()
    bar = Progress(10, "t", every=3, interval_s=None, stream=out, clock=FakeClock())
    printed = [step for step in range(1, 11) if bar.update(step)]
    assert printed == [3, 6, 9, 10]
    assert [line.split("  ")[0] for line in lines(out)] == [
        "[t] step 3/10 (30%)",
        "[t] step 6/10 (60%)",
        "[t] step 9/10 (90%)",
        "[t] step 10/10 (100%)",
    ]


def test_time_throttling():
    out, clock = io.StringIO(), FakeClock()
    bar = Progress(100, "t", every=100, interval_s=5.0, stream=out, clock=clock)
    printed = []
    for step in range(1, 21):
        clock.now = step * 1.5  # a line is due every 4th step (6 s >= 5 s)
        if bar.update(step):
            printed.append(step)
    assert printed == [4, 8, 12, 16, 20]


def test_default_every_gives_about_twenty_lines():
    out = io.StringIO()
    bar = Progress(1000, "t", interval_s=None, stream=out, clock=FakeClock())
    assert sum(bar.update(step) for step in range(1, 1001)) == 20


def test_close_prints_total_time_once_and_context_manager_closes():
    out, clock = io.StringIO(), FakeClock()
    with Progress(4, "w", every=10, stream=out, clock=clock) as bar:
        clock.now = 3724.0
        bar.update(4)
    bar.close()
    assert lines(out)[-1] == "[w] done 4 steps in 1:02:04 (931.0 s/it)"
    assert len(lines(out)) == 2


def test_close_on_early_exit_says_where_it_stopped():
    out, clock = io.StringIO(), FakeClock()
    with pytest.raises(KeyError):
        with Progress(100, "w", every=50, stream=out, clock=clock) as bar:
            clock.now = 10.0
            bar.update(20)
            raise KeyError("boom")
    assert lines(out) == ["[w] stopped at step 20/100 after 0:00:10 (2.0 it/s)"]


def test_resume_counts_only_new_steps():
    out, clock = io.StringIO(), FakeClock()
    bar = Progress(200, "r", every=50, stream=out, clock=clock, initial_step=100)
    clock.now = 25.0
    bar.update(150)
    assert lines(out) == ["[r] step 150/200 (75%)  2.0 it/s  ETA 0:00:25"]


def test_disabled_and_quiet_print_nothing(monkeypatch):
    out = io.StringIO()
    with Progress(5, "off", every=1, stream=out, enabled=False) as bar:
        bar.update(5)
        bar.log("hidden")
    assert out.getvalue() == ""
    monkeypatch.setenv("DYMU_QUIET", "1")
    with Progress(5, "quiet", every=1, stream=out) as bar:
        bar.update(5)
    assert out.getvalue() == ""
    monkeypatch.setenv("DYMU_QUIET", "0")
    with Progress(5, "loud", every=1, stream=out) as bar:
        bar.update(5)
        bar.log("val acc 0.91")
    assert re.search(r"^\[loud\] step 5/5 \(100%\)", out.getvalue(), flags=re.M)
    assert "[loud] val acc 0.91\n" in out.getvalue()


def test_reporters_are_independent():
    a_out, b_out = io.StringIO(), io.StringIO()
    a = Progress(10, "a", every=5, interval_s=None, stream=a_out, clock=FakeClock())
    b = Progress(10, "b", every=2, interval_s=None, stream=b_out, clock=FakeClock())
    for step in range(1, 11):
        a.update(step)
        b.update(step)
    assert len(lines(a_out)) == 2 and len(lines(b_out)) == 5


def test_invalid_use_raises():
    with pytest.raises(ValueError, match="total_steps"):
        Progress(0, "x")
    with pytest.raises(ValueError, match="every"):
        Progress(10, "x", every=0)
    bar = Progress(10, "x", stream=io.StringIO())
    with pytest.raises(ValueError, match=r"step 11 outside \[0, 10\]"):
        bar.update(11)
    bar.close()
    with pytest.raises(ValueError, match="after close"):
        bar.update(5)
