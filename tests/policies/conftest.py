"""One torch thread per test here: tiny shapes, and a shared, loaded CPU where a second thread
only adds contention (measured: ~100x slower decode steps under load with 2 threads)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
