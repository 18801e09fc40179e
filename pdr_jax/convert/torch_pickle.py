"""A torch-free, execution-free reader for PyTorch and EDM files (edm-reference.md, section 7).

Three layouts are read, told apart by their first bytes:

* torch zip archives (``torch.save`` since 1.6, EDM's ``training-state-*.pt``):
  ``<archive>/data.pkl`` plus one raw little-endian entry ``<archive>/data/<key>`` per storage;
* legacy ``torch.save`` streams: four pickles (magic number, protocol 1001, sys info, the
  object with storages as persistent ids), the list of storage keys, then per key an int64
  element count and the raw bytes;
* plain pickles (EDM's ``network-snapshot-*.pkl``), whose tensors carry their storage as
  a legacy stream inside ``torch.storage._load_from_bytes(b"...")``.

Nothing in a file is executed. `find_class` resolves only the globals in `_ALLOWED`, each to a
function or marker of this module that builds plain data; any other global raises
UnsafePickleError naming it. Tensors come back as numpy arrays; torch modules come back as
`PickledModule` (class name + the module's ``__dict__``). EDM's embedded module source
(``module_src``) is kept as text and never compiled.
"""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import io
import math
import os
import pickle
import struct
import types
import zipfile
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# The most bytes one load may declare: zip entries (data.pkl, storages) as decompressed, legacy
# storages, and all tensors as materialised (stride-0 views at their full size), counted
# together before the first is made. EDM's largest snapshot (ImageNet-64 ADM, EMA only) is
# ~1.2 GB, 2.4 GB with its tensors copied out: the default is a little above that (a training
# state with Adam's moments, ~4.7 GB, needs --max-bytes).
DEFAULT_MAX_BYTES = 3 << 30


class TorchFileError(ValueError):
    """A file is not a readable torch/EDM file: truncated, corrupt or of an unknown layout."""


