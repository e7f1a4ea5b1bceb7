"""ONNX copies of registered models: export, int8 quantisation, and the ONNX Runtime session that runs them.

A copy answers the same call as the PyTorch model it came from (float image batch in, logits out), so
``Predictor``, ``evaluate`` and the pages need not know which runtime they hold. ONNX Runtime's ``run`` is
thread-safe, so one session per model serves every user of the app.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

OPSET = 17
DYNAMO_OPSET = 18  # the first opset whose Resize can antialias
NAME_KEY = "skinapp.name"  # graph metadata: which model a file belongs to (recovery after a killed write)
#: How a session's threads wait, by ``SKINAPP_ONNX_SPINNING``. ``during`` (the default): they spin between the
#: operators of a run and stop as soon as it returns. Left spinning after a run (ONNX Runtime's own default), an
#: idle session's threads took the cores from the busy one when a teacher and students take turns on two cores,
#: and made the small models 2-3x slower; never spinning, a thread sleeps and is woken for each operator of a run,
#: which cost the default student 0.4 ms of its 1.3 ms forward pass. With the cores busy all the time (several
#: callers without pause) spinning can cost the PyTorch teacher up to a quarter of its speed: ``never`` is for such
#: a server (docs/experiments.md, "ONNX Runtime copies": "Spinning during a run only")
SPINNING = {"during": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"},
            "never": {"session.intra_op.allow_spinning": "0"}}
SPINNING_ENV = "SKINAPP_ONNX_SPINNING"


class OnnxRuntimeError(RuntimeError):
    """An ONNX graph that cannot be loaded or run (damaged file, missing onnxruntime)."""


def session_config() -> dict[str, str]:
    """The session entries for the spinning setting the environment asks for (``SPINNING``)."""
    choice = os.environ.get(SPINNING_ENV, "").strip().lower() or "during"
    if choice not in SPINNING:
        raise OnnxRuntimeError(f"{SPINNING_ENV}={choice!r} is not a setting; use one of: {', '.join(SPINNING)}")
    return SPINNING[choice]


def session_options(threads: int | None = None) -> "onnxruntime.SessionOptions":
    """The options every session of the app runs with (the profiling script adds its profiler to them): ``threads``
    intra-op threads (default: torch's), one inter-op thread, every graph optimisation, the spinning setting."""
    import onnxruntime as ort

    config = session_config()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    for key, value in config.items():
        opts.add_session_config_entry(key, value)
    return opts


class OnnxModel:
    """An ONNX Runtime session behind the call a PyTorch model offers."""

    def __init__(self, graph: bytes, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise OnnxRuntimeError(f"onnxruntime is not installed ({exc}); pip install onnxruntime") from None
        opts = session_options(threads)
        try:
            self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for a damaged graph
            raise OnnxRuntimeError(f"ONNX Runtime cannot load it ({type(exc).__name__})") from None
        self.input = self.session.get_inputs()[0].name
        self.threads = opts.intra_op_num_threads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input: x.detach().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def export_graph(model: nn.Module, input_size: int, name: str, opset: int = OPSET) -> tuple[bytes, dict]:
    """The model as an ONNX graph with a free batch size, named in its metadata, and how it was written.

    The TorchScript exporter first: it writes opset 17 from a plain module. An operator it has no ONNX form for
    (the fused teacher's antialiased resize, ``aten::_upsample_bilinear2d_aa``) goes through the dynamo exporter,
    which writes it as opset 18's ``Resize`` with ``antialias=1``."""
    model = model.eval()
    x = torch.zeros(1, 3, input_size, input_size)
    try:
        return rename_graph(_torchscript(model, x, opset), name), {"exporter": f"torch.onnx (TorchScript) "
                                                                   f"{torch.__version__}", "opset": opset}
    except torch.onnx.errors.UnsupportedOperatorError as exc:
        log.info("TorchScript exporter: %s; trying the dynamo exporter at opset %d", exc, DYNAMO_OPSET)
        graph = _dynamo(model, x)
        return rename_graph(graph, name), {"exporter": f"torch.onnx (dynamo) {torch.__version__}",
                                           "opset": DYNAMO_OPSET, "why": str(exc).splitlines()[0]}


def _torchscript(model: nn.Module, x: torch.Tensor, opset: int) -> bytes:
    buf = io.BytesIO()
    # the TorchScript exporter warns that a newer one exists; it is the one that writes opset 17 and a dynamic
    # batch from a plain module
    with warnings.catch_warnings(), _native_stdout_to_log():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset)
    return buf.getvalue()


@contextlib.contextmanager
def _native_stdout_to_log():
    """When it fails, the TorchScript exporter's C++ side prints the whole IR graph to the process's stdout (megabytes
    for the fused teacher, where ``export --json`` writes its JSON): caught at the file descriptor, logged at debug."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            printed = sink.read()
            if printed:
                log.debug("the TorchScript exporter printed %d bytes: %s...", len(printed), printed[:200])


def _dynamo(model: nn.Module, x: torch.Tensor) -> bytes:
    """torch.export + onnxscript; its progress lines and warnings go to the log, not the user's terminal."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    arg = next(iter(inspect.signature(model.forward).parameters))
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, (x.expand(2, -1, -1, -1).contiguous(),), dynamo=True,
                                        opset_version=DYNAMO_OPSET, input_names=["image"],
                                        output_names=["logits"], dynamic_shapes={arg: {0: batch}}, optimize=True)
        except Exception as exc:  # torch.export raises many untyped errors; one that names the failure
            raise torch.onnx.errors.OnnxExporterError(f"the dynamo exporter failed too: {exc}") from exc
    log.debug("dynamo exporter: %s", sink.getvalue().strip())
    return program.model_proto.SerializeToString()


