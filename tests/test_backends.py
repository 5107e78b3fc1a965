"""The per-op backend registry: choice, errors, logging, and that a new backend is one registration."""
import logging

import pytest
import torch

from map_core import backends
from map_core.errors import ConfigError
from map_core.ssm import selective_scan, selective_scan_ref


def test_auto_on_cpu_is_the_reference_even_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for op in ("scan", "conv"):
        assert backends.resolve(op, torch.device("cpu")).name == "torch"


def test_unknown_and_missing_backends_are_errors_naming_the_key():
    with pytest.raises(ValueError, match=r"scan backend 'warp_drive' in runtime.backends.scan; expected one of auto, triton, torch"):
        backends.configure({"scan": "warp_drive"})
    with pytest.raises(ValueError, match="unknown op 'sort'"):
        backends.configure({"sort": "auto"})
    backends.register("scan", "not_installed", lambda *a: None, package="surely_not_a_module_xyz")
    try:
        with pytest.raises(ImportError, match="surely_not_a_module_xyz"):
            backends.configure({"scan": "not_installed"})
    finally:
        backends._REGISTRY["scan"].pop("not_installed")
    assert backends.choices()["scan"] == "auto"  # nothing was half-applied


def test_triton_on_cpu_without_the_interpreter_says_how(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    backends._RESOLVED.clear()
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        backends.resolve("scan", torch.device("cpu"), "triton")
    backends._RESOLVED.clear()


def test_a_new_backend_is_one_registration_and_using_restores(caplog):
    calls = []

    def doubled(*args):
        calls.append(1)
        return 2 * selective_scan_ref(*args[:5])

    backends.register("scan", "doubled", doubled, devices=None)
    try:
        x = [torch.randn(1, 2, 5), torch.rand(1, 2, 5), -torch.rand(2, 3), torch.randn(1, 3, 5), torch.randn(1, 3, 5)]
        with caplog.at_level(logging.INFO, logger="map_core.backends"), backends.using(scan="doubled"):
            out = selective_scan(*x)
            selective_scan(*x)
        torch.testing.assert_close(out, 2 * selective_scan_ref(*x))
        assert len(calls) == 2
        assert [r.getMessage() for r in caplog.records] == ["scan backend on cpu: doubled"]  # logged once
        assert backends.choices()["scan"] == "auto"
        torch.testing.assert_close(selective_scan(*x), selective_scan_ref(*x))
    finally:
        backends._REGISTRY["scan"].pop("doubled")
        backends._RESOLVED.clear()


def test_an_op_exists_once_registered_and_becomes_a_config_key(tmp_path):
    from map_core.engine.schema import load_experiment
    import tests.engine_toy  # noqa: F401  (toy_classify, toy_mlp)

    config = tmp_path / "c.yaml"
    config.write_text("task: {NAME: toy_classify}\nmodel: {NAME: toy_mlp}\nruntime: {backends: {toy_sort: plain}}\n")
    with pytest.raises(ConfigError, match="unknown key .runtime.backends.toy_sort."):
        load_experiment(config)
    backends.register("toy_sort", "plain", sorted, devices=None)
    try:
        assert "toy_sort" in backends.ops() and backends.names("toy_sort") == ("auto", "plain")
        cfg = load_experiment(config)
        assert cfg.runtime.backends["toy_sort"] == "plain" and cfg.runtime.backends["scan"] == "auto"
        assert cfg.to_dict()["runtime"]["backends"]["toy_sort"] == "plain"  # config.yaml lists every op
    finally:
        backends._REGISTRY.pop("toy_sort")


def test_a_backend_that_cannot_run_on_the_runs_device_is_refused_at_start(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"runtime.backends.scan: backend 'triton' runs on cuda tensors and this run "
                                         r"is on cpu; use 'auto' or 'torch' \(or set TRITON_INTERPRET=1"):
        backends.configure({"scan": "triton"}, device=torch.device("cpu"))
    assert backends.choices()["scan"] == "auto"
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter runs it on CPU tensors
    with backends.using(scan="auto"):
        backends.configure({"scan": "triton"}, device=torch.device("cpu"))