class _Budget:
    """Bytes a load may still allocate; every allocation is checked against it first."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.used = int(max_bytes), 0

    def take(self, nbytes: int, what: str) -> None:
        if nbytes < 0 or self.used + nbytes > self.max_bytes:
            raise TorchFileError(
                f"{what} needs {nbytes:,} bytes, beyond the budget of {self.max_bytes:,} bytes for "
                f"one file ({self.used:,} already taken): refused before allocating (a larger "
                "legitimate file: raise max_bytes, tools/convert_edm.py --max-bytes)"
            )
        self.used += nbytes


_ACTIVE_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("torch_pickle_budget")


class UnsafePickleError(TorchFileError, pickle.UnpicklingError):
    """A pickle refers to a global outside the allow-list; nothing from it was run."""


# ---------------------------------------------------------------------------------------------
# Data types of the reader's output.


class PickledModule:
    """A torch Module read as data: `class_name` and its ``__dict__`` (`state`).

    EDM's persistent classes (EDMPrecond, SongUNet, UNetBlock, EDMLoss, ...) arrive with the
    embedded `module_src` text; plain torch containers (ModuleDict, ...) arrive without it.
    `state` holds ``_parameters``, ``_buffers`` (numpy arrays or None), ``_modules`` (children)
    and the class's own attributes, e.g. ``_init_kwargs``.
    """

    class_name: str = ""
    module_src: str | None = None
    state: dict | None = None

    def __init__(self, class_name: str, state: dict, module_src: str | None = None):
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __setstate__(self, state):  # BUILD of a plain torch container
        if not isinstance(state, dict):
            raise TorchFileError(
                f"{self.class_name}: module state is {type(state).__name__}, expected a dict"
            )
        self.state = state

    def __repr__(self):
        return f"PickledModule({self.class_name!r})"


def _container_class(name: str) -> type:
    # NEWOBJ needs a class; a subclass per torch container keeps the container's name.
    return type(name, (PickledModule,), {"class_name": name})


_CONTAINERS = {name: _container_class(name) for name in ("ModuleDict", "ModuleList", "Sequential")}


class _Sealed:
    """Mixin: a pickle's BUILD opcode must not rewrite this reader's own objects."""

    __slots__ = ()

    def __setstate__(self, state):
        raise UnsafePickleError(
            f"refusing to modify {type(self).__name__} by BUILD: a torch/EDM file never does that"
        )


class _Callable(_Sealed):
    """An allow-listed function as the pickle sees it: callable, but sealed against BUILD."""

    __slots__ = ("func", "name")

    def __init__(self, func, name: str):
        self.func, self.name = func, name

    def __call__(self, *args):
        return self.func(*args)

    def __repr__(self):
        return self.name


class EasyDict(dict):
    """dnnlib.util.EasyDict read as a plain dict."""

    __setstate__ = _Sealed.__setstate__


@dataclasses.dataclass(frozen=True)
class _StorageType(_Sealed):
    """Marker for a ``torch.<Type>Storage`` global: only its element dtype matters."""

    name: str
    dtype: str  # numpy name


@dataclasses.dataclass(frozen=True)
class _TorchDtype(_Sealed):
    """Marker for a ``torch.<dtype>`` global (``_rebuild_tensor_v3``)."""

    name: str
    dtype: str  # numpy name


class _Storage(_Sealed):
    """One tensor storage: a flat array of `dtype`, filled now (zip) or after the object (legacy)."""

    __slots__ = ("big_endian", "data", "dtype", "key", "numel", "offset", "root")

    def __init__(self, dtype: np.dtype, numel: int, key: str, big_endian: bool = False):
        self.dtype, self.numel, self.key, self.big_endian = dtype, numel, key, big_endian
        self.data: np.ndarray | None = None
        self.root: _Storage | None = None  # legacy storage views
        self.offset = 0

    def array(self) -> np.ndarray:
        if self.root is not None:
            return self.root.array()[self.offset : self.offset + self.numel]
        if self.data is None:
            raise TorchFileError(f"storage {self.key!r} is referenced but its data is missing")
        return self.data


@dataclasses.dataclass
class _Tensor(_Sealed):
    """A tensor before its storage is known to be filled: materialised at the end of a load."""

    storage: _Storage
    offset: int
    size: tuple
    stride: tuple
    dtype: np.dtype | None = None  # _rebuild_tensor_v3: reinterpret an untyped (bytes) storage

    def numpy(self) -> np.ndarray:
        flat = self.storage.array()
        if self.dtype is not None and self.dtype != flat.dtype:
            raw = flat.view(np.uint8)
            if raw.size % self.dtype.itemsize:
                raise TorchFileError(
                    f"storage {self.storage.key!r}: size is no multiple of {self.dtype}"
                )
            flat = raw.view(self.dtype.newbyteorder(">") if self.storage.big_endian else self.dtype)
        size, stride, offset = self.size, self.stride, self.offset
        if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
            raise TorchFileError(
                f"storage {self.storage.key!r}: negative size/stride/offset {size}/{stride}/{offset}"
            )
        if 0 in size:
            return np.zeros(size, flat.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        # as_strided reads outside the buffer if a file lies about sizes: check before viewing.
        if last >= flat.size:
            raise TorchFileError(
                f"storage {self.storage.key!r}: tensor of size {size}, stride {stride}, offset {offset} "
                f"needs {last + 1} elements, the storage has {flat.size} (truncated file?)"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride], writeable=False
        )
        return np.array(
            view, dtype=flat.dtype.newbyteorder("=") if self.storage.big_endian else flat.dtype
        )


# ---------------------------------------------------------------------------------------------
# The allow-listed globals, each replaced by one of these functions.


def _int_tuple(value, what: str) -> tuple:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) for v in value):
        raise TorchFileError(f"{what}: expected a tuple of ints, found {value!r:.80}")
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _Storage) or not isinstance(storage_offset, int):
        raise TorchFileError(
            f"tensor rebuild: expected (storage, offset, ...), found {type(storage).__name__}"
        )
    return _Tensor(
        storage,
        storage_offset,
        _int_tuple(size, "tensor size"),
        _int_tuple(stride, "tensor stride"),
    )


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, *unused):
    tensor = _rebuild_tensor(storage, storage_offset, size, stride)
    if not isinstance(dtype, _TorchDtype):
        raise TorchFileError(f"_rebuild_tensor_v3: expected a torch dtype, found {dtype!r:.80}")
    return dataclasses.replace(tensor, dtype=_np_dtype(dtype.dtype))


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    if not isinstance(data, _Tensor):
        raise TorchFileError(f"parameter rebuild: expected a tensor, found {type(data).__name__}")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    # Tensor subclasses (Parameter in some torch versions); the data is all we keep.
    func = func.func if isinstance(func, _Callable) else None
    if func not in (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter) or not isinstance(
        args, tuple
    ):
        raise TorchFileError(f"_rebuild_from_type_v2: unexpected rebuild function {func!r:.80}")
    return func(*args)


def _reconstruct_persistent_obj(meta):
    # EDM's loader execs meta["module_src"] and instantiates meta["class_name"] from it; we keep
    # the name and the instance __dict__ only.
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise TorchFileError(
            "torch_utils.persistence object: expected a dict meta with type 'class'"
        )
    class_name, state, src = meta.get("class_name"), meta.get("state"), meta.get("module_src")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise TorchFileError(
            "torch_utils.persistence object: meta lacks class_name (str) or state (dict)"
        )
    return PickledModule(class_name, dict(state), src if isinstance(src, str) else None)


def _codecs_encode(obj, encoding="utf-8"):
    # Protocol-2 pickles write bytes as _codecs.encode(text, "latin1").
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise TorchFileError(
            f"_codecs.encode: only (str, 'latin1') is allowed, found encoding {encoding!r}"
        )
    return obj.encode("latin1")


def _empty_bytes(*args):
    if args:
        raise TorchFileError("builtins.bytes: only bytes() is allowed")
    return b""


class _NumpyDtype:
    """numpy.dtype(...) + BUILD read as a spec; turned into a real dtype only for scalars."""

    def __init__(self, spec, align=False, copy=True):
        if not isinstance(spec, str):
            raise TorchFileError(f"numpy.dtype: expected a type string, found {spec!r:.80}")
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>|=":
            self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:
        dtype = np.dtype(self.spec)
        if dtype.hasobject or dtype.kind not in "biufc?":
            raise TorchFileError(
                f"numpy scalar of dtype {self.spec!r}: only numeric dtypes are allowed"
            )
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes):
        raise TorchFileError("numpy scalar: expected (numpy.dtype, bytes)")
    dtype = dtype.to_numpy()
    if len(data) != dtype.itemsize:
        raise TorchFileError(f"numpy scalar: {len(data)} bytes for dtype {dtype}")
    return np.frombuffer(data, dtype)[0]


def _torch_size(sizes=()):
    return _int_tuple(sizes, "torch.Size")


def _load_from_bytes(data):
    if not isinstance(data, bytes):
        raise TorchFileError("torch.storage._load_from_bytes: expected bytes")
    # The stream's storages count against the budget of the load that reads this pickle.
    storage = _load_stream(io.BytesIO(data), _ACTIVE_BUDGET.get(), materialize=False)
    if not isinstance(storage, _Storage):
        raise TorchFileError("torch.storage._load_from_bytes: the bytes hold no storage")
    return storage


def _bfloat16():
    import ml_dtypes  # a jax dependency; only needed for bfloat16 tensors

    return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",
}
_TORCH_DTYPES = {
    "float32": "float32",
    "float": "float32",
    "float64": "float64",
    "double": "float64",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "short": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
    "complex64": "complex64",
    "complex128": "complex128",
}


def _np_dtype(name: str) -> np.dtype:
    return _bfloat16() if name == "bfloat16" else np.dtype(name)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch.storage", "_load_from_bytes"): _load_from_bytes,
        ("torch", "Size"): _torch_size,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytes"): _empty_bytes,
        ("_codecs", "encode"): _codecs_encode,
        ("numpy", "dtype"): _NumpyDtype,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("dnnlib.util", "EasyDict"): EasyDict,
    }
    for name, cls in _CONTAINERS.items():
        allowed["torch.nn.modules.container", name] = cls
    for name, dtype in _STORAGE_DTYPES.items():
        allowed["torch", name] = _StorageType(name, dtype)
    allowed["torch.storage", "UntypedStorage"] = allowed["torch", "UntypedStorage"]
    for name, dtype in _TORCH_DTYPES.items():
        allowed["torch", name] = _TorchDtype(name, dtype)
    # Python functions have writable attributes (__defaults__, ...) that BUILD could change.
    for (module, name), value in allowed.items():
        if isinstance(value, types.FunctionType):
            allowed[module, name] = _Callable(value, f"{module}.{name}")
    return allowed


_ALLOWED = _allowed_globals()
# Protocol-2 pickles (torch's) name Python 2 modules, as pickle's fix_imports knows.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


# ---------------------------------------------------------------------------------------------
# Unpickling.


class _Unpickler(pickle.Unpickler):
    """pickle.Unpickler resolving only allow-listed globals; storages via `storages`."""

    def __init__(self, file: BinaryIO, storages: _StorageTable | None = None):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str):
        module = _PY2_MODULES.get(module, module)
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: a torch/EDM network file does not need it "
                "(it could run code); allowed globals are torch tensor/storage rebuilders, "
                "torch_utils.persistence._reconstruct_persistent_obj, collections.OrderedDict, "
                "torch.nn ModuleDict/ModuleList/Sequential and numpy scalars"
            ) from None

    def persistent_load(self, pid):
        if self._storages is None:
            raise TorchFileError(f"persistent id {pid!r:.80} in a pickle that has no storages")
        return self._storages.get(pid)


class _StorageTable:
    """Storages by key from persistent ids; `read` gives the raw bytes (zip) or None (legacy)."""

    def __init__(self, read=None, byteorder: str = "<"):
        self.by_key: dict[str, _Storage] = {}
        self._read, self._byteorder = read, byteorder

    def get(self, pid) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise TorchFileError(
                f"unknown persistent id {pid!r:.80} (expected ('storage', type, key, location, numel[, view]))"
            )
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if (
            not isinstance(storage_type, _StorageType)
            or not isinstance(key, str)
            or not isinstance(numel, int)
        ):
            raise TorchFileError(f"malformed storage id {pid!r:.80}")
        big_endian = self._byteorder == ">"
        dtype = _np_dtype(storage_type.dtype)
        dtype = dtype.newbyteorder(">") if big_endian else dtype
        storage = self.by_key.get(key)
        if storage is None:
            storage = self.by_key[key] = _Storage(dtype, numel, key, big_endian)
            if self._read is not None:
                storage.data = self._read(key, dtype, numel)
        view = pid[5] if len(pid) == 6 else None
        if view is not None:  # legacy view: (view_key, offset, view_size) into the root storage
            view_key, offset, view_size = view
            sub = _Storage(dtype, view_size, view_key, big_endian)
            sub.root, sub.offset = storage, offset
            return sub
        return storage


def _tensor_bytes(obj, seen: set) -> tuple[int, int]:
    """(bytes, count) of every _Tensor reachable from obj as materialised (its full size, a
    stride-0 view too), each object once (cycles are fine): taken from the budget before the
    first tensor is made."""
    if id(obj) in seen:
        return 0, 0
    seen.add(id(obj))
    if isinstance(obj, _Tensor):
        itemsize = (obj.dtype or obj.storage.dtype).itemsize
        return math.prod(max(int(n), 0) for n in obj.size) * itemsize, 1
    if isinstance(obj, dict):
        children = [*obj.values(), *getattr(obj, "__dict__", {}).values()]
    elif isinstance(obj, (list, tuple)):
        children = obj
    elif isinstance(obj, PickledModule):
        children = [obj.state]
    else:
        return 0, 0
    total = count = 0
    for child in children:
        nbytes, n = _tensor_bytes(child, seen)
        total, count = total + nbytes, count + n
    return total, count


def _materialize(obj, memo: dict):
    """`obj` with every _Tensor replaced by a numpy array (containers updated in place); their
    bytes were taken from the budget before (_tensor_bytes)."""
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _Tensor):
        result = obj.numpy()
    elif isinstance(obj, dict):
        memo[id(obj)] = obj
        for key, value in obj.items():
            obj[key] = _materialize(value, memo)
        if isinstance(getattr(obj, "__dict__", None), dict):  # e.g. OrderedDict._metadata
            for key, value in obj.__dict__.items():
                obj.__dict__[key] = _materialize(value, memo)
        result = obj
    elif isinstance(obj, list):
        memo[id(obj)] = obj
        obj[:] = [_materialize(v, memo) for v in obj]
        result = obj
    elif isinstance(obj, tuple):
        result = tuple(_materialize(v, memo) for v in obj)
    elif isinstance(obj, PickledModule):
        memo[id(obj)] = obj
        obj.state = _materialize(obj.state, memo)
        result = obj
    else:
        result = obj
    memo[id(obj)] = result
    return result


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TorchFileError(f"{what}: expected {n} bytes, found {len(data)} (truncated file?)")
    return data


def _load_legacy_rest(f: BinaryIO, budget: _Budget):
    """The legacy stream after its magic number: protocol, sys info, object, keys, storages."""
    protocol = _Unpickler(f).load()
    if protocol != LEGACY_PROTOCOL:
        raise TorchFileError(
            f"legacy torch file: protocol {protocol!r}, expected {LEGACY_PROTOCOL}"
        )
    sys_info = _Unpickler(f).load()
    byteorder = (
        "<" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else ">"
    )
    storages = _StorageTable(read=None, byteorder=byteorder)
    obj = _Unpickler(f, storages).load()
    keys = _Unpickler(f).load()
    if not isinstance(keys, list):
        raise TorchFileError(f"legacy torch file: storage key list is {type(keys).__name__}")
    for key in keys:
        storage = storages.by_key.get(key)
        if storage is None:
            raise TorchFileError(f"legacy torch file: data for storage {key!r} that no tensor uses")
        (count,) = struct.unpack(byteorder + "q", _read_exact(f, 8, f"storage {key!r} size"))
        nbytes = count * storage.dtype.itemsize
        budget.take(nbytes, f"legacy storage {key!r}")
        storage.data = np.frombuffer(_read_exact(f, nbytes, f"storage {key!r}"), storage.dtype)
    return obj


MAX_COMPRESSION_RATIO = 100  # torch stores its entries uncompressed; deflate tops out at ~1000


def _take_entry(archive: zipfile.ZipFile, name: str, budget: _Budget) -> None:
    """Refuse a zip bomb (an entry inflating beyond MAX_COMPRESSION_RATIO) and take the
    entry's decompressed size from the budget, both before it is read."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_COMPRESSION_RATIO * max(
        info.compress_size, 1
    ):
        raise TorchFileError(
            f"zip entry {name!r} inflates {info.compress_size:,} bytes to {info.file_size:,} (a zip bomb? "
            "torch stores its entries uncompressed): refused before reading"
        )
    budget.take(info.file_size, f"zip entry {name!r} (decompressed)")