def rename_graph(graph: bytes, name: str) -> bytes:
    """The graph with ``name`` in its metadata (how recovery tells our files from a user's)."""
    import onnx

    g = onnx.load_from_string(graph)
    onnx.helper.set_model_props(g, {NAME_KEY: name})
    return g.SerializeToString()


def graph_name(path: Path) -> str | None:
    """The model name a graph file carries, or None when it is not one of ours (or not readable)."""
    try:
        import onnx

        g = onnx.load(str(path), load_external_data=False)
    except Exception:  # not an ONNX file at all
        return None
    return next((p.value for p in g.metadata_props if p.key == NAME_KEY), None)


#: static int8, as ONNX Runtime recommends for CNNs on the CPU: QDQ format, int8 weights per output channel,
#: uint8 activations, MinMax ranges from calibration images; the first convolution and the classifier stay
#: float (measured on lite0-tiny-nokd's validation split: AUC 0.905 fp32, 0.858 all-int8, 0.893 with these two
#: kept; Percentile or Entropy ranges, int8 activations, per-tensor weights, dynamic quantisation, or also keeping
#: the adds, all depthwise convolutions or the pooling float did no better, here and again on lite0-tiny-kd).
#: Weights of the convolutions ONNX Runtime runs as a matrix product use 7 bits (-64..64, ``reduce_range``): on
#: x86 CPUs without VNNI it multiplies u8 x s8 with VPMADDUBSW, which adds two products in 16 bits and saturates
#: when both are large (2 x 255 x 127 > 32767), so a full 8-bit copy scores differently there than on a VNNI CPU
#: (lite0-tiny-kd's: validation AUC 0.9011 with VNNI, 0.8919 without); with 7 bits a pair is at most
#: 2 x 255 x 64 = 32640. Depthwise convolutions keep 8 bits: their kernels widen both operands to 16 bits before
#: multiplying, so nothing saturates, and 7 bits there cost lite0-tiny-kd 0.02 validation AUC. CPUs with and
#: without VNNI then compute the same numbers (docs/experiments.md, "int8 on CPUs without VNNI"). When the copy
#: still loses too much, export's sensitivity search keeps a few more convolutions float. Last, ``correct_bias``
#: moves each int8 convolution's int32 bias to the float graph's per-channel mean (the default student's copy:
#: mean probability change on validation 0.024 -> 0.010; docs/experiments.md, "Bias correction for the int8 copies")
WEIGHT_RANGE = (-64, 64)  # reduce_range: symmetric 7-bit weights, as ONNX Runtime writes them
INT8_SETTINGS = {"format": "QDQ",
                 "weights": "int8 per channel: 7 bits (-64..64, reduce_range), 8 bits in depthwise convolutions",
                 "activations": "uint8, per tensor", "calibration": "MinMax",
                 "kept_float": "first convolution, classifier, and the convolutions the sensitivity search keeps",
                 "bias_correction": "per output channel, convolution by convolution in graph order, on the "
                                    "calibration images"}


