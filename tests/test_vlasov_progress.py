"""Vlasov data generation's progress bar: the first step compiles, the ETA starts after it."""

from __future__ import annotations

import io

import pytest
from tqdm import tqdm

from mlasdi.problems.vlasov import CompiledFirstUpdate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("step", [1, 250])  # one step in process; a batch of steps per worker
def test_the_eta_counts_from_the_second_update(step):
    clock, out = Clock(), io.StringIO()
    bar = tqdm(total=100 * step, desc="vlasov 8x8 compiling (one-time)", file=out, mininterval=0)
    bar._time = clock  # tqdm reads its clock through this attribute
    bar.reset(total=100 * step)
    update = CompiledFirstUpdate(bar, "vlasov 8x8")
    clock.now = 30.0  # compilation, then the first step
    update(step)
    assert bar.desc.startswith("vlasov 8x8") and "compiling" not in bar.desc
    for _ in range(2):  # two more steps of 1 s each
        clock.now += 1.0
        update(step)
    info = bar.format_dict
    assert info["n"] == 3 * step and info["elapsed"] == pytest.approx(2.0)
    assert info["rate"] == pytest.approx(step)  # steps per second after compilation
    remaining = (info["total"] - info["n"]) / info["rate"]
    assert remaining == pytest.approx(97.0)  # not ~30 s per step from the first one
    bar.close()
    assert "compiling (one-time)" in out.getvalue()
