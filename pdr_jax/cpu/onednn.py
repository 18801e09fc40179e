"""Dense 2-D convolutions on XLA:CPU through oneDNN, called from the compiled program.

XLA:CPU (jaxlib 0.10) runs a 3x3 convolution at ~200 GFLOP/s on a 2-core AVX-512 CPU and its
gradients at 150-215; oneDNN, the library behind PyTorch's CPU convolutions, runs them at
~230 in float32 and, on CPUs with AVX512-BF16, at ~460 with bfloat16 operands and float32
results. Here each convolution of `pdr_jax.nn.layers` becomes an XLA FFI custom call whose
handler runs a oneDNN primitive on XLA's own buffers: no copies, and XLA allocates every
buffer (output, oneDNN scratchpad, reordered weights), so concurrent calls share nothing.
Gradients are oneDNN's backward-data and backward-weights primitives (`jax.custom_vjp`).

The handler is a ctypes callback (the GIL is held only to read the call frame; oneDNN runs
without it); oneDNN comes from the `onednn-cpu-gomp` wheel (Linux x86-64) and is loaded with
ctypes, so nothing is compiled at install time.

Which convolutions use it is decided by `pdr_jax.cpu.CpuOptions.conv` (``f32``, ``bf16`` or
``xla``; pdr_jax.cpu says how it is chosen). ``f32`` equals `lax.conv_general_dilated` up to
float rounding (tests/test_onednn.py, and the EDM fixtures in tests/test_precond.py). ``bf16``
rounds the operands to bfloat16 with float32 accumulation and results (relative error ~3e-3 per
convolution, as mixed-precision training on a GPU); the activations saved for the gradient are
bfloat16 too; twice as fast on CPUs with AVX512-BF16 (or AMX), on others the same numbers at
float32 speed (`native_bf16`). A bfloat16 network (config.model.dtype) gets bfloat16
convolutions whenever oneDNN runs.

Without oneDNN (not installed, not Linux x86-64) every mode is ``xla``. On GPU/TPU nothing here
runs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.metadata
import logging
import os
import threading

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

_LIBRARY_ENV = "PDR_ONEDNN_LIBRARY"

# oneDNN 3.x C API constants (include/oneapi/dnnl/dnnl_types.h, dnnl_common_types.h).
_DNNL_CPU = 1
_DNNL_F32, _DNNL_BF16 = 3, 2
_DNNL_FORMAT_ANY = 1
_DNNL_FORWARD_INFERENCE = 96
_DNNL_CONVOLUTION_DIRECT = 1
_DNNL_SCRATCHPAD_USER = 1
_DNNL_QUERY_IMPL_INFO_STR = 8
_DNNL_QUERY_SRC_MD, _DNNL_QUERY_DIFF_SRC_MD = 129, 130
_DNNL_QUERY_WEIGHTS_MD, _DNNL_QUERY_DIFF_WEIGHTS_MD = 131, 132
_DNNL_QUERY_DST_MD, _DNNL_QUERY_DIFF_DST_MD = 133, 134
_DNNL_QUERY_SCRATCHPAD_MD = 136
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS, _ARG_SCRATCHPAD = 1, 17, 33, 80
_ARG_DIFF_SRC, _ARG_DIFF_DST, _ARG_DIFF_WEIGHTS = 129, 145, 161
_DIMS = ctypes.c_int64 * 12
_P = ctypes.c_void_p


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _P)]


# XLA FFI C API structs (xla/ffi/api/c_api.h, API 0.x), only the fields read or written here.
class _ExtensionBase(ctypes.Structure):
    pass


_ExtensionBase._fields_ = [
    ("struct_size", ctypes.c_size_t),
    ("type", ctypes.c_int),
    ("next", ctypes.POINTER(_ExtensionBase)),
]


class _ApiVersion(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", _P),
        ("major", ctypes.c_int),
        ("minor", ctypes.c_int),
    ]


class _ErrorCreateArgs(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", _P),
        ("message", ctypes.c_char_p),
        ("errc", ctypes.c_int),
    ]


_ERROR_CREATE = ctypes.CFUNCTYPE(_P, ctypes.POINTER(_ErrorCreateArgs))


class _Api(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", _P),
        ("api_version", _ApiVersion),
        ("internal_api", _P),
        ("error_create", _ERROR_CREATE),
    ]


class _Metadata(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("api_version", _ApiVersion),
        ("traits", ctypes.c_uint32),
    ]


class _MetadataExtension(ctypes.Structure):
    _fields_ = [("base", _ExtensionBase), ("metadata", ctypes.POINTER(_Metadata))]


class _Buffers(ctypes.Structure):  # XLA_FFI_Args and XLA_FFI_Rets have the same layout
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", _P),
        ("size", ctypes.c_int64),
        ("types", _P),
        ("buffers", ctypes.POINTER(_P)),
    ]


class _Buffer(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", _P),
        ("dtype", ctypes.c_int),
        ("data", _P),
        ("rank", ctypes.c_int64),
        ("dims", ctypes.POINTER(ctypes.c_int64)),
    ]


# XLA_FFI_DataType (xla/ffi/api/c_api.h: XLA's PrimitiveType numbers) of the buffers used here.
_FFI_U8, _FFI_F32, _FFI_BF16 = 6, 11, 16
_FFI_NAMES = {_FFI_U8: "uint8", _FFI_F32: "float32", _FFI_BF16: "bfloat16"}


class BufferMismatchError(RuntimeError):
    """XLA handed the handler buffers other than its plan's (dtype, shape): refused, not run."""


