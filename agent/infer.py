"""Inference: TFLite runtime detection, load-time checks, int8 (de)quantisation, scoring (the sidecar contract is
agent.model_spec, re-exported here).

The runtime is imported inside the loader (``ai_edge_litert`` first, then ``tflite_runtime``) so that the
agent starts, and can say what is wrong, on a machine that has neither. TensorFlow is never imported.
"""

from __future__ import annotations

import hashlib
import stat
import importlib
import importlib.metadata
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agent.derive import Deriver
from agent.model_spec import (  # noqa: F401 - re-exported: the sidecar contract's names were always agent.infer's
    MAX_CALIBRATION_VALUES, MAX_SIDECAR_BYTES, MAX_WINDOW_VALUES, CalibrationSpec, DecisionSpec, ModelError,
    NormalisationSpec, OutputSpec, Sidecar, TensorSpec, WindowSpec, read_sidecar, sidecar_path,
)
from agent.records import Contributions  # noqa: F401 - re-exported: scorers made them here first
from agent.window import FEATURES, Normaliser, feature_size

log = logging.getLogger(__name__)

RUNTIMES = ("ai_edge_litert", "tflite_runtime")
BATCH = 512  # rows per batched invoke (STACK.md: 0.03-0.25 µs per sample at 512)
try:  # the clip ufunc (np.clip is a Python wrapper around it)
    from numpy._core.umath import clip as _clip  # type: ignore[attr-defined]  # numpy >= 1.26; stubs omit it
except ImportError:  # pragma: no cover - numpy 1.24/1.25
    from numpy.core.umath import clip as _clip  # type: ignore[attr-defined]  # the ufunc is there; stubs omit it
_divide, _rint, _add, _add_reduce, _subtract = np.divide, np.rint, np.add, np.add.reduce, np.subtract
_perf_counter = time.perf_counter
ONE_MAX = 4096  # an int8 input of at most this many values is quantised into buffers kept for it (invoke)
MAX_MODEL_BYTES = 64 * 2**20  # an int8 model for a gateway is kilobytes to a few MB; never read a huge file whole


def interpreter_class(runtime: str = "auto") -> tuple[type, str, str]:
    """The Interpreter class, runtime name and version; ``auto`` prefers ai_edge_litert."""
    candidates = RUNTIMES if runtime == "auto" else (runtime,)
    errors = []
    for name in candidates:
        try:
            mod = importlib.import_module(f"{name}.interpreter")
        except ImportError as e:
            errors.append(f"{name}: {e}")
            continue
        try:
            version = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return mod.Interpreter, name, version
    raise ModelError("no TFLite runtime importable (" + "; ".join(errors) + "); install tflite-runtime or ai-edge-litert")


