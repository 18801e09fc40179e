"""The torch-free EDM converter: parity with PyTorch EDM, safety, formats, errors, URLs, the CLI."""

import collections
import functools
import hashlib
import http.server
import importlib.util
import io
import json
import os
import pathlib
import pickle
import subprocess
import sys
import threading
import time
import zipfile

import jax
import numpy as np
import pytest
from edm_fixtures import FIXTURES, NETWORK_CASES, load_case, nchw_to_nhwc

from pdr_jax import model_io
from pdr_jax.convert import (
    ConversionError,
    DownloadError,
    TorchFileError,
    UnsafePickleError,
    convert_edm,
    edm_network_kwargs,
    load_edm_pickle,
    load_edm_training_state,
    torch_pickle,
)
from pdr_jax.convert.names import variables_to_state_dict

ROOT = pathlib.Path(__file__).parent.parent
TORCH_FILES = pathlib.Path(__file__).parent / "fixtures" / "torch"
TRAINING_STATE = FIXTURES / "ddpmpp_aug_rgb32.training-state.pt"


# ---------------------------------------------------------------------------------------------
# A small writer of torch's file layouts (edm-reference.md section 7), so tests can make
# state_dicts and hostile files without torch.


class _Global:
    """Pickles as the global `module.name` without that module existing here."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # save_reduce insists on a callable
        raise AssertionError("never called")


_REBUILD_TENSOR = _Global("torch._utils", "_rebuild_tensor_v2")
_FLOAT_STORAGE = _Global("torch", "FloatStorage")


class _Reduce:
    """An object that pickles as REDUCE(func, args)."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _StorageRef:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler lets us emit arbitrary globals
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy, self.storages = legacy, []

    def _save_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = _save_global

    def persistent_id(self, obj):
        if not isinstance(obj, _StorageRef):
            return None
        self.storages.append(obj)
        pid = ("storage", _FLOAT_STORAGE, obj.key, "cpu", obj.array.size)
        return pid + (None,) if self.legacy else pid


def _tensors(state):
    """{name: tensor-like object} pickling as torch float32 tensors with their own storages."""
    out = collections.OrderedDict()
    for i, (name, value) in enumerate(state.items()):
        value = np.ascontiguousarray(value, np.float32)
        stride = tuple(s // 4 for s in value.strides)
        args = (
            _StorageRef(str(i), value),
            0,
            value.shape,
            stride,
            False,
            collections.OrderedDict(),
        )
        out[name] = _Reduce(_REBUILD_TENSOR, args)
    return out


def write_torch_file(path, obj, legacy=False):
    """torch.save(obj) in the zip (default) or legacy layout; `obj` may hold `_tensors(...)`."""
    data = io.BytesIO()
    pickler = _TorchPickler(data, legacy)
    pickler.dump(obj)
    if legacy:
        out = io.BytesIO()
        for header in (
            torch_pickle.LEGACY_MAGIC,
            torch_pickle.LEGACY_PROTOCOL,
            {
                "protocol_version": 1001,
                "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4},
            },
        ):
            pickle.dump(header, out, protocol=2)
        out.write(data.getvalue())
        pickle.dump([s.key for s in pickler.storages], out, protocol=2)
        for s in pickler.storages:
            out.write(np.int64(s.array.size).tobytes() + s.array.tobytes())
        pathlib.Path(path).write_bytes(out.getvalue())
        return
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data.getvalue())
        archive.writestr("archive/byteorder", "little")
        for s in pickler.storages:
            archive.writestr(f"archive/data/{s.key}", s.array.tobytes())
        archive.writestr("archive/version", "3\n")


# ---------------------------------------------------------------------------------------------
# Parity with PyTorch EDM.


def _max_error(net, variables, case):
    _, arrays = load_case(case)
    x = nchw_to_nhwc(arrays["x"])
    labels, aug = arrays.get("class_labels"), arrays.get("augment_labels")
    D = jax.jit(lambda v: net.apply(v, x, arrays["sigma"], labels, augment_labels=aug))(variables)
    D_ref = nchw_to_nhwc(arrays["D"])
    return float(np.max(np.abs(np.asarray(D) - D_ref))), float(np.max(np.abs(D_ref)))


