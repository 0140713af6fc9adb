"""Hashing slots are the machine's, not a process's: held in one process, refused in another;
a share that is not a whole number of cores is kept by resting between hashes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from feed.hash_slots import HashingBusy, HashSlots

HOLD = """
import sys, time
from pathlib import Path
from feed.hash_slots import HashSlots
slots = HashSlots(Path(sys.argv[1]), 1.0, 0.0, machine_cores=2)
with slots.slot(), slots.slot():
    print("holding", flush=True)
    time.sleep(30)
"""


def test_slots_taken_in_another_process_are_refused_here_until_it_dies(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        here = HashSlots(tmp_path, 1.0, 0.02, machine_cores=2)
        started = time.perf_counter()
        with pytest.raises(HashingBusy), here.slot():
            pass
        assert time.perf_counter() - started < 0.5  # the wait is bounded
        holder.kill()  # the kernel frees a dead process's locks
        holder.wait()
        with here.slot(), here.slot():
            pass
    finally:
        holder.kill()


def test_half_a_core_is_one_slot_that_spends_a_burst_then_hashes_half_the_time(tmp_path):
    slots = HashSlots(tmp_path, 0.25, 0.0, machine_cores=2)
    assert (slots.slots, slots.duty) == (1, 0.5)
    for _ in range(2):  # an idle slot answers hashes back to back, within its burst
        with slots.slot():
            time.sleep(0.05)
    with slots.slot():
        time.sleep(0.6)  # past the burst: its budget is spent
    with pytest.raises(HashingBusy), slots.slot():
        pass
    time.sleep(0.5)  # fills at half a second a second
    with slots.slot():
        pass