class _CallFrame(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", ctypes.POINTER(_ExtensionBase)),
        ("api", ctypes.POINTER(_Api)),
        ("ctx", _P),
        ("stage", ctypes.c_int),
        ("args", _Buffers),
        ("rets", _Buffers),
    ]


_HANDLER = ctypes.CFUNCTYPE(_P, ctypes.POINTER(_CallFrame))
_METADATA_EXTENSION = 1
_XLA_ERROR_INTERNAL = 13


def _library_path() -> str | None:
    """libdnnl.so.3: $PDR_ONEDNN_LIBRARY, else the one the onednn-cpu-gomp wheel installed."""
    if os.environ.get(_LIBRARY_ENV):
        return os.environ[_LIBRARY_ENV]
    try:
        files = importlib.metadata.files("onednn-cpu-gomp") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "libdnnl.so.3":
            return str(file.locate())
    return None


class _Dnnl:
    """The loaded library, one CPU engine, and typed entry points."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)  # CDLL: the GIL is released during every call
        lib.dnnl_version.restype = ctypes.POINTER(ctypes.c_int * 3)
        self.version = tuple(lib.dnnl_version().contents)
        if self.version[0] != 3:  # the constants above are oneDNN 3.x's
            raise RuntimeError(f"oneDNN {self.version} at {path}: expected version 3.x")
        lib.dnnl_primitive_desc_query_md.restype = _P
        lib.dnnl_primitive_desc_query_md.argtypes = [_P, ctypes.c_int, ctypes.c_int]
        lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        lib.dnnl_memory_desc_get_size.argtypes = [_P]
        lib.dnnl_memory_desc_equal.argtypes = [_P, _P]
        lib.dnnl_memory_set_data_handle.argtypes = [_P, _P]
        lib.dnnl_primitive_execute.argtypes = [_P, _P, ctypes.c_int, _P]
        self.lib = lib
        self.engine = _P()
        self.check(
            lib.dnnl_engine_create(ctypes.byref(self.engine), _DNNL_CPU, 0), "dnnl_engine_create"
        )
        self._streams = {}

    @staticmethod
    def check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"oneDNN {what} failed with status {status}")

    def stream(self) -> _P:
        """One oneDNN stream per thread that runs handlers (XLA's worker threads).

        Keyed by thread id, not threading.local: a callback on a thread Python did not create
        gets a fresh thread state (and fresh thread-local data) on every call.
        """
        thread = threading.get_ident()
        stream = self._streams.get(thread)
        if stream is None:
            stream = _P()
            self.check(
                self.lib.dnnl_stream_create(ctypes.byref(stream), self.engine, 1),
                "dnnl_stream_create",
            )
            self._streams[thread] = stream
        return stream

    def memory_desc(self, dims, dtype: int, strides=None) -> _P:
        md = _P()
        if strides is None:
            status = self.lib.dnnl_memory_desc_create_with_tag(
                ctypes.byref(md), len(dims), _DIMS(*dims), dtype, _DNNL_FORMAT_ANY
            )
        else:
            status = self.lib.dnnl_memory_desc_create_with_strides(
                ctypes.byref(md), len(dims), _DIMS(*dims), dtype, _DIMS(*strides)
            )
        self.check(status, "dnnl_memory_desc_create")
        return md

    def query_md(self, pd: _P, what: int) -> _P:
        return _P(self.lib.dnnl_primitive_desc_query_md(pd, what, 0))

    def memory(self, md: _P) -> _P:
        mem = _P()
        self.check(
            self.lib.dnnl_memory_create(ctypes.byref(mem), md, self.engine, None),
            "dnnl_memory_create",
        )
        return mem

    def primitive(self, pd: _P) -> _P:
        prim = _P()
        self.check(self.lib.dnnl_primitive_create(ctypes.byref(prim), pd), "dnnl_primitive_create")
        return prim

    def impl_name(self, pd: _P) -> str:
        name = ctypes.c_char_p()
        self.lib.dnnl_primitive_desc_query(pd, _DNNL_QUERY_IMPL_INFO_STR, 0, ctypes.byref(name))
        return (name.value or b"?").decode()


@functools.cache
def _dnnl() -> _Dnnl | None:
    path = _library_path()
    if path is None:
        return None
    try:
        return _Dnnl(path)
    except (OSError, RuntimeError, AttributeError) as err:
        log.warning("oneDNN at %s could not be loaded (%s); XLA's convolutions are used", path, err)
        return None


def available() -> bool:
    """Whether oneDNN loaded (installed with the onednn-cpu-gomp wheel, or $PDR_ONEDNN_LIBRARY)."""
    return _dnnl() is not None


@dataclasses.dataclass(frozen=True)
class _Key:
    kind: str  # "fwd", "bwd_data", "bwd_weights"
    batch: int
    height: int
    width: int
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    padding: int
    bf16: bool  # operands (x, w, dy) in bfloat16
    bf16_out: bool = False  # y (fwd) and dx (bwd_data) in bfloat16, else float32

    def target_name(self) -> str:
        """The FFI target: a function of the whole key, since compiled programs (and JAX's
        persistent compilation cache) refer to the handler by this name alone."""
        return (
            f"pdr_onednn_conv_{self.kind}_b{self.batch}_{self.height}x{self.width}_{self.in_channels}to"
            f"{self.out_channels}_k{self.kernel[0]}x{self.kernel[1]}_p{self.padding}"
            f"_{'bf16' if self.bf16 else 'f32'}_{'bf16' if self.bf16_out else 'f32'}"
        )

    @property
    def out_hw(self) -> tuple[int, int]:
        return (
            self.height + 2 * self.padding - self.kernel[0] + 1,
            self.width + 2 * self.padding - self.kernel[1] + 1,
        )


class _Plan:
    """One oneDNN primitive for one convolution signature, and its FFI target.

    Operands are XLA's row-major buffers: activations NHWC (oneDNN dims N, C, H, W with NHWC
    strides), kernels HWIO (dims O, I, KH, KW with HWIO strides). oneDNN chooses the weights'
    layout; a reorder primitive converts to or from the HWIO buffer through an XLA-allocated
    temporary, and oneDNN's scratchpad is another XLA-allocated temporary.
    """

    def __init__(self, dnnl: _Dnnl, key: _Key, *, register: bool = True):
        self.key = key
        lib, check = dnnl.lib, dnnl.check
        op_dtype = _DNNL_BF16 if key.bf16 else _DNNL_F32
        out_dtype = _DNNL_BF16 if key.bf16_out else _DNNL_F32
        b, h, w, ci, co = key.batch, key.height, key.width, key.in_channels, key.out_channels
        (kh, kw), (oh, ow) = key.kernel, key.out_hw

        def nhwc(c, hh, ww, dtype):
            return dnnl.memory_desc((b, c, hh, ww), dtype, (hh * ww * c, 1, ww * c, c))

        weights_dtype = _DNNL_F32 if key.kind == "bwd_weights" else op_dtype
        hwio = dnnl.memory_desc((co, ci, kh, kw), weights_dtype, (1, co, kw * ci * co, ci * co))
        weights_any = dnnl.memory_desc((co, ci, kh, kw), weights_dtype)
        attr = _P()
        check(lib.dnnl_primitive_attr_create(ctypes.byref(attr)), "dnnl_primitive_attr_create")
        check(
            lib.dnnl_primitive_attr_set_scratchpad_mode(attr, _DNNL_SCRATCHPAD_USER),
            "scratchpad mode",
        )
        geometry = (
            _DIMS(1, 1),
            _DIMS(0, 0),
            _DIMS(key.padding, key.padding),
            _DIMS(key.padding, key.padding),
        )
        x_src = nhwc(ci, h, w, op_dtype)
        y_dst = nhwc(co, oh, ow, out_dtype)
        pd = _P()
        if key.kind == "fwd":
            check(
                lib.dnnl_convolution_forward_primitive_desc_create(
                    ctypes.byref(pd),
                    dnnl.engine,
                    _DNNL_FORWARD_INFERENCE,
                    _DNNL_CONVOLUTION_DIRECT,
                    x_src,
                    weights_any,
                    None,
                    y_dst,
                    *geometry,
                    attr,
                ),
                f"convolution forward {key}",
            )
            weights_query, weights_arg = _DNNL_QUERY_WEIGHTS_MD, _ARG_WEIGHTS
            self.args = (_ARG_SRC, _ARG_WEIGHTS)  # XLA operands in order
        elif key.kind == "bwd_data":
            dy = nhwc(co, oh, ow, op_dtype)
            dx = nhwc(ci, h, w, out_dtype)
            hint = _forward_hint(dnnl, key, x_src, weights_any, geometry)
            check(
                lib.dnnl_convolution_backward_data_primitive_desc_create(
                    ctypes.byref(pd),
                    dnnl.engine,
                    _DNNL_CONVOLUTION_DIRECT,
                    dx,
                    weights_any,
                    dy,
                    *geometry,
                    hint,
                    attr,
                ),
                f"convolution backward data {key}",
            )
            weights_query, weights_arg = _DNNL_QUERY_WEIGHTS_MD, _ARG_WEIGHTS
            self.args = (_ARG_DIFF_DST, _ARG_WEIGHTS)
        else:
            dy = nhwc(co, oh, ow, op_dtype)
            hint = _forward_hint(
                dnnl, key, x_src, dnnl.memory_desc((co, ci, kh, kw), op_dtype), geometry
            )
            check(
                lib.dnnl_convolution_backward_weights_primitive_desc_create(
                    ctypes.byref(pd),
                    dnnl.engine,
                    _DNNL_CONVOLUTION_DIRECT,
                    x_src,
                    weights_any,
                    None,
                    dy,
                    *geometry,
                    hint,
                    attr,
                ),
                f"convolution backward weights {key}",
            )
            weights_query, weights_arg = _DNNL_QUERY_DIFF_WEIGHTS_MD, _ARG_DIFF_WEIGHTS
            self.args = (_ARG_SRC, _ARG_DIFF_DST)
        self.impl = dnnl.impl_name(pd)
        self.primitive = dnnl.primitive(pd)
        self.descs = {
            _ARG_SRC: dnnl.query_md(pd, _DNNL_QUERY_SRC_MD),
            _ARG_DST: dnnl.query_md(pd, _DNNL_QUERY_DST_MD),
            _ARG_DIFF_SRC: dnnl.query_md(pd, _DNNL_QUERY_DIFF_SRC_MD),
            _ARG_DIFF_DST: dnnl.query_md(pd, _DNNL_QUERY_DIFF_DST_MD),
        }
        chosen = dnnl.query_md(pd, weights_query)
        self.descs[weights_arg] = chosen
        scratch_md = dnnl.query_md(pd, _DNNL_QUERY_SCRATCHPAD_MD)
        self.scratch_bytes = max(int(lib.dnnl_memory_desc_get_size(scratch_md)), 1)
        self.scratch_md = scratch_md
        self.weights_arg = weights_arg
        self.reorder = None
        self.reorder_bytes = 1
        if not lib.dnnl_memory_desc_equal(chosen, hwio):
            src, dst = (chosen, hwio) if key.kind == "bwd_weights" else (hwio, chosen)
            rpd = _P()
            check(
                lib.dnnl_reorder_primitive_desc_create(
                    ctypes.byref(rpd), src, dnnl.engine, dst, dnnl.engine, None
                ),
                "reorder",
            )
            self.reorder = dnnl.primitive(rpd)
            self.reorder_bytes = int(lib.dnnl_memory_desc_get_size(chosen))
        self.hwio = hwio
        self.dnnl = dnnl
        self._memories_by_thread = {}
        self.target = key.target_name()
        if not register:
            return
        self._callback = _HANDLER(self._handle)  # kept alive as long as the plan
        jax.ffi.register_ffi_target(self.target, jax.ffi.pycapsule(self._callback), platform="cpu")

    def _memories(self):
        """Per thread: oneDNN memory objects whose data pointers are set on every call."""
        thread = threading.get_ident()
        mems = self._memories_by_thread.get(thread)
        if mems is None:
            mems = {arg: self.dnnl.memory(md) for arg, md in self.descs.items() if md.value}
            mems["hwio"] = self.dnnl.memory(self.hwio)
            mems[_ARG_SCRATCHPAD] = self.dnnl.memory(self.scratch_md)
            self._memories_by_thread[thread] = mems
        return mems

    def _handle(self, frame_ptr):
        frame = frame_ptr.contents
        try:
            extension = frame.extension_start
            if extension and extension.contents.type == _METADATA_EXTENSION:
                metadata = ctypes.cast(
                    extension, ctypes.POINTER(_MetadataExtension)
                ).contents.metadata.contents
                version = frame.api.contents.api_version
                if version.major != 0:  # the structs above are API 0.x's
                    raise RuntimeError(
                        f"XLA FFI API {version.major}.{version.minor} is not the 0.x this module "
                        "reads; set PDR_CPU_CONV=xla"
                    )
                metadata.api_version.major, metadata.api_version.minor = 0, version.minor
                metadata.traits = 0
                return None
            self._execute(frame)
            return None
        except BaseException as err:  # noqa: BLE001 - must become an XLA error, never escape into C
            message = f"pdr_jax oneDNN convolution {self.key}: {type(err).__name__}: {err}".encode()
            args = _ErrorCreateArgs(
                ctypes.sizeof(_ErrorCreateArgs), None, message, _XLA_ERROR_INTERNAL
            )
            return frame.api.contents.error_create(ctypes.byref(args))

    def buffer_specs(self) -> tuple[list, list]:
        """(operands, results) as [(XLA FFI dtype, shape)] in call order: what `__call__` passes."""
        k = self.key
        op = _FFI_BF16 if k.bf16 else _FFI_F32
        out = _FFI_BF16 if k.bf16_out else _FFI_F32
        x, w = (
            (k.batch, k.height, k.width, k.in_channels),
            (*k.kernel, k.in_channels, k.out_channels),
        )
        dy = (k.batch, *k.out_hw, k.out_channels)
        operands, result = {
            "fwd": ([(op, x), (op, w)], (out, dy)),
            "bwd_data": ([(op, dy), (op, w)], (out, x)),
            "bwd_weights": ([(op, x), (op, dy)], (_FFI_F32, w)),
        }[k.kind]
        temporaries = [(_FFI_U8, (self.scratch_bytes,)), (_FFI_U8, (self.reorder_bytes,))]
        return operands, [result, *temporaries]

    @staticmethod
    def _check_buffers(buffers, specs, what: str) -> None:
        if buffers.size != len(specs):
            raise BufferMismatchError(f"{buffers.size} {what}s, the plan has {len(specs)}")
        for i, (dtype, shape) in enumerate(specs):
            buffer = ctypes.cast(buffers.buffers[i], ctypes.POINTER(_Buffer)).contents
            got = tuple(buffer.dims[j] for j in range(buffer.rank))
            if buffer.dtype != dtype or got != shape:
                name = _FFI_NAMES.get(buffer.dtype, f"dtype #{buffer.dtype}")
                raise BufferMismatchError(
                    f"{what} {i} is {name}{list(got)}, the plan expects "
                    f"{_FFI_NAMES[dtype]}{list(shape)}"
                )

    def _execute(self, frame):
        lib, check = self.dnnl.lib, self.dnnl.check
        operands, results = self.buffer_specs()
        self._check_buffers(frame.args, operands, "operand")
        self._check_buffers(frame.rets, results, "result")
        data = lambda buffers, i: (
            ctypes.cast(buffers.buffers[i], ctypes.POINTER(_Buffer)).contents.data
        )
        mems = self._memories()
        out_arg = {"fwd": _ARG_DST, "bwd_data": _ARG_DIFF_SRC, "bwd_weights": self.weights_arg}[
            self.key.kind
        ]
        result, scratch, weights_tmp = (data(frame.rets, i) for i in range(3))
        bound = {out_arg: result}
        for i, arg in enumerate(self.args):
            bound[arg] = data(frame.args, i)
        stream = self.dnnl.stream()
        if self.reorder is not None:
            plain = bound[self.weights_arg]
            bound[self.weights_arg] = weights_tmp
            lib.dnnl_memory_set_data_handle(mems["hwio"], plain)
            lib.dnnl_memory_set_data_handle(mems[self.weights_arg], weights_tmp)
            if self.key.kind != "bwd_weights":  # HWIO -> oneDNN's layout before the convolution
                self._run(
                    self.reorder,
                    stream,
                    ((_ARG_SRC, mems["hwio"]), (_ARG_DST, mems[self.weights_arg])),
                    "reorder",
                )
        exec_args = [(_ARG_SCRATCHPAD, mems[_ARG_SCRATCHPAD])]
        lib.dnnl_memory_set_data_handle(mems[_ARG_SCRATCHPAD], scratch)
        for arg, pointer in bound.items():
            lib.dnnl_memory_set_data_handle(mems[arg], pointer)
            exec_args.append((arg, mems[arg]))
        self._run(self.primitive, stream, exec_args, "convolution")
        if self.reorder is not None and self.key.kind == "bwd_weights":  # oneDNN's layout -> HWIO
            self._run(
                self.reorder,
                stream,
                ((_ARG_SRC, mems[self.weights_arg]), (_ARG_DST, mems["hwio"])),
                "reorder",
            )
        check(lib.dnnl_stream_wait(stream), "dnnl_stream_wait")

    def _run(self, primitive, stream, args, what: str) -> None:
        array = (_ExecArg * len(args))(*(_ExecArg(a, m) for a, m in args))
        self.dnnl.check(
            self.dnnl.lib.dnnl_primitive_execute(primitive, stream, len(args), array), what
        )

    def __call__(self, *operands):
        k = self.key
        (oh, ow) = k.out_hw
        out_dtype = jnp.bfloat16 if k.bf16_out else jnp.float32
        result = {
            "fwd": (k.batch, oh, ow, k.out_channels),
            "bwd_data": (k.batch, k.height, k.width, k.in_channels),
            "bwd_weights": (*k.kernel, k.in_channels, k.out_channels),
        }[k.kind]
        shapes = (
            jax.ShapeDtypeStruct(result, out_dtype),
            jax.ShapeDtypeStruct((self.scratch_bytes,), jnp.uint8),
            jax.ShapeDtypeStruct((self.reorder_bytes,), jnp.uint8),
        )
        # Under vmap (the tiled restore maps over images) the calls run one after another.
        return jax.ffi.ffi_call(self.target, shapes, vmap_method="sequential")(*operands)[0]


def _forward_hint(dnnl: _Dnnl, key: _Key, src, weights, geometry) -> _P:
    """The forward primitive descriptor oneDNN asks for when creating a backward one."""
    pd = _P()
    dnnl.check(
        dnnl.lib.dnnl_convolution_forward_primitive_desc_create(
            ctypes.byref(pd),
            dnnl.engine,
            64,
            _DNNL_CONVOLUTION_DIRECT,
            src,
            weights,
            None,
            dnnl.memory_desc((key.batch, key.out_channels, *key.out_hw), _DNNL_F32),
            *geometry,
            None,
        ),
        f"forward hint {key}",
    )
    return pd


@functools.cache
def _plan(key: _Key) -> _Plan:
    plan = _Plan(_dnnl(), key)
    log.debug("oneDNN %s: %s", key, plan.impl)
    return plan


def _key(kind: str, x, w, padding: int, out_dtype) -> _Key:
    """The plan for operands x, w as oneDNN reads them (float32 or bfloat16) and a result dtype."""
    b, h, ww, ci = x.shape
    kh, kw, _, co = w.shape
    bf16 = x.dtype == jnp.bfloat16
    bf16_out = bf16 and kind != "bwd_weights" and out_dtype == jnp.bfloat16
    return _Key(kind, b, h, ww, ci, co, (kh, kw), padding, bf16, bf16_out)


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU has oneDNN bfloat16 convolutions (AVX-512 at least; not on AVX2 only).

    Where not, bfloat16 operands are widened to float32 before the call: the same numbers
    (products of bfloat16 values are exact in float32), no speed-up.
    """
    dnnl = _dnnl()
    if dnnl is None:
        return False
    try:
        _Plan(dnnl, _Key("fwd", 1, 4, 4, 16, 16, (3, 3), 1, True), register=False)
    except RuntimeError:
        return False
    return True


