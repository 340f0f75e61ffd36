"""A small fake `tensorrt` module and CUDA binding: the engine builder and TensorRTBackend run on a CPU without
TensorRT (the fake engine runs the source ONNX in onnxruntime)."""

from __future__ import annotations

import time
import types

import numpy as np
import onnx

from export import cuda_binding


class FakeCuda:
    """Stands in for export.cuda_binding.TorchCudaBinding: a fixed GPU, buffers that record what is copied in."""

    name = "fake"

    def __init__(self):
        self.copied: list[np.ndarray] = []

    def device_info(self):
        return cuda_binding.DeviceInfo("Fake Orin", "8.7")

    def alloc(self, nbytes):
        cuda = self

        class Buf:
            ptr = 4096

            def copy_from(self, arr):
                cuda.copied.append(np.array(arr))

        return Buf()


def fake_tensorrt(version: str = "10.3.0") -> types.ModuleType:
    """Just enough of TensorRT's Python API for build_serialized_engine's control flow."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.builds = []
    trt.engines = {}  # serialized engine -> (input name, profile min/opt/max shapes, {output name: shape})
    trt.deserialized = []

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    class Logger(ILogger):
        WARNING = 2

        def __init__(self, severity=2):
            pass

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self):
            self.inputs, self.outputs = [], []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse(self, data):
            model = onnx.load_from_string(data)
            inp = model.graph.input[0]
            dims = [d.dim_value if d.dim_value else -1 for d in inp.type.tensor_type.shape.dim]
            self.network.inputs.append(Tensor(inp.name, dims))
            for out in model.graph.output:
                shape = [d.dim_value or -1 for d in out.type.tensor_type.shape.dim]
                self.network.outputs.append(Tensor(out.name, shape))
            return True

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shapes = (name, tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+"

    class Config:
        def __init__(self):
            self.flags, self.profiles = {"TF32"}, []  # TensorRT enables TF32 by default
            self.int8_calibrator = None
            self.calibration_profile = None
            self.progress_monitor = None
            self.timing = None

        def set_memory_pool_limit(self, pool, size):
            self.workspace = size

        def set_flag(self, f):
            self.flags.add(f)

        def clear_flag(self, f):
            self.flags.discard(f)

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def set_calibration_profile(self, p):
            self.calibration_profile = p

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, tc, ignore_mismatch):
            self.timing = tc
            return True

        def get_timing_cache(self):
            return self.timing

    class Builder:
        platform_has_fast_fp16 = True
        platform_has_fast_int8 = True

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls = {"batches": 0, "calib_from_cache": False}
            if "INT8" in config.flags:
                cal = config.int8_calibrator
                table = cal.read_calibration_cache()
                if table:
                    calls["calib_from_cache"] = True
                else:
                    while cal.get_batch([network.inputs[0].name]) is not None:
                        calls["batches"] += 1
                    cal.write_calibration_cache(b"calibration-table")
            if config.progress_monitor is not None:
                config.progress_monitor.phase_start("Building engine", None, 2)
                config.progress_monitor.step_complete("Building engine", 0)
                time.sleep(0.05)
                config.progress_monitor.phase_finish("Building engine")
            time.sleep(0.05)
            trt.builds.append(dict(config=config, network=network, **calls))
            data = f"ENGINE {sorted(config.flags)} {config.profiles[0].shapes}".encode()
            trt.engines[data] = (*config.profiles[0].shapes, {o.name: tuple(o.shape) for o in network.outputs})
            return data

    class Engine:
        """A deserialized engine, as far as TensorRTBackend's named-tensor I/O setup looks at it."""

        def __init__(self, in_name, lo, opt, hi, outputs):
            self.names, self.profile = [in_name, *outputs], (lo, opt, hi)
            self.shapes = {in_name: (-1, *hi[1:]), **outputs}
            self.num_io_tensors = len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == self.names[0] else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return self.shapes[name]

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def get_tensor_profile_shape(self, name, profile):
            return self.profile

        def create_execution_context(self):
            return types.SimpleNamespace()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            trt.deserialized.append(bytes(data))
            known = trt.engines.get(bytes(data))
            return Engine(*known) if known else None

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    class IProgressMonitor:
        def __init__(self):
            pass

    trt.ILogger, trt.Logger, trt.OnnxParser, trt.Builder = ILogger, Logger, OnnxParser, Builder
    trt.IInt8EntropyCalibrator2, trt.IProgressMonitor = IInt8EntropyCalibrator2, IProgressMonitor
    trt.Runtime, trt.init_libnvinfer_plugins = Runtime, lambda logger, namespace: True
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF")
    trt.nptype = {"FLOAT": np.float32, "HALF": np.float16}.__getitem__
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    return trt