def _assert_matches_edm(net, variables, case):
    err, scale = _max_error(net, variables, case)
    # Fixture README: |D_port - D| <= 1e-4 max|D| + 1e-5 (VP/VE/iDDPM amplify F by |c_out| = sigma).
    assert err <= 1e-4 * scale + 1e-5, f"{case}: max|dD| = {err} (max|D| = {scale})"


def _assert_weights_are_the_fixture_state(variables, case):
    _, arrays = load_case(case)
    state = variables_to_state_dict(variables)
    expected = {
        k[6:]: v
        for k, v in arrays.items()
        if k.startswith("state/") and not k.endswith("resample_filter")
    }
    assert sorted(state) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)


@pytest.mark.parametrize("case", NETWORK_CASES)
def test_snapshot_pickle_reproduces_edm(case):
    """Each fixture network-snapshot .pkl gives EDM's weights bit for bit and EDM's D."""
    net, variables = load_edm_pickle(FIXTURES / f"{case}.pkl")
    _assert_weights_are_the_fixture_state(variables, case)
    _assert_matches_edm(net, variables, case)


def test_training_state_net_reproduces_edm():
    """A training-state .pt (torch zip) is read as well; its "net" is used when "ema" is absent."""
    net, variables = load_edm_pickle(TRAINING_STATE)
    _assert_weights_are_the_fixture_state(variables, "ddpmpp_aug_rgb32")
    _assert_matches_edm(net, variables, "ddpmpp_aug_rgb32")