def conv2d(x, w, padding: int, *, bf16: bool = False):
    """Stride-1 convolution of x [B, H, W, Ci] with w [KH, KW, Ci, Co], zero padding `padding`.

    The same as `lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=
    ("NHWC", "HWIO", "NHWC"))` in float32 arithmetic. The operands are rounded to bfloat16 if
    bf16=True or x is bfloat16 (a bfloat16 network), with float32 accumulation; the result has
    x's dtype. Differentiable (oneDNN's backward primitives; dx in x's dtype, dw in float32 then
    w's dtype). CPU backend only (pdr_jax.cpu.current().conv says when).
    """
    return _conv2d(x, w, padding, bf16 or x.dtype == jnp.bfloat16)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x, w, padding: int, bf16: bool):
    y, _ = _conv2d_fwd(x, w, padding, bf16)
    return y


def _operand(v, bf16: bool):
    """v as oneDNN reads it: float32, or rounded to bfloat16 (kept so where that is native)."""
    if not bf16:
        return v.astype(jnp.float32)
    v = v.astype(jnp.bfloat16)
    return v if native_bf16() else v.astype(jnp.float32)


def _conv2d_fwd(x, w, padding, bf16):
    xo, wo = _operand(x, bf16), _operand(w, bf16)
    y = _plan(_key("fwd", xo, wo, padding, x.dtype))(xo, wo).astype(x.dtype)
    # Residuals: the operands as oneDNN reads them, and zero-size carriers of the primal dtypes.
    return y, (xo, wo, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _conv2d_bwd(padding, bf16, residuals, dy):
    x, w, x_dtype, w_dtype = residuals
    dy = _operand(dy, bf16)
    dx = _plan(_key("bwd_data", x, w, padding, x_dtype.dtype))(dy, w)
    dw = _plan(_key("bwd_weights", x, w, padding, jnp.float32))(x, dy)
    return dx.astype(x_dtype.dtype), dw.astype(w_dtype.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
