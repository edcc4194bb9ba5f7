"""What the gRPC and the REST front of the local server share: the request
error, TF Serving's output encoding, and the signature lookup.

Apart from serving/server.py so that serving/rest.py needs nothing of the
server itself (no import cycle).
"""
from __future__ import annotations

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from tfx_transfer.serving import signatures as sigs

DEFAULT_SIGNATURE = sigs.SERVING_DEFAULT  # what TF Serving uses when the request names none


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


# TF Serving answers Predict with Tensor::AsProtoField (servables/tensorflow/
# predict_util.cc, PostProcessPredictionResult under its default option
# kAsProtoField): the values go into the dtype's repeated field, never into
# tensor_content, so a client reading float_val gets them.
_PROTO_FIELDS = {
    np.dtype(np.float32): "float_val", np.dtype(np.float64): "double_val",
    np.dtype(np.int8): "int_val", np.dtype(np.int16): "int_val", np.dtype(np.int32): "int_val",
    np.dtype(np.uint8): "int_val", np.dtype(np.uint16): "int_val",
    np.dtype(np.int64): "int64_val", np.dtype(np.uint32): "uint32_val",
    np.dtype(np.uint64): "uint64_val", np.dtype(np.bool_): "bool_val",
}


def as_proto_field(value) -> tensor_pb2.TensorProto:
    """An output array as TF Serving encodes it (see _PROTO_FIELDS)."""
    value = np.asarray(value)
    if value.dtype.kind in "OSU":
        dtype, field = types_pb2.DT_STRING, "string_val"
        values = [v if isinstance(v, bytes) else str(v).encode() for v in value.reshape(-1)]
    elif value.dtype == np.float16:  # half_val holds the bits
        dtype, field, values = types_pb2.DT_HALF, "half_val", value.view(np.uint16).reshape(-1)
    elif value.dtype in _PROTO_FIELDS:
        import tensorflow as tf

        dtype = tf.as_dtype(value.dtype).as_datatype_enum
        field, values = _PROTO_FIELDS[value.dtype], value.reshape(-1)
    else:
        import tensorflow as tf

        return tf.make_tensor_proto(value)
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for d in value.shape:
        proto.tensor_shape.dim.add(size=d)
    getattr(proto, field).extend(values.tolist() if isinstance(values, np.ndarray) else values)
    return proto



def signature_of(loaded, name: str):
    """(name, SignatureDef) of a loaded version; FAILED_PRECONDITION when it has none such."""
    name = name or DEFAULT_SIGNATURE
    if name not in loaded.signature_defs:
        # FAILED_PRECONDITION as TF Serving's RunPredict (servables/tensorflow/predict_util.cc).
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"Serving signature key \"{name}\" not found in version "
                           f"{loaded.version}; it has: "
                           f"{', '.join(sorted(loaded.signature_defs))}")
    return name, loaded.signature_defs[name]
