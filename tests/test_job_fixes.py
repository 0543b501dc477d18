"""Job review fixes: submodules not shadowed by their functions, one listing per serve iteration,
bounded resize bookkeeping, and the ``fraction`` config field."""

from __future__ import annotations

import importlib
import pkgutil
import threading
from types import ModuleType

import fsspec
import numpy as np
import pytest
from conftest import sample_png_bytes
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image
from prometheus_client import CollectorRegistry

import relmon
from relmon.config import MonitorConfig


def test_job_functions_do_not_shadow_submodules():
    import relmon.jobs as jobs
    import relmon.jobs.calibrate_job as cal_mod
    import relmon.jobs.serve_job as serve_mod

    assert isinstance(cal_mod, ModuleType) and isinstance(serve_mod, ModuleType)
    assert cal_mod.calibrate is jobs.calibrate and serve_mod.serve is jobs.serve
    assert callable(jobs.calibrate) and not isinstance(jobs.calibrate, ModuleType)
    # every submodule of relmon.jobs is reachable as an attribute of the package (no export shadows it)
    names = [info.name for info in pkgutil.iter_modules(jobs.__path__)]
    assert {"calibrate_job", "serve_job", "monitor", "only_new"} <= set(names)
    for name in names:
        module = importlib.import_module(f"relmon.jobs.{name}")
        assert getattr(jobs, name) is module, name
    # the top-level API keeps its own calibrate (tensors / LabelledImages in, a Calibration out)
    assert relmon.calibrate.__module__ == "relmon.api"


# --------------------------------------------------------------------------------------------------
# 1. serve lists the input folder once per iteration; only-new selection honours storage options

FAST = dict(region=7, steps=8, batch_size=16, n=None)


class CountingFS(MemoryFileSystem):
    """An in-memory file system (its own store) that counts the listings (``find`` calls) of its
    folders and requires the storage option ``token="secret"`` (like a cloud bucket's credentials)."""

    protocol = "relmoncount"
    store: dict = {}
    pseudo_dirs = [""]
    finds: list[str] = []

    def __init__(self, *args, token=None, **kwargs):
        if token != "secret":
            raise PermissionError(f"relmoncount:// needs storage option token='secret', got {token!r}")
        super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        for proto in (CountingFS.protocol, OpenCountingFS.protocol):
            if path.startswith(proto + "://"):
                path = path[len(proto) + 3:]
        return MemoryFileSystem._strip_protocol(path)

    def find(self, path, *args, **kwargs):
        CountingFS.finds.append(self._strip_protocol(path))
        return super().find(path, *args, **kwargs)


class OpenCountingFS(CountingFS):
    """:class:`CountingFS` without the credentials (``relmon serve`` has no storage options)."""

    protocol = "relmoncountopen"

    def __init__(self, *args, **kwargs):
        MemoryFileSystem.__init__(self, *args, **kwargs)


@pytest.fixture
def counting_fs():
    fsspec.register_implementation(CountingFS.protocol, CountingFS, clobber=True)
    fsspec.register_implementation(OpenCountingFS.protocol, OpenCountingFS, clobber=True)
    CountingFS.store.clear()
    CountingFS.finds.clear()
    yield CountingFS
    CountingFS.store.clear()
    CountingFS.finds.clear()


def test_only_new_selection_uses_the_streams_storage_options_and_listing(counting_fs):
    from relmon.data.streams import ImageFolderStream
    from relmon.jobs.only_new import SeenFiles

    fs = counting_fs(token="secret")
    for i in range(3):
        fs.pipe(f"/sel/img{i}.png", sample_png_bytes(i))
    with pytest.raises(PermissionError, match="token='secret'"):  # the options are needed
        fsspec.filesystem(counting_fs.protocol)
    stream = ImageFolderStream("relmoncount://sel", storage_options={"token": "secret"})
    assert stream.storage_options == {"token": "secret"} and len(counting_fs.finds) == 1
    seen = SeenFiles(None)
    assert len(seen.select(stream)) == 3  # the stream's own listing: no second listing, no missing options
    assert len(counting_fs.finds) == 1
    seen.commit()
    assert len(seen.select(stream)) == 0
    # a stream without its own listing is listed with its storage options
    del stream.file_info
    assert len(seen.select(stream)) == 0 and len(counting_fs.finds) == 2


@pytest.mark.parametrize("watch", [True, False])
def test_serve_lists_the_input_once_per_iteration(counting_fs, watch):
    from relmon.jobs import serve

    fs = counting_fs(token="secret")
    for i in range(3):
        fs.pipe(f"/watch/img{i}.png", sample_png_bytes(i))
    runs = []

    def on_run(summary):
        runs.append(summary)
        if len(runs) == 1:
            fs.pipe("/watch/img7.png", sample_png_bytes(7))  # a new file: the second iteration runs again

    stop = threading.Event()
    timer = threading.Timer(120, stop.set)  # safety net only
    timer.start()
    cfg = MonitorConfig(**FAST, input=f"{OpenCountingFS.protocol}://watch", watch=watch, http_addr="127.0.0.1",
                        http_port=0, interval_seconds=0.05, max_iterations=2)
    try:
        result = serve(cfg, stop=stop, on_run=on_run, registry=CollectorRegistry())
    finally:
        timer.cancel()
    assert not stop.is_set() and result.runs == 2 and result.failures == 0
    assert [s.scored for s in runs] == [3, 1]  # only-new: the second run scores the new file only
    # two iterations, each listing the folder once (the old loop listed it 3 times with watch, 2 without)
    assert counting_fs.finds == ["/watch", "/watch"]


