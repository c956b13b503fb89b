import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FUSEDRNN_LARGE_TESTS") != "1":
        skip_large = pytest.mark.skip(reason="tensors past 2^31 elements: FUSEDRNN_LARGE_TESTS=1")
        for item in items:
            if "large" in item.keywords:
                item.add_marker(skip_large)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
