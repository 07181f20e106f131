"""Shared helpers for the model training scripts in models/.

Small on purpose; only what more than one script needs or what must match the agent exactly:

* ``load_skab`` / ``skab_labelled_files``: read SKAB csv files (``;``-separated, ``datetime`` column).
* ``zscore_fit``: the agent's on-site normalisation fit (population std, floored like the agent does).
* ``set_seed``: seed python ``random``, numpy and TensorFlow in one call.
* ``convert_int8``: full-integer int8 TFLite conversion (int8 input AND output tensors).
* ``TfliteRunner``: run a .tflite on float rows the way the agent does (quantise input, dequantise output).

TensorFlow is imported lazily so the module can be imported without it (e.g. from the runtime venv,
where ``TfliteRunner`` falls back to ``ai_edge_litert`` / ``tflite_runtime``).
"""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import numpy as np

SKAB_CHANNELS = [
    "Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure",
    "Temperature", "Thermocouple", "Voltage", "Volume Flow RateRMS",
]


# --------------------------------------------------------------------------- data
def load_skab(path):
    """Return ``(df, X)`` for one SKAB csv: the DataFrame (datetime index, labels if present)
    and the float64 array of the 8 sensor channels in ``SKAB_CHANNELS`` order (file row order)."""
    import pandas as pd

    df = pd.read_csv(path, sep=";", parse_dates=["datetime"])
    X = df[SKAB_CHANNELS].to_numpy(dtype=np.float64)
    return df, X


def skab_labelled_files(data_dir):
    """Sorted list of the labelled SKAB files under ``data_dir`` (valve1/*.csv, other/*.csv, ...),
    numeric order within each folder; anomaly-free/ is excluded."""
    data_dir = Path(data_dir)
    out = []
    for sub in sorted(p for p in data_dir.iterdir() if p.is_dir() and p.name != "anomaly-free"):
        files = sorted(sub.glob("*.csv"), key=lambda p: (len(p.stem), p.stem))
        out.extend(files)
    return out


def zscore_fit(X):
    """Per-channel mean and population std (ddof=0) of ``X`` (rows x channels), std floored at
    1e-6 * max(1, |mean|) -- exactly the agent's on-site fit (models/README.md, sidecar contract)."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    std = np.maximum(std, 1e-6 * np.maximum(1.0, np.abs(mean)))
    return mean, std


# --------------------------------------------------------------------------- training
def set_seed(seed):
    """Seed python, numpy and TensorFlow (``tf.keras.utils.set_random_seed``) and ask TF for
    deterministic ops. Call before building the model."""
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # older TF
        pass


def convert_int8(model, representative, batch_size=1):
    """Convert a Keras model to a full-integer int8 TFLite flatbuffer (bytes).

    ``representative``: float32 array (samples x features...) fed one sample at a time for the
    activation ranges; use >= 4096 samples that cover the real input range (normal AND abnormal
    values), otherwise out-of-range inputs saturate. The input and output tensors are int8
    (``inference_input_type = inference_output_type = tf.int8``), ops restricted to
    ``TFLITE_BUILTINS_INT8``. The input shape is fixed to ``batch_size`` (1 for the agent).
    """
    import tensorflow as tf

    rep = np.asarray(representative, dtype=np.float32)
    # Re-wrap with a fixed batch dimension so the interpreter reports e.g. [1, 80], not [-1, 80].
    inp = tf.keras.Input(shape=tuple(rep.shape[1:]), batch_size=batch_size, name="input")
    fixed = tf.keras.Model(inp, model(inp), name=model.name + "_b%d" % batch_size)

    def gen():
        for i in range(rep.shape[0]):
            yield [rep[i:i + 1]]

    conv = tf.lite.TFLiteConverter.from_keras_model(fixed)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = gen
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- inference
def _interpreter_class(prefer=None):
    """Interpreter class: ``prefer`` in {None, 'tf', 'litert', 'tflite_runtime'}."""
    order = [prefer] if prefer else ["litert", "tflite_runtime", "tf"]
    for name in order:
        try:
            if name == "litert":
                from ai_edge_litert.interpreter import Interpreter
            elif name == "tflite_runtime":
                from tflite_runtime.interpreter import Interpreter
            else:
                import tensorflow as tf
                Interpreter = tf.lite.Interpreter
            return Interpreter
        except ImportError:
            continue
    raise ImportError("no TFLite interpreter available")


class TfliteRunner:
    """Run a (batch 1) .tflite model on float rows, quantising/dequantising int8 tensors with the
    tensors' own scale/zero point like the agent: ``q = clip(round(x/scale)+zp, -128, 127)``,
    ``x = (q-zp)*scale``. ``model`` is a path or the flatbuffer bytes."""

    def __init__(self, model, prefer=None):
        Interpreter = _interpreter_class(prefer)
        if isinstance(model, (bytes, bytearray)):
            self.it = Interpreter(model_content=bytes(model))
        else:
            self.it = Interpreter(model_path=str(model))
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]

    @staticmethod
    def _qparams(det):
        scale, zp = det["quantization"]
        return float(scale), int(zp)

    def run(self, rows):
        """``rows``: (N, features) float array -> (N, out_features) float64 (dequantised)."""
        rows = np.asarray(rows, dtype=np.float64)
        in_shape = tuple(self.inp["shape"])
        out = np.empty((rows.shape[0], int(np.prod(self.out["shape"][1:]))), dtype=np.float64)
        s_in, zp_in = self._qparams(self.inp)
        s_out, zp_out = self._qparams(self.out)
        for i in range(rows.shape[0]):
            x = rows[i].reshape(in_shape)
            if self.inp["dtype"] == np.int8:
                x = np.clip(np.round(x / s_in) + zp_in, -128, 127).astype(np.int8)
            else:
                x = x.astype(self.inp["dtype"])
            self.it.set_tensor(self.inp["index"], x)
            self.it.invoke()
            y = self.it.get_tensor(self.out["index"]).reshape(-1)
            if self.out["dtype"] == np.int8:
                y = (y.astype(np.float64) - zp_out) * s_out
            out[i] = y
        return out