# --------------------------------------------------------------------------------------------------
# 2. the resize bookkeeping of a folder stream stays bounded


def test_resized_bookkeeping_is_bounded_on_many_images(tmp_path):
    import warnings

    from relmon.data.streams import ImageFolderStream, ResizedInputWarning

    bound = ImageFolderStream.MAX_RESIZED_IDS
    n = 3 * bound  # many more odd-sized images than the bound
    root = tmp_path / "many"
    root.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / "a_ref.png")  # reference 8x8
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)).save(root / f"b{i:04d}.png")
    stream = ImageFolderStream(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(len(stream)):
            assert stream[i]["x"].shape == (1, 8, 8)
        stream[1]  # read again: counted again, still named once
    resize_warnings = [w for w in caught if issubclass(w.category, ResizedInputWarning)]
    assert len(resize_warnings) == 1 and "b0000.png is 6x5; resized to 8x8" in str(resize_warnings[0].message)
    assert stream.n_resized == n + 1
    first = [str(root / f"b{i:04d}.png") for i in range(bound)]
    assert stream.resized == dict.fromkeys(first, (6, 5))  # the first `bound` resized images, no more


# --------------------------------------------------------------------------------------------------
# 4. the fraction field: the share of the image perturbed, resolved to the same L everywhere


def test_fraction_resolves_the_papers_protocol_and_excludes_steps(tmp_path):
    import argparse

    from relmon.config import ConfigError, add_config_flags, config_from_args, config_from_dict, load_config

    cfg = config_from_dict({"fraction": 0.16, "region": 4})
    assert cfg.steps is None and cfg.fraction == 0.16
    assert cfg.resolve_steps(28, 28) == 8  # 0.16 x 49 regions = 7.84 -> 8
    assert config_from_dict({"fraction": 0.16, "region": 2}).resolve_steps(28, 28) == 31  # of 196
    assert MonitorConfig().resolve_steps(64, 64) == 8  # steps stays a count
    assert config_from_dict({"steps": None}).resolve_steps(28, 28) == 8  # neither: the paper's 0.16
    both = r"steps \(8\) and fraction \(0.16\) are both set.*fix: give only one of them: remove steps \(steps: null"
    with pytest.raises(ConfigError, match=both):
        config_from_dict({"steps": 8, "fraction": 0.16})
    with pytest.raises(ConfigError, match=both):
        MonitorConfig().with_overrides({"steps": "8", "fraction": "0.16"})
    with pytest.raises(ConfigError, match=both):  # built without validated(): refused where L is resolved
        MonitorConfig(fraction=0.16).resolve_steps(28, 28)
    with pytest.raises(ConfigError, match="config field 'fraction': expected a number in \\(0, 1\\]"):
        config_from_dict({"fraction": 1.5})
    with pytest.raises(ConfigError, match="cannot resolve the perturbation steps from fraction=0.5 on 28x28 "
                                          "images with region 40.*fix: choose a region"):
        config_from_dict({"fraction": 0.5, "region": 40}).resolve_steps(28, 28)
    # the flag of one replaces the other one given by the file; two flags are refused
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_flags(parser)
    example = str(relmon_root() / "deploy" / "relmon.example.yaml")
    assert load_config(example).steps == 8 and load_config(example).fraction is None
    cfg = config_from_args(parser.parse_args(["--config", example, "--fraction", "0.16"]))
    assert (cfg.steps, cfg.fraction) == (None, 0.16)
    (tmp_path / "f.yaml").write_text("fraction: 0.16\nregion: 4\n")
    cfg = config_from_args(parser.parse_args(["--config", str(tmp_path / "f.yaml"), "--steps", "5"]))
    assert (cfg.steps, cfg.fraction) == (5, None)
    with pytest.raises(ConfigError, match=both):
        config_from_args(parser.parse_args(["--steps", "8", "--fraction", "0.16"]))
    (tmp_path / "both.yaml").write_text("steps: 8\nfraction: 0.16\n")
    with pytest.raises(ConfigError, match=both):
        load_config(tmp_path / "both.yaml")


def relmon_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


def test_calibrate_and_monitor_resolve_the_same_steps_from_fraction(tmp_path, monkeypatch):
    import relmon.jobs.runner
    from relmon.data.streams import TensorStream
    from relmon.jobs import CalibrationMismatchError, MonitorJob, calibrate
    from relmon.models import FASHION_MNIST_PREPROCESSING

    seen_steps = []

    class Spy(relmon.jobs.runner.BatchScorer):  # the job's scorer (runner: plain, the default)
        def __init__(self, *args, steps, **kwargs):
            seen_steps.append(steps)
            super().__init__(*args, steps=steps, **kwargs)

    monkeypatch.setattr(relmon.jobs.runner, "BatchScorer", Spy)
    # region 7 on 28x28: 16 regions; fraction 0.25 -> L = 4
    settings = dict(region=7, steps=None, fraction=0.25, batch_size=64, n=16)
    cfg = MonitorConfig(**settings, calibration_n=16, calibration_shifts=("blur",), calibration_severities=(3,),
                        estimators=("average_confidence",)).validated()
    cal = calibrate(cfg, tmp_path / "cal")
    assert cal.meta["steps"] == 4 and cal.meta["fraction"] == 0.25 and cal.meta["input_size"] == [28, 28]
    summary = MonitorJob(MonitorConfig(**settings), calibration=cal, registry=CollectorRegistry()).run()
    assert summary.scored == 16 and seen_steps == [4, 4, 4]  # method table, calibration and monitor: the same L
    # the same L given as a count is the same calibration
    MonitorJob(MonitorConfig(region=7, steps=4, n=16), calibration=cal, registry=CollectorRegistry())
    # another L is refused, by count or by fraction, and the error names the fix
    fix = r"was made with \{.*'steps': 4\}, the job scores with \{.*'steps': (5|8)\}.*fix: use the calibration's " \
          r"settings or re-run 'relmon calibrate'"
    with pytest.raises(CalibrationMismatchError, match=fix):
        MonitorJob(MonitorConfig(region=7, steps=5), calibration=cal, registry=CollectorRegistry())
    with pytest.raises(CalibrationMismatchError, match=fix):
        MonitorJob(MonitorConfig(region=7, steps=None, fraction=0.5), calibration=cal, registry=CollectorRegistry())
    # a calibration made before input_size was recorded: the embedded model's 28x28, else a clear error
    import dataclasses

    from relmon.jobs import check_calibration

    older = dataclasses.replace(cal, meta={k: v for k, v in cal.meta.items() if k != "input_size"})
    MonitorJob(MonitorConfig(**settings), calibration=older, registry=CollectorRegistry())
    user = MonitorConfig(model="my_pkg.nets:build", **settings)
    with pytest.raises(CalibrationMismatchError, match=r"does not record its image size.*fix: set steps: 4 "
                                                       r"\(and fraction: null\), set image_size"):
        check_calibration(older, cal.meta["model"], cal.meta["model_version"], user)
    assert check_calibration(older, cal.meta["model"], cal.meta["model_version"],
                             dataclasses.replace(user, image_size=28)) is False
    # inputs of another size make the fraction another L (25 regions of 7 px on 32x32: 6): refused before scoring
    job = MonitorJob(MonitorConfig(**settings), calibration=cal, registry=CollectorRegistry(),
                     stream=TensorStream(torch_zeros(4, 1, 32, 32), preprocessing=FASHION_MNIST_PREPROCESSING))
    with pytest.raises(CalibrationMismatchError, match=r"fraction=0.25 gives L = 6 steps on the input's 32x32 images.*"
                                                       r"L = 4.*fix: set image_size to the calibration's size \[28, 28\]"):
        job.run(outputs=False)
    assert seen_steps == [4, 4, 4]


def torch_zeros(*shape):
    import torch

    return torch.zeros(*shape)


def test_a_given_listing_of_a_file_is_still_refused_as_not_a_folder(tmp_path):
    from relmon.data.streams import ImageFolderStream
    from relmon.jobs.only_new import find_files

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "one.png")
    folder = ImageFolderStream(tmp_path, listing=find_files(str(tmp_path)))
    assert folder.sample_ids == [str(tmp_path / "one.png")] and set(folder.file_info) == set(folder.sample_ids)
    with pytest.raises(NotADirectoryError, match="one.png' is a file; expected a folder"):
        ImageFolderStream(tmp_path / "one.png", listing=find_files(str(tmp_path / "one.png")))


