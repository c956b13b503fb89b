"""Host-side CUDA plumbing that needs no GPU: the driver/runtime version check and the
CUDA facts in fusedrnn.info()."""

import pytest

import fusedrnn
from fusedrnn import _cuda


def test_info_reports_cuda_versions():
    info = fusedrnn.info()
    assert "cuda_runtime_built" in info and "cuda_driver_supports" in info
    if not _cuda.available():
        assert info["cuda_runtime_built"] is None


@pytest.mark.parametrize(
    "runtime, driver",
    [(13000, 13000), (13000, 13020), (13010, 13000), (12040, 12080), (12080, 13000)],
)
def test_driver_new_enough(runtime, driver):
    """Any driver of the runtime's major version or newer runs it (minor version compat)."""
    assert _cuda._driver_problem(runtime, driver) is None


def test_driver_too_old_names_both_versions_and_the_fix():
    msg = _cuda._driver_problem(13000, 12040)
    assert "CUDA runtime 13.0" in msg and "CUDA up to 12.4" in msg
    assert "Rebuild fusedrnn with a CUDA toolkit" in msg and "R580" in msg
    assert "torch" in msg
    assert "no NVIDIA driver" in _cuda._driver_problem(13000, 0)


class _FakeModule:
    def __init__(self, runtime, driver):
        self.runtime, self.driver, self.calls = runtime, driver, 0

    def runtime_version(self):
        self.calls += 1
        return self.runtime

    def driver_version(self):
        return self.driver


def test_check_driver_raises_and_caches_success(monkeypatch):
    monkeypatch.setattr(_cuda, "_driver_ok", False)
    monkeypatch.setattr(_cuda, "_C_cuda", _FakeModule(13000, 12080))
    with pytest.raises(RuntimeError, match=r"built with CUDA runtime 13\.0.*up to 12\.8"):
        _cuda.check_driver()
    fake = _FakeModule(13000, 13000)
    monkeypatch.setattr(_cuda, "_C_cuda", fake)
    _cuda.check_driver()
    _cuda.check_driver()
    assert fake.calls == 1  # checked once, then cached


def test_kernel_path_variable_is_read_and_checked(monkeypatch):
    """FUSEDRNN_CUDA_PATH, which forces a CUDA kernel: the default when unset, a valid value
    when set, a bad value refused by name before any launch."""
    monkeypatch.delenv("FUSEDRNN_CUDA_PATH", raising=False)
    assert _cuda.kernel_path() == "auto"
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "stepwise")
    assert _cuda.kernel_path() == "stepwise"
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "fast")
    with pytest.raises(ValueError, match=r"FUSEDRNN_CUDA_PATH must be one of .*'fast'"):
        _cuda.kernel_path()


class _FakePlans:
    """``_C_cuda.plan`` answering from a list: each call takes the next plan."""

    def __init__(self, *plans):
        self.plans, self.calls = list(plans), 0

    def plan(self, *args):
        self.calls += 1
        return self.plans.pop(0)


def test_device_sizes_answer_is_cached_unless_the_plan_was_transient(monkeypatch):
    """Packed input gets its batch_sizes copied to the device only where the launcher's plan
    reads them there (persistent, cluster). That answer is cached per shape, except when the
    plan was refused by a CUDA call that failed (``transient``: out of memory while a kernel
    loads), which the next call may not meet: cached, such a shape kept the per-step kernel
    for the rest of the process."""
    monkeypatch.setattr(_cuda, "_DEVICE_SIZES_PLANS", {})
    stepwise_oom = {"path": "stepwise", "transient": True}
    cluster = {"path": "cluster", "transient": False}
    fake = _FakePlans(stepwise_oom, cluster)
    monkeypatch.setattr(_cuda, "_C_cuda", fake)
    key = ("float32", 3, 64, "tanh", False, 0, "auto")
    assert _cuda._reads_device_sizes(*key) is False
    assert _cuda._reads_device_sizes(*key) is True  # asked again: the failure was transient
    assert _cuda._reads_device_sizes(*key) is True  # cached now
    assert fake.calls == 2
    fake = _FakePlans({"path": "stepwise", "transient": False})
    monkeypatch.setattr(_cuda, "_C_cuda", fake)
    other = ("float32", 300, 64, "tanh", False, 0, "auto")
    assert _cuda._reads_device_sizes(*other) is False
    assert _cuda._reads_device_sizes(*other) is False  # a plain refusal is cached
    assert fake.calls == 1
