"""What the three Python-backend models (`policy`, `reward`, `dynasor`) share at the Triton door:
their config parameters, text inputs decoded (refusals name the field), final error responses and
metrics. `triton_python_backend_utils` exists only inside the stub, so it is imported where used
and the text helpers stay unit-testable."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from scheduler_backend.errors import RequestError


def parameters(args: Mapping[str, str]) -> dict[str, str]:
    """The model's config.pbtxt `parameters`, key to string value, from `initialize`'s args."""
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def text(value: Any, field: str) -> str:
    """A STRING element as text; RequestError naming `field` when it is not UTF-8 or not a string."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"{field}: not valid UTF-8") from None
    if isinstance(value, str):
        return value
    raise RequestError(f"{field}: expected a string, got {type(value).__name__}")


def scalar_input(request: Any, name: str) -> Any:
    """The one element of an optional input tensor, or None when the request left it out."""
    import triton_python_backend_utils as pb_utils

    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = np.asarray(tensor.as_numpy()).reshape(-1)
    if values.size != 1:
        raise RequestError(f"{name}: expected one element, got {values.size}")
    return values[0]


def send_error(sender: Any, message: str, code: Any = None) -> None:
    """The request's final response: an error (INTERNAL unless `code` says otherwise)."""
    import triton_python_backend_utils as pb_utils

    error = pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL if code is None else code)
    sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


class Metrics:
    """Metric families on Triton's metrics port, labelled by model; one metric per label set,
    made on first use. A family must outlive its metrics, so every family is kept here."""

    def __init__(self, model: str, families: Sequence[tuple[str, str, str]]):
        """`families`: (name, help text, "gauge" | "counter" | "histogram")."""
        import triton_python_backend_utils as pb_utils

        kinds = {"gauge": pb_utils.MetricFamily.GAUGE, "counter": pb_utils.MetricFamily.COUNTER,
                 "histogram": pb_utils.MetricFamily.HISTOGRAM}
        self.labels = {"model": model}
        self._families = {name: pb_utils.MetricFamily(name, doc, kinds[kind]) for name, doc, kind in families}
        self._metrics: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}

    def metric(self, family: str, labels: Mapping[str, str] | None = None, **kw: Any) -> Any:
        """The family's metric for these labels (histograms take `buckets=`)."""
        key = (family, tuple(sorted((labels or {}).items())))
        if key not in self._metrics:
            self._metrics[key] = self._families[family].Metric({**self.labels, **(labels or {})}, **kw)
        return self._metrics[key]

    def count(self, family: str, labels: Mapping[str, str] | None = None, value: float = 1) -> None:
        self.metric(family, labels).increment(value)