def _load_zip(f: BinaryIO, budget: _Budget):
    with zipfile.ZipFile(f) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise TorchFileError(
                f"zip file without exactly one '<archive>/data.pkl' entry: {names[:8]}"
            )
        root = pkl[0][: -len("data.pkl")]
        byteorder = "<"
        if root + "byteorder" in names and archive.read(root + "byteorder").strip() == b"big":
            byteorder = ">"

        def read(key, dtype, numel):
            entry = f"{root}data/{key}"
            if entry not in names:
                raise TorchFileError(f"zip file lacks storage entry {entry!r}")
            _take_entry(archive, entry, budget)
            data = archive.read(entry)
            if len(data) < numel * dtype.itemsize:
                raise TorchFileError(
                    f"{entry}: {len(data)} bytes, expected {numel * dtype.itemsize}"
                )
            return np.frombuffer(data, dtype, count=numel)

        _take_entry(archive, pkl[0], budget)
        return _Unpickler(io.BytesIO(archive.read(pkl[0])), _StorageTable(read, byteorder)).load()


def _load_stream(f: BinaryIO, budget: _Budget, materialize: bool = True):
    head = f.read(4)
    f.seek(-len(head), io.SEEK_CUR)
    if head == b"PK\x03\x04":
        obj = _load_zip(f, budget)
    else:
        obj = _Unpickler(f).load()
        if isinstance(obj, int) and obj == LEGACY_MAGIC:
            obj = _load_legacy_rest(f, budget)
    if not materialize:
        return obj
    nbytes, count = _tensor_bytes(obj, set())
    budget.take(nbytes, f"the file's {count} tensor(s) as arrays")  # before the first is made
    return _materialize(obj, {})