def test_training_state_adam_moments_match_torch():
    state = load_edm_training_state(TRAINING_STATE)
    meta, _ = load_case("ddpmpp_aug_rgb32")
    summary = meta["training_state"]["optimizer_state_summary"]
    assert len(state["param_names"]) == len(summary)
    for entry in summary:
        assert state["param_names"][entry["index"]] == entry["param"]
        moments = state["optimizer_state"]["state"][entry["param"]]
        assert float(moments["step"]) == entry["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            total = np.sum(moments[key], dtype=np.float64)
            assert total == pytest.approx(entry[f"{key}_sum"], rel=1e-6, abs=1e-9), (
                entry["param"],
                key,
            )
        assert np.sum(np.abs(moments["exp_avg"]), dtype=np.float64) == pytest.approx(
            entry["exp_avg_abs_sum"], rel=1e-6
        )
    groups = state["optimizer_state"]["param_groups"]
    assert groups[0]["params"] == state["param_names"] and groups[0]["betas"] == (0.9, 0.999)
    # The Flax-layout moments are the same numbers, in the params tree.
    assert state["adam"]["step"] == 1
    assert jax.tree_util.tree_structure(state["adam"]["mu"]) == jax.tree_util.tree_structure(
        state["variables"]["params"]
    )
    mu = variables_to_state_dict({"params": state["adam"]["mu"]})
    for name in state["param_names"]:
        np.testing.assert_array_equal(mu[name], state["optimizer_state"]["state"][name]["exp_avg"])


def test_loading_never_imports_torch():
    """Run in a fresh interpreter so that no other test can have imported torch."""
    code = f"""
import sys
from pdr_jax.convert import load_edm_pickle, load_edm_training_state, torch_pickle
load_edm_pickle({str(FIXTURES / "vp_ddpmpp_rgb32.pkl")!r})
load_edm_training_state({str(TRAINING_STATE)!r})
torch_pickle.load({str(TORCH_FILES / "vp_ddpmpp_rgb32.module.legacy.pth")!r})
torch_pickle.load({str(TORCH_FILES / "tensors.pt")!r})
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_utils', 'dnnlib', 'training'))
assert not bad, bad
print('ok')
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# Nothing in a file runs.


class _Command:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize(
    "func, name",
    [
        (os.system, f"{os.system.__module__}.system"),
        (exec, "builtins.exec"),
        (eval, "builtins.eval"),
    ],
)
@pytest.mark.parametrize("layout", ["pickle", "torch-zip", "nested-storage"])
def test_pickle_that_would_run_a_command_is_refused(tmp_path, func, name, layout):
    marker = tmp_path / "ran"
    command = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
    payload = {"ema": _Command(func, command), "loss_fn": None}
    path = tmp_path / "evil.pkl"
    if layout == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=4))
    elif layout == "torch-zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
    else:  # inside the legacy storage bytes a snapshot tensor carries
        load_from_bytes = _Global("torch.storage", "_load_from_bytes")
        inner = pickle.dumps(torch_pickle.LEGACY_MAGIC, protocol=2) + pickle.dumps(
            payload, protocol=2
        )
        data = io.BytesIO()
        _TorchPickler(data, legacy=True).dump({"ema": _Reduce(load_from_bytes, (inner,))})
        path.write_bytes(data.getvalue())
    with pytest.raises(UnsafePickleError, match=rf"global {name}\b"):
        load_edm_pickle(path)
    assert not marker.exists()


def test_pickle_cannot_rewrite_the_reader(tmp_path):
    """BUILD on an allow-listed global (here: set its __defaults__) is refused, not applied."""
    path = tmp_path / "tamper.pkl"
    name = b"__defaults__"
    path.write_bytes(
        b"\x80\x02ctorch._utils\n_rebuild_parameter\n"  # PROTO 2, GLOBAL
        + b"N}X"
        + len(name).to_bytes(4, "little")
        + name  # None, {"__defaults__":
        + b"(K\x01ts\x86b."  # (1,)}, TUPLE2, BUILD, STOP
    )
    with pytest.raises(UnsafePickleError, match="refusing to modify"):
        torch_pickle.load(path)
    assert torch_pickle._rebuild_parameter.__defaults__ == (False, None, None)


def test_embedded_module_source_is_never_executed(tmp_path):
    marker = tmp_path / "ran"
    meta = {
        "type": "class",
        "version": 6,
        "module_src": f"open({str(marker)!r}, 'w').close()\nclass VPPrecond: pass\n",
        "class_name": "VPPrecond",
        "state": {"_parameters": {}, "_buffers": {}, "_modules": {}, "_init_kwargs": {}},
    }
    reconstruct = _Global("torch_utils.persistence", "_reconstruct_persistent_obj")
    path = tmp_path / "snapshot.pkl"
    with open(path, "wb") as f:
        _TorchPickler(f, legacy=False).dump({"ema": _Reduce(reconstruct, (meta,))})
    ema = torch_pickle.load(path)["ema"]
    assert ema.class_name == "VPPrecond" and ema.module_src == meta["module_src"]
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# PyTorch state_dict files.


def _vp_kwargs():
    meta, arrays = load_case("vp_ddpmpp_rgb32")
    kwargs = edm_network_kwargs(meta["precond_class"], meta["constructor_kwargs"])
    state = {k[6:]: v for k, v in arrays.items() if k.startswith("state/")}
    return kwargs, state


@pytest.mark.parametrize(
    "file, prefix",
    [("vp_ddpmpp_rgb32.state_dict.pt", None), ("vp_ddpmpp_rgb32.module.legacy.pth", "module.")],
)
def test_torch_made_state_dicts_load(file, prefix):
    """Files written by torch.save itself (tests/fixtures/torch/make_torch_files.py)."""
    kwargs, _ = _vp_kwargs()
    net, variables = load_edm_pickle(TORCH_FILES / file, prefix=prefix, **kwargs)
    _assert_weights_are_the_fixture_state(variables, "vp_ddpmpp_rgb32")
    if prefix:  # one forward pass is enough: the weights above are bit-identical
        _assert_matches_edm(net, variables, "vp_ddpmpp_rgb32")


@pytest.mark.parametrize("file", ["tensors.pt", "tensors.legacy.pt"])
def test_torch_made_tensors_of_every_layout(file):
    """Views with offsets and strides, float16/bfloat16/int64/bool, 0-d and empty tensors."""
    expected = np.load(TORCH_FILES / "tensors.npz")
    tensors = torch_pickle.load(TORCH_FILES / file)
    assert set(tensors) == set(expected.files)
    for name in expected.files:
        got = tensors[name]
        assert got.shape == expected[name].shape, name
        np.testing.assert_array_equal(
            np.asarray(got, expected[name].dtype), expected[name], err_msg=name
        )
    assert tensors["half"].dtype == np.float16 and tensors["long"].dtype == np.int64


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_own_written_state_dict_with_wrapper_prefix(tmp_path, legacy):
    kwargs, state = _vp_kwargs()
    path = tmp_path / "wrapped.pt"
    write_torch_file(path, _tensors({f"edm_model.{k}": v for k, v in state.items()}), legacy=legacy)
    _, variables = load_edm_pickle(path, prefix="edm_model.", **kwargs)
    _assert_weights_are_the_fixture_state(variables, "vp_ddpmpp_rgb32")
    # Without the prefix the error says which prefix to pass.
    with pytest.raises(ConversionError, match=r"prefix='edm_model\.'"):
        load_edm_pickle(path, **kwargs)


def test_state_dict_architecture_from_named_config(tmp_path):
    """A NETWORKS name plus overrides gives the architecture; a mismatch is reported by name."""
    _, state = _vp_kwargs()
    path = tmp_path / "sd.pt"
    write_torch_file(path, _tensors(state))
    small = {"precond": "vp", "model_channels": 8, "channel_mult": (1, 2, 2), "num_blocks": 1}
    converted = convert_edm(path, config="edm-cifar10-ddpmpp", augment_dim=0, **small)
    assert (
        converted.network_kwargs["arch"] == "ddpmpp" and converted.network_kwargs["dropout"] == 0.13
    )
    _assert_weights_are_the_fixture_state(converted.variables, "vp_ddpmpp_rgb32")
    # The config's augment_dim=9 expects an augmentation-label layer this state_dict lacks.
    with pytest.raises(
        ConversionError, match=r"missing 1 parameter\(s\): \['model\.map_augment\.weight'\]"
    ):
        load_edm_pickle(path, config="edm-cifar10-ddpmpp", **small)
    with pytest.raises(ConversionError, match="records no architecture"):
        load_edm_pickle(path)
    with pytest.raises(ConversionError, match="unknown config 'nope'"):
        load_edm_pickle(path, config="nope")


# ---------------------------------------------------------------------------------------------
# Errors name what is wrong.


@pytest.mark.parametrize(
    "edit, pattern",
    [
        ("missing", r"missing 1 parameter\(s\): \['model\.map_label\.weight'\]"),
        ("extra", r"unexpected 1 entr\(y/ies\): \['model\.extra\.weight'\]"),
        ("renamed", r"missing .*'model\.map_layer0\.bias'.*unexpected .*'model\.map_layer0\.b'"),
        (
            "misshaped",
            r"model\.enc\.32x32_conv\.weight: expected shape \(8, 3, 3, 3\).*found \(8, 3, 1, 3\)",
        ),
    ],
)
def test_state_dict_mismatches_are_listed_by_name(tmp_path, edit, pattern):
    kwargs, state = _vp_kwargs()
    if edit == "missing":
        del state["model.map_label.weight"]
    elif edit == "extra":
        state["model.extra.weight"] = np.zeros(3, np.float32)
    elif edit == "renamed":
        state["model.map_layer0.b"] = state.pop("model.map_layer0.bias")
    else:
        state["model.enc.32x32_conv.weight"] = state["model.enc.32x32_conv.weight"][:, :, :1]
    path = tmp_path / f"{edit}.pt"
    write_torch_file(path, _tensors(state))
    with pytest.raises(ConversionError, match=pattern) as info:
        load_edm_pickle(path, **kwargs)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("source", ["vp_ddpmpp_rgb32.pkl", "ddpmpp_aug_rgb32.training-state.pt"])
@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_file(tmp_path, source, keep):
    data = (FIXTURES / source).read_bytes()
    path = tmp_path / source
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(TorchFileError, match=r"truncated|corrupt") as info:
        load_edm_pickle(path)
    assert str(path) in str(info.value)


def test_corrupt_file(tmp_path):
    path = tmp_path / "noise.pkl"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(TorchFileError, match="noise.pkl"):
        load_edm_pickle(path)


def test_wrong_key_lists_the_available_keys():
    with pytest.raises(
        ConversionError,
        match=r"no entry 'emma'; available keys: \['ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs'\]",
    ):
        load_edm_pickle(FIXTURES / "vp_ddpmpp_rgb32.pkl", key="emma")
    with pytest.raises(ConversionError, match=r"entry 'augment_pipe' is a NoneType"):
        load_edm_pickle(FIXTURES / "vp_ddpmpp_rgb32.pkl", key="augment_pipe")


def test_unknown_network_class(tmp_path):
    data = (FIXTURES / "vp_ddpmpp_rgb32.pkl").read_bytes()
    assert data.count(b"VPPrecond") == 1  # memoised: one string names the class
    path = tmp_path / "renamed.pkl"
    path.write_bytes(data.replace(b"VPPrecond", b"XYPrecond"))
    with pytest.raises(ConversionError, match=r"unknown network class 'XYPrecond'.*EDMPrecond"):
        load_edm_pickle(path)
    with pytest.raises(ConversionError, match=r"unknown network class 'VPLoss'"):
        load_edm_pickle(FIXTURES / "vp_ddpmpp_rgb32.pkl", key="loss_fn")


def test_unknown_constructor_argument_is_named():
    with pytest.raises(ConversionError, match=r"\['fancy_option'\] have no pdr_jax counterpart"):
        edm_network_kwargs(
            "VPPrecond", {"img_resolution": 32, "img_channels": 3, "fancy_option": 1}
        )


# ---------------------------------------------------------------------------------------------
# URLs: downloaded once, then from the cache.


@pytest.fixture
def http_server():
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            if self.path == "/short.pkl":  # promises more bytes than it sends
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"x" * 10)
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(FIXTURES))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_url_is_downloaded_once(tmp_path, http_server, monkeypatch):
    base, requests = http_server
    url = f"{base}/vp_ddpmpp_rgb32.pkl"
    sha = hashlib.sha256((FIXTURES / "vp_ddpmpp_rgb32.pkl").read_bytes()).hexdigest()
    monkeypatch.setenv("PDR_JAX_CACHE", str(tmp_path / "cache"))
    _, first = load_edm_pickle(url, sha256=sha)
    _, second = load_edm_pickle(url)
    assert requests == ["/vp_ddpmpp_rgb32.pkl"]
    cached = list((tmp_path / "cache" / "downloads").iterdir())
    assert [p.name.endswith("-vp_ddpmpp_rgb32.pkl") for p in cached] == [True]
    _, local = load_edm_pickle(FIXTURES / "vp_ddpmpp_rgb32.pkl")
    jax.tree_util.tree_map(np.testing.assert_array_equal, first, local)
    jax.tree_util.tree_map(np.testing.assert_array_equal, second, local)


def test_download_integrity_checks(tmp_path, http_server):
    base, _ = http_server
    with pytest.raises(DownloadError, match="sha256 .* differs from the expected 00ff"):
        load_edm_pickle(f"{base}/vp_ddpmpp_rgb32.pkl", cache_dir=tmp_path, sha256="00ff")
    with pytest.raises(DownloadError, match="short.pkl"):
        load_edm_pickle(f"{base}/short.pkl", cache_dir=tmp_path)
    with pytest.raises(DownloadError, match="404"):
        load_edm_pickle(f"{base}/absent.pkl", cache_dir=tmp_path)
    assert list((tmp_path / "downloads").iterdir()) == []  # no partial files


# ---------------------------------------------------------------------------------------------
# tools/convert_edm.py


def _tool():
    return importlib.import_module("pdr_jax.cli.convert")


def test_convert_tool_writes_a_loadable_model(tmp_path, capsys):
    tool = _tool()
    out = tmp_path / "model"
    assert tool.main([str(FIXTURES / "iddpm_adm_rgb32.pkl"), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "iddpm/dhariwalunet" in printed and "label_dim 10" in printed and "32x32x3" in printed
    description = json.loads((out / "network.json").read_text())
    assert description["source"]["edm_class"] == "iDDPMPrecond"

    net, variables = model_io.load_model(out)
    net_ref, variables_ref = load_edm_pickle(FIXTURES / "iddpm_adm_rgb32.pkl")
    assert net == net_ref
    _, arrays = load_case("iddpm_adm_rgb32")
    x, sigma, labels = nchw_to_nhwc(arrays["x"]), arrays["sigma"], arrays["class_labels"]
    apply = jax.jit(lambda v: net.apply(v, x, sigma, labels))
    np.testing.assert_array_equal(apply(variables), apply(variables_ref))

    # A second run refuses to overwrite; the error is one line, not a traceback.
    assert tool.main([str(FIXTURES / "iddpm_adm_rgb32.pkl"), str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_convert_tool_help(capsys):
    with pytest.raises(SystemExit) as info:
        _tool().parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--prefix" in text and "--config" in text and "pdr-gray128" in text


# ---------------------------------------------------------------------------------------------
# Hostile sizes and structures: refused before allocating, with the converter's own errors.


def _peak_rss_of_conversion(path) -> tuple[str, float]:
    """(error text, peak RSS in MB) of convert_edm(path) in a fresh process: VmHWM of its own
    address space (getrusage's ru_maxrss keeps the forking parent's peak across exec on Linux,
    so under pytest it reports the worker's memory)."""
    code = (
        "import sys\n"
        "from pdr_jax.convert import ConversionError, TorchFileError, convert_edm\n"
        "try:\n"
        f"    convert_edm({str(path)!r}, config='pdr-gray64')\n"
        "    print('loaded')\n"
        "except (ConversionError, TorchFileError) as e:\n"
        "    print(type(e).__name__, e)\n"
        "hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0]\n"
        "print('RSS', int(hwm.split()[1]) / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        cwd=ROOT,
    )
    lines = out.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("RSS"), out.stderr[-2000:]
    return "\n".join(lines[:-1]), float(lines[-1].split()[1])


def _write_stride_zero_file(path, size) -> None:
    """A torch file of two `size` float tensors, each a stride-0 view of a one-float storage."""

    def expanded(key):
        storage = _StorageRef(key, np.zeros(1, np.float32))
        return _Reduce(
            _REBUILD_TENSOR, (storage, 0, size, (0,) * len(size), False, collections.OrderedDict())
        )

    write_torch_file(path, collections.OrderedDict(a=expanded("0"), b=expanded("1")))


def test_a_stride_zero_tensor_beyond_the_budget_is_refused_without_allocating(tmp_path):
    """Two 2^16 x 2^16 stride-0 views of one float (16 GiB each, 817-byte-class file)."""
    path = tmp_path / "expanded.pt"
    _write_stride_zero_file(path, (2**16, 2**16))
    assert path.stat().st_size < 2000
    error, rss_mb = _peak_rss_of_conversion(path)
    assert (
        error.startswith("TorchFileError")
        and "beyond the budget" in error
        and "expanded.pt" in error
    )
    assert rss_mb < 1024, rss_mb
    with pytest.raises(TorchFileError, match="beyond the budget of 1,000 bytes"):
        torch_pickle.load(path, max_bytes=1000)


def test_a_zip_bomb_is_refused_before_inflating(tmp_path):
    """data.pkl deflated 1000:1 (a ~100 KB entry of 100 MB) in an otherwise valid torch zip."""
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}, protocol=2) + b"\0" * (100 << 20))
        archive.writestr("archive/version", "3\n")
    assert path.stat().st_size < 1 << 20
    error, rss_mb = _peak_rss_of_conversion(path)
    assert error.startswith("TorchFileError") and "zip bomb" in error
    assert rss_mb < 1024, rss_mb


