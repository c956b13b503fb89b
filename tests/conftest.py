import os
import shutil
import tempfile

import pytest
import torch


def pytest_configure(config):
    # Inductor's on-disk caches do not key on fusedrnn's Python autograd formulas: a warm
    # cache from another version of this code could hand a compiled test the old backward
    # (a helper's review, session 32, saw a regression pass so). One fresh directory per
    # run, unless the caller chose one.
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        config._fusedrnn_cache = tempfile.mkdtemp(prefix="fusedrnn-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = config._fusedrnn_cache


def pytest_unconfigure(config):
    made = getattr(config, "_fusedrnn_cache", None)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]


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