_CORRUPT = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    struct.error,
    zipfile.BadZipFile,
    UnicodeDecodeError,
    OverflowError,
    MemoryError,
    RecursionError,
)


def load(file, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """The object stored in a torch/EDM file, with tensors as numpy arrays.

    `file`: a path or a binary file object. Returns what the file pickled: dicts, lists,
    numbers, numpy arrays (tensors and parameters, in torch layout), `PickledModule`s.
    Raises UnsafePickleError for a global outside the allow-list, TorchFileError for a
    truncated or corrupt file, or one that declares more than `max_bytes` in all (decompressed
    zip entries, storages, tensors: checked before each allocation).
    """
    name = getattr(file, "name", "<stream>") if hasattr(file, "read") else os.fspath(file)
    budget = _Budget(max_bytes)
    token = _ACTIVE_BUDGET.set(budget)
    try:
        if hasattr(file, "read"):
            return _load_stream(file, budget)
        with open(file, "rb") as f:
            return _load_stream(f, budget)
    except TorchFileError as exc:
        if isinstance(exc, UnsafePickleError):
            raise UnsafePickleError(f"{name}: {exc}") from None
        raise TorchFileError(f"{name}: {exc}") from None
    except _CORRUPT as exc:
        raise TorchFileError(
            f"{name}: truncated or corrupt torch/pickle file ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        _ACTIVE_BUDGET.reset(token)