@pytest.mark.parametrize(
    "change",
    [
        lambda kwargs: {**kwargs, "img_resolution": "thirty-two"},
        lambda kwargs: list(kwargs.items()),
        lambda kwargs: {**kwargs, "model_kwargs": 7},
    ],
)
def test_fields_of_the_wrong_type_are_refused_by_name(monkeypatch, change):
    """A snapshot whose constructor arguments are of the wrong type (img_resolution a string,
    _init_kwargs a list, ...) ends in ConversionError naming the file, not a TypeError or
    AttributeError from deep inside."""
    snapshot = torch_pickle.load(FIXTURES / "vp_ddpmpp_rgb32.pkl")
    snapshot["ema"].state["_init_kwargs"] = change(dict(snapshot["ema"].state["_init_kwargs"]))
    monkeypatch.setattr(torch_pickle, "load", lambda *args, **kwargs: snapshot)
    with pytest.raises(ConversionError, match=r"vp_ddpmpp_rgb32\.pkl: "):
        load_edm_pickle(FIXTURES / "vp_ddpmpp_rgb32.pkl")


def test_two_stride_zero_tensors_within_the_old_budget_are_refused_at_once(tmp_path):
    """Issue 35, defect 4: two 2^15 x 2^14 stride-0 float views (2 GiB each, 4 GiB in all, under
    the old 6 GiB default) in a sub-2 kB file: their bytes are counted together before the first
    is made, so the file is refused with no allocation (peak RSS < 1 GB)."""
    path = tmp_path / "two.pt"
    _write_stride_zero_file(path, (2**15, 2**14))
    start = time.perf_counter()
    error, rss_mb = _peak_rss_of_conversion(path)
    assert "beyond the budget" in error and "2 tensor(s)" in error, error
    assert rss_mb < 1024 and time.perf_counter() - start < 60


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda kwargs: {**kwargs, "num_blocks": 100000}, "num_blocks = 100000"),
        (
            lambda kwargs: {**kwargs, "channel_mult": (1,) * 60, "img_resolution": 2**60},
            "len\\(channel_mult\\) = 60",
        ),
        (lambda kwargs: {**kwargs, "model_channels": 2048, "num_blocks": 16}, "beyond the budget"),
    ],
)
def test_architecture_bombs_are_refused_before_building(monkeypatch, change, message):
    """Issue 35, defects 5 and 6: constructor arguments describing an absurd network (100000
    blocks; 60 levels at 2^60 px; a 2048-channel, 16-block network past the byte budget) are
    refused by name before anything is built, each within seconds."""
    snapshot = torch_pickle.load(FIXTURES / "vp_ddpmpp_rgb32.pkl")
    snapshot["ema"].state["_init_kwargs"] = change(dict(snapshot["ema"].state["_init_kwargs"]))
    monkeypatch.setattr(torch_pickle, "load", lambda *args, **kwargs: snapshot)
    start = time.perf_counter()
    with pytest.raises(ConversionError, match=rf"vp_ddpmpp_rgb32\.pkl: .*{message}"):
        load_edm_pickle(FIXTURES / "vp_ddpmpp_rgb32.pkl")
    assert time.perf_counter() - start < 30


def test_a_self_containing_argument_is_a_conversion_error(monkeypatch):
    """Issue 35, defect 6: a list in _init_kwargs that contains itself (RecursionError inside)
    ends in ConversionError naming the file."""
    snapshot = torch_pickle.load(FIXTURES / "vp_ddpmpp_rgb32.pkl")
    loop = []
    loop.append(loop)
    snapshot["ema"].state["_init_kwargs"] = {
        **snapshot["ema"].state["_init_kwargs"],
        "channel_mult": loop,
    }
    monkeypatch.setattr(torch_pickle, "load", lambda *args, **kwargs: snapshot)
    with pytest.raises(ConversionError, match=r"vp_ddpmpp_rgb32\.pkl: .*RecursionError"):
        load_edm_pickle(FIXTURES / "vp_ddpmpp_rgb32.pkl")
