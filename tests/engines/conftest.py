import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Reference forwards in the test thread use one torch thread (restored after): on a busy
    2-core machine a second OpenMP thread mostly waits at barriers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