def read_model_file(path: Path, sha256: str) -> tuple[bytes, str]:
    """The model file's bytes and their sha256, checked against the sidecar's ``sha256``; ModelError when it is not a
    regular file, larger than ``MAX_MODEL_BYTES`` (refused before it is read whole), unreadable or another file."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a pipe would hang the read, a directory fail it obscurely
            raise ModelError(f"{path}: not a regular file")
        if st.st_size > MAX_MODEL_BYTES:
            raise ModelError(f"{path}: {st.st_size} bytes, more than the {MAX_MODEL_BYTES >> 20} MiB a model may have")
        content = path.read_bytes()
    except FileNotFoundError as e:
        raise ModelError(f"{path}: no such file") from e
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror})") from e
    digest = hashlib.sha256(content).hexdigest()
    if digest != sha256:
        raise ModelError(f"{sidecar_path(path)}: {path.name}'s sha256 {digest} does not match the sidecar's {sha256}")
    return content, digest


class Model:
    """A loaded, checked int8 TFLite model with its sidecar. Not thread-safe: one thread invokes it."""

    def __init__(self, path: Path, runtime: str = "auto", num_threads: int = 1, batch: int = BATCH):
        self.path = Path(path)
        self.sidecar = read_sidecar(self.path)
        content, self.sha256 = read_model_file(self.path, self.sidecar.sha256)
        cls, self.runtime, self.runtime_version = interpreter_class(runtime)
        self._content, self._cls, self._threads, self._batch_rows = content, cls, num_threads, batch
        self._batch_interp: Any = None  # a second interpreter resized to ``batch`` rows, made on first use
        self._batch_q: np.ndarray | None = None  # its quantised input, reused
        try:
            self._interp = cls(model_content=content, num_threads=num_threads)
            self._interp.allocate_tensors()
        except Exception as e:  # the runtimes raise ValueError/RuntimeError with their own text
            raise ModelError(f"{self.path}: the {self.runtime} interpreter refused the file ({e})") from e
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        self._check()
        self._in_idx, self._out_idx = self._in["index"], self._out["index"]
        self._in_shape = tuple(int(d) for d in self._in["shape"])
        self._out_int = bool(np.issubdtype(self._out["dtype"], np.integer))
        self._in_scale, self._in_zp = self._in["quantization"]
        self._out_scale, self._out_zp = self._out["quantization"]
        self._dequant: np.ndarray | None = None  # an 8-bit output's 256 dequantised values, by the byte's value
        if np.dtype(self._out["dtype"]).itemsize == 1 and self._out_int:
            codes = np.arange(256, dtype=np.uint8).view(self._out["dtype"])  # each byte as the output reads it
            self._dequant = (codes.astype(np.float64) - self._out_zp) * self._out_scale  # the formula, per value
        self._in_dtype = self._in["dtype"]
        info = np.iinfo(self._in_dtype) if np.issubdtype(self._in_dtype, np.integer) else None
        self._in_lo: int | None = info.min if info else None  # None: a float input (nothing to quantise)
        self._in_hi: int | None = info.max if info else None
        self._q = tuple(np.float64(v) for v in (self._in_lo or 0, self._in_hi or 0, self._in_zp, self._in_scale))
        # ``run_one``: integer inputs of at most ONE_MAX values (a large input is quantised by ``_quantise``).
        size = int(np.prod(self._in_shape))
        self._one_shape = (size,)  # the flat vector ``run_one`` takes, as the scorer's feature vector is
        small = self._in_lo is not None and size <= ONE_MAX
        self._calls = (self._interp.set_tensor, self._interp.invoke, self._interp.get_tensor)
        self.run_one: Callable[[np.ndarray], np.ndarray] | None = self._one_kernel(size) if small else None

    def _one_kernel(self, size: int) -> Callable[[np.ndarray], np.ndarray]:
        """``invoke`` of one flat float64 vector of the input's size, everything it needs bound once (the scorer's
        path per window: ``_quantise``, set/invoke/get, ``_dequantise``; the same numbers)."""
        # one window's quantisation buffers (float, then the input's integer type) and constants, kept: flat, as the
        # scorer's feature vector is (a ufunc on equal shapes is cheaper than on broadcast ones)
        lo, hi, zp, scale = (np.full(size, v) for v in self._q)
        f_buf, q_flat = np.empty(size), np.empty(size, dtype=self._in_dtype)
        q = q_flat.reshape(self._in_shape)  # the tensor's shape, same memory
        set_tensor, run, get_tensor = self._calls
        in_idx, out_idx = self._in_idx, self._out_idx
        table, dequantise = self._dequant, self._dequantise

        def one(x: np.ndarray) -> np.ndarray:
            # ``_quantise`` into buffers kept for one window (no allocation per reading); the constants are flat
            # arrays of its size, which a ufunc takes faster than a scalar or a broadcast (the same numbers), and
            # ``out`` is given by position: a keyword costs as much again as a small array's work
            f = _divide(x, scale, f_buf)
            _rint(f, f)
            _add(f, zp, f)
            _clip(f, lo, hi, f)
            q_flat[...] = f
            set_tensor(in_idx, q)
            run()
            out = get_tensor(out_idx).reshape(-1)
            return table.take(out) if table is not None else dequantise(out)

        return one

    def _check(self) -> None:
        sc = self.sidecar
        problems = []
        for label, spec, det in (("input", sc.input, self._in), ("output", sc.output, self._out)):
            shape = [int(s) for s in det["shape"]]
            if shape != spec.shape:
                problems.append(f"{label} shape {shape} != sidecar {spec.shape}")
            dtype = np.dtype(det["dtype"]).name
            if dtype != spec.dtype:
                problems.append(f"{label} dtype {dtype} != sidecar {spec.dtype}")
            if np.issubdtype(det["dtype"], np.integer) and det["quantization"][0] == 0:
                problems.append(f"{label} is {dtype} without quantisation parameters")
        want = feature_size(sc.features, sc.window.length, len(sc.columns))
        if int(np.prod(sc.input.shape)) != want:
            problems.append(
                f"input holds {int(np.prod(sc.input.shape))} values but features {sc.features!r} of "
                f"{sc.window.length}x{len(sc.columns)} give {want}"
            )
        if sc.kind == "autoencoder" and int(np.prod(sc.output.shape)) != want:
            problems.append("an autoencoder's output must have the input's size")
        if problems:
            raise ModelError(f"{self.path}: " + "; ".join(problems))

    @property
    def name(self) -> str:
        return self.sidecar.name

    @property
    def version(self) -> str:
        return self.sidecar.version

    def describe(self) -> dict[str, Any]:
        """Identity for alerts, birth and summaries."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    def tensor_details(self) -> dict[str, Any]:
        return {
            label: {"shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                    "scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1])}
            for label, d in (("input", self._in), ("output", self._out))
        }

    def invoke(self, x: np.ndarray) -> np.ndarray:
        """Run one feature vector (float, normalised) through the model; returns the dequantised output, flat."""
        if self.run_one is not None:
            if type(x) is not np.ndarray or x.shape != self._one_shape:  # the scorer's is flat
                x = np.asarray(x, dtype=np.float64).reshape(self._one_shape)
            return self.run_one(x)
        q = self._quantise(np.asarray(x, dtype=np.float64).reshape(self._in_shape))
        set_tensor, run, get_tensor = self._calls  # bound once: attribute lookups are a share of a 2 µs invoke
        set_tensor(self._in_idx, q)
        run()
        return self._dequantise(get_tensor(self._out_idx).reshape(-1))

    def _dequantise(self, out: np.ndarray) -> np.ndarray:
        """The model's output as float64: ``(q - zero_point) * scale`` (looked up for an 8-bit output: the same
        numbers, one indexing instead of three passes)."""
        if self._dequant is not None:  # indexed by the byte: an int8 value v < 0 is byte 256 + v, index -|v| of 256
            return self._dequant.take(out)
        if self._out_int:
            return (out.astype(np.float64) - self._out_zp) * self._out_scale
        return out.astype(np.float64)

    def invoke_batch(self, xs: np.ndarray) -> np.ndarray:
        """Run N feature vectors (N x input size, float, normalised) at once; returns N x output size, dequantised.

        Uses a second interpreter whose input is resized to ``batch`` rows (the last chunk padded), so the
        single-window interpreter above is never resized. A model that cannot be resized (its first dimension
        is not a batch of 1, or the runtime refuses) is run row by row through ``invoke``: same results, slower.
        """
        out_size = int(np.prod(self._out["shape"]))
        xs = np.asarray(xs, dtype=np.float64)
        if len(xs) == 0:
            return np.empty((0, out_size))
        xs = xs.reshape(len(xs), -1)
        n, size = xs.shape
        it = self._batch_interpreter()
        if it is None:
            return np.stack([self.invoke(x) for x in xs])
        rows = self._batch_rows
        in_idx, out_idx = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
        result = np.empty((n, out_size))
        if self._batch_q is None or self._batch_q.shape[1] != size:
            self._batch_q = np.empty((rows, size), dtype=self._in_dtype)
        q = self._batch_q
        pad = self._quantise(np.zeros((1, size)))  # the rows past the last window: zeros, as before
        for start in range(0, n, rows):
            chunk = xs[start:start + rows]
            q[: len(chunk)] = self._quantise(chunk)  # only the windows' rows are quantised
            q[len(chunk):] = pad
            it.set_tensor(in_idx, q.reshape((rows,) + self._in_shape[1:]))
            it.invoke()
            out = it.get_tensor(out_idx).reshape(rows, -1)[: len(chunk)]
            result[start:start + len(chunk)] = self._dequantise(out)
        return result

    @property
    def batched(self) -> bool:
        """True when ``invoke_batch`` runs real batches (False: row by row)."""
        return self._batch_interpreter() is not None

    def _quantise(self, x: np.ndarray) -> np.ndarray:
        """``clip(rint(x / scale) + zero_point)`` in the input's integer type (a new array; one window's goes through
        the buffers of ``run_one`` instead)."""
        if self._in_lo is None:
            return x.astype(self._in_dtype)
        lo, hi, zp, scale = self._q  # float64 scalars: numpy converts a Python int at every call
        f = x / scale
        _rint(f, f)
        _add(f, zp, f)
        _clip(f, lo, hi, f)  # maximum(lo) then minimum(hi) in one ufunc: the same numbers
        return f.astype(self._in_dtype)

    def _batch_interpreter(self) -> Any:
        if self._batch_interp is None:
            self._batch_interp = False
            if len(self._in_shape) >= 2 and self._in_shape[0] == 1:
                try:
                    it = self._cls(model_content=self._content, num_threads=self._threads)
                    idx = it.get_input_details()[0]["index"]
                    # not strict: the converter fixes the batch dimension at 1, and FULLY_CONNECTED takes any batch
                    it.resize_tensor_input(idx, [self._batch_rows, *self._in_shape[1:]], strict=False)
                    it.allocate_tensors()
                    self._batch_interp = it
                except Exception as e:  # noqa: BLE001 - the runtimes raise ValueError/RuntimeError: run row by row
                    log.info("model %s cannot be batched (%s): batched scoring runs row by row", self.name, e)
        return self._batch_interp or None