def test_steps_null_without_fraction_is_checked_against_the_calibration_on_the_inputs_size(tmp_path):
    """'steps: null' with no fraction means the default fraction 0.16: L then depends on the image size,
    so inputs of another size than the calibration's must be refused like an explicit fraction."""
    from relmon.data.streams import TensorStream
    from relmon.jobs import CalibrationMismatchError, MonitorJob, calibrate
    from relmon.models import FASHION_MNIST_PREPROCESSING

    settings = dict(region=7, steps=None, fraction=None, batch_size=64, n=16)  # 16 regions: L = 3 on 28x28
    cfg = MonitorConfig(**settings, calibration_n=16, calibration_shifts=("blur",), calibration_severities=(3,),
                        estimators=("average_confidence",)).validated()
    cal = calibrate(cfg, tmp_path / "cal")
    assert cal.meta["steps"] == 3
    job = MonitorJob(MonitorConfig(**settings), calibration=cal, registry=CollectorRegistry(),
                     stream=TensorStream(torch_zeros(4, 1, 56, 56), preprocessing=FASHION_MNIST_PREPROCESSING))
    with pytest.raises(CalibrationMismatchError, match=r"fraction=0.16 gives L = 10 steps on the input's 56x56 "
                                                       r"images.*L = 3"):
        job.run(outputs=False)