class Int8Quantizer:
    """A float graph prepared once (ONNX Runtime's pre-processing) and quantised to static int8 as often as asked,
    each time with its own set of convolutions kept float: a sensitivity search quantises one graph many times."""

    def __init__(self, graph: bytes):
        self._tmp = tempfile.TemporaryDirectory(prefix="skinapp-int8-")
        self._pre = _preprocessed(graph, Path(self._tmp.name))
        self._convs, self._classifier, depthwise = _graph_nodes(self._pre)
        self._eight_bit_depthwise = {w: [{"axis": 0, "reduce_range": False}] for w in depthwise}  # per channel

    def __enter__(self) -> "Int8Quantizer":
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()

    @property
    def candidates(self) -> list[str]:
        """The convolutions a sensitivity search may keep float: all but the first (always float)."""
        return self._convs[1:]

    def quantize(self, batches: Iterable[np.ndarray], name: str, keep_float: Sequence[str] = (),
                 bias_correction: bool = True) -> bytes:
        """``batches``: preprocessed calibration images (validation split only); ``keep_float``: convolutions
        (``candidates`` names) kept float besides the first one and the classifier; ``bias_correction``: see
        ``correct_bias`` (off only to measure what it does)."""
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)

        batches = list(batches)  # read twice: ranges, then bias correction

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(batches)

            def get_next(self):
                b = next(self.it, None)
                return None if b is None else {"image": b.astype(np.float32)}

        unknown = sorted(set(keep_float) - set(self._convs))
        if unknown:
            raise ValueError(f"no convolution named {', '.join(unknown)} in the graph; its convolutions: "
                             f"{', '.join(self._convs)}")
        out = Path(self._tmp.name) / "int8.onnx"
        quantize_static(str(self._pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, reduce_range=True, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=self._convs[:1] + self._classifier + list(keep_float),
                        extra_options={"TensorQuantOverrides": self._eight_bit_depthwise})
        made = out.read_bytes()
        return rename_graph(correct_bias(self._pre.read_bytes(), made, batches) if bias_correction else made, name)


def correct_bias(reference: bytes, graph: bytes, batches: Sequence[np.ndarray]) -> bytes:
    """Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.2): rounding weights and
    activations shifts each channel's mean output, and the shifts add up along the network. Each int8 convolution's
    int32 bias is moved by its channels' mean difference from the float graph's same convolution, in graph order,
    so each sees the ones before it already corrected (moving all at once over-corrects: lite0-tiny-128-kd's copy
    diverged). ``reference``: the float graph the int8 one was made from (same convolution names)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(graph)
    init = {t.name: t for t in m.graph.initializer}
    made = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    convs = [(n, made[n.input[2]]) for n in m.graph.node if n.op_type == "Conv" and len(n.input) > 2
             and n.input[2] in made and made[n.input[2]].input[0] in init]
    if not convs:
        return graph
    float_graph = onnx.load_from_string(reference)
    ref = {n.name: n.output[0] for n in float_graph.graph.node if n.op_type == "Conv"}
    wanted = [ref[n.name] for n, _ in convs]
    target = _channel_means(_as_written(float_graph, wanted), wanted, batches)
    for (node, dq), want in zip(convs, target):  # a fresh session each step: the biases are constants in it
        (got,) = _channel_means(_as_written(_prefix(m, node.output[0]), [node.output[0]]), [node.output[0]], batches)
        b = init[dq.input[0]]
        shift = np.round((want - got) / numpy_helper.to_array(init[dq.input[1]])).astype(np.int64)
        moved = (numpy_helper.to_array(b).astype(np.int64) + shift).clip(-2**31, 2**31 - 1)
        b.CopyFrom(numpy_helper.from_array(moved.astype(np.int32), b.name))
    return m.SerializeToString()


def _prefix(model, output: str):
    """The part of the graph that computes ``output`` (a correction step need not run the layers after it)."""
    import onnx

    return onnx.utils.Extractor(model).extract_model([i.name for i in model.graph.input], [output])


def _as_written(model, outputs: list[str]):
    """A session that also reports ``outputs``, with ONNX Runtime's graph optimisations off: an int8 graph then
    computes each convolution in float on dequantised inputs, so its output before requantisation can be read."""
    import onnx
    import onnxruntime as ort

    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None)
                              for o in outputs if o not in have)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _channel_means(session, outputs: list[str], batches: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-channel means of N x C x H x W ``outputs`` over every image and position."""
    sums, counts, image = [0.0] * len(outputs), [0] * len(outputs), session.get_inputs()[0].name
    for b in batches:
        got = session.run(outputs, {image: b.astype(np.float32)})
        sums = [s + a.astype(np.float64).sum(axis=(0, 2, 3)) for s, a in zip(sums, got)]
        counts = [c + a.size // a.shape[1] for c, a in zip(counts, got)]  # outputs differ in size (strides)
    return [s / c for s, c in zip(sums, counts)]


def quantize_int8(graph: bytes, batches: Iterable[np.ndarray], name: str, keep_float: Sequence[str] = ()) -> bytes:
    """Static int8 copy of a float graph (see ``Int8Quantizer.quantize``)."""
    with Int8Quantizer(graph) as q:
        return q.quantize(batches, name, keep_float)


def int8_candidates(graph: bytes) -> list[str]:
    """The convolutions a sensitivity search may keep float: all but the first (always float)."""
    with Int8Quantizer(graph) as q:
        return q.candidates


def _preprocessed(graph: bytes, tmp: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, pre = tmp / "fp32.onnx", tmp / "pre.onnx"
    src.write_bytes(graph)
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    return pre


def _graph_nodes(pre: Path) -> tuple[list[str], list[str], list[str]]:
    """(every convolution, the classifier) of a preprocessed graph by node name, and its depthwise convolutions'
    weights by tensor name."""
    import onnx

    graph = onnx.load(str(pre)).graph
    shapes = {t.name: t.dims for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    groups = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs}
    depthwise = [n.input[1] for n in convs if groups[n.name] > 1 and shapes.get(n.input[1], [0, 0])[1] == 1]
    return ([n.name for n in convs], [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")][-1:],
            depthwise)