class Scorer:
    """Turns a raw window into a score and per-column contributions, the same way for daemon and evaluate.

    The derived features (sidecar ``derived``) are appended to the raw window before normalisation.
    """

    timed = False  # scores do not depend on the time of day (the generic detector's may: agent/season.py)

    def __init__(self, model: Model, normaliser: Normaliser):
        self.model = model
        self.normaliser = normaliser
        sc = model.sidecar
        self._recipe = sc.features
        self._features = FEATURES[sc.features]  # features(recipe, z) without looking the recipe up per window
        self._kind = sc.kind
        self._columns = sc.columns
        self.derive = Deriver(sc.channels, sc.derived)
        self._target = sc.channels.index(sc.target) if sc.target else None
        kernel = self._one_window_kernel(sc.window.length)
        if kernel is not None:
            self.score = kernel  # type: ignore[method-assign]  # the same numbers as the method, per window

    def _one_window_kernel(self, length: int) -> Callable[..., tuple[float, Contributions, float]] | None:
        """``score`` of one window of the sidecar's shape with every lookup and check done once (what the pipeline
        calls per reading; a Python call or attribute costs a share of a 1-2 µs invoke): the same numbers, in the
        same order. None when ``score`` is as cheap: no normalisation, or an input too large to be quantised into
        kept buffers. Any other shape goes to ``score``."""
        shape, cols = (length, len(self.model.sidecar.channels)), self._columns
        run_one, tiles = self.model.run_one, self.normaliser.tiles((length, len(cols)))
        if run_one is None or tiles is None or self._recipe not in ("raw", "last"):
            return None
        mean, std = tiles
        general, kind, raw, derive = Scorer.score.__get__(self), self._kind, self._recipe == "raw", self.derive
        ncols, derived, target = len(cols), len(self.derive) > 0, self._target
        size = length * ncols if raw else ncols  # the model input's values (the error's mean is over them)

        def score(window_raw: np.ndarray, sensor: str = "") -> tuple[float, Contributions, float]:
            if type(window_raw) is not np.ndarray or window_raw.shape != shape:
                return general(window_raw, sensor)
            z = _subtract(derive(window_raw) if derived else window_raw, mean)  # Normaliser.__call__, tiled
            _divide(z, std, z)
            x = z.reshape(-1) if raw else z[-1]
            t0 = _perf_counter()
            out = run_one(x)
            latency = _perf_counter() - t0
            if kind == "autoencoder":
                err = _subtract(x, out, out)
                err *= err
                return (float(_add_reduce(err)) / size,
                        Contributions(cols, lambda: err.reshape(-1, ncols).sum(axis=0)), latency)
            if kind == "classifier":
                return float(out[0]), Contributions(cols, lambda: np.abs(z[-1])), latency
            return float(abs(out[0] - z[-1, target])), Contributions(cols, lambda: np.abs(z[-1])), latency

        return score

    def score(self, window_raw: np.ndarray, sensor: str = "") -> tuple[float, Contributions, float]:
        """(score, per-column contributions, latency in seconds); stateless, so ``sensor`` is not used."""
        z = self.normaliser(self.derive(window_raw))
        x = self._features(z)
        t0 = _perf_counter()
        out = self.model.invoke(x)
        latency = _perf_counter() - t0
        cols = self._columns
        if self._kind == "autoencoder":
            err = _subtract(x, out, out)  # the output is a fresh array, used only here
            err *= err
            score = float(_add_reduce(err)) / err.size  # err.sum() without its Python wrapper (x, out: flat)
            return score, Contributions(cols, lambda: err.reshape(-1, len(cols)).sum(axis=0)), latency
        if self._kind == "classifier":
            score = float(out[0])
        else:
            score = float(abs(out[0] - z[-1, self._target]))
        return score, Contributions(cols, lambda: np.abs(z[-1])), latency  # how far each input is from normal

    def score_windows(self, windows_raw: np.ndarray, sensor: str = "") -> tuple[np.ndarray, Callable[[int], Contributions]]:
        """``score`` of each of N raw windows (N x length x channels) with one batched invoke: (the scores, the
        contributions of window i, computed when asked: alerts only). The same numbers as ``score``."""
        z = self.normaliser(self.derive(windows_raw))
        n = z.shape[0]
        if self._recipe == "raw":
            x = z.reshape(n, -1)
        else:
            x = z[:, -1, :]
        out = self.model.invoke_batch(x)
        cols = self._columns
        if self._kind == "autoencoder":
            err = x - out
            err *= err
            scores = err.sum(axis=1) / err.shape[1]
            return scores, lambda i: Contributions(cols, lambda: err[i].reshape(-1, len(cols)).sum(axis=0))
        last = np.abs(z[:, -1, :])
        if self._kind == "classifier":
            return out[:, 0].copy(), lambda i: Contributions(cols, last[i])
        return np.abs(out[:, 0] - z[:, -1, self._target]), lambda i: Contributions(cols, last[i])

    def scores(self, windows_raw: np.ndarray) -> np.ndarray:
        """The scores of N raw windows (N x length x channels) in batched invokes: the same numbers as ``score``."""
        z = self.normaliser(self.derive(np.asarray(windows_raw, dtype=np.float64)))
        n = z.shape[0]
        if self._recipe == "raw":
            x = z.reshape(n, -1)
        elif self._recipe == "last":
            x = z[:, -1, :]
        else:
            x = np.stack([self._features(zi) for zi in z]) if n else np.empty((0, 0))
        out = self.model.invoke_batch(x)
        if self._kind == "autoencoder":
            return ((x - out) ** 2).mean(axis=1)
        if self._kind == "classifier":
            return out[:, 0].copy()
        return np.abs(out[:, 0] - z[:, -1, self._target])
