"""One vLLM AsyncLLM inside a Triton Python model, shared by `policy` (generation) and `reward`
(pooling): the engine on an asyncio loop in its own thread (as the official Triton vLLM backend
does), machine-aware settings, a readiness gauge, and an engine rebuilt when its process dies while
the server keeps serving. The model's `execute` only hands requests to the loop (`submit`).

`triton_python_backend_utils` exists only inside the stub: it is imported where used.
"""
from __future__ import annotations

import asyncio
import os
import threading
import traceback
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future
from typing import Any

from engines.engine_settings import settings_for_this_machine
from serving.triton_model import Metrics

ENGINE_METRICS = (
    ("dynasor_engine_unfinished_requests", "Requests inside the vLLM engine (running or waiting)", "gauge"),
    ("dynasor_engine_requests_in_flight", "Triton requests this model is serving", "gauge"),
    ("dynasor_engine_deaths_total", "Times the vLLM engine process died", "counter"),
    ("dynasor_engine_ready", "1 while the engine serves, 0 while it is rebuilt (Triton's model readiness cannot show it)", "gauge"),
    ("dynasor_engine_requests_total", "Requests by outcome", "counter"),
)


def resolve_model_path(model: str, model_dir: str) -> str:
    """A relative `model` in model.json names a folder under $DYNASOR_MODELS_DIR (the launcher sets
    it), else under <repository>/../models; anything else (absolute path, HF id) passes through."""
    if os.path.isabs(model):
        return model
    roots = [os.environ.get("DYNASOR_MODELS_DIR", ""), os.path.join(model_dir, "..", "..", "models")]
    for root in roots:
        candidate = os.path.join(root, model)
        if root and os.path.isdir(candidate):
            return os.path.abspath(candidate)
    return model


class EngineHost:
    """Starts, watches and stops one AsyncLLM for the Triton model `name`.

    `on_ready(engine)` runs each time an engine (first or rebuilt) is up, before requests reach it;
    `give_up()` unloads the model when the engine cannot be rebuilt (or restarts are off)."""

    def __init__(self, name: str, engine_args: Mapping[str, Any], metrics: Metrics, *, restart: bool,
                 give_up: Callable[[], None], on_ready: Callable[[Any], None] | None = None):
        import triton_python_backend_utils as pb_utils

        self.name = name
        self.logger = pb_utils.Logger
        settings = settings_for_this_machine(dict(engine_args))
        self.engine_args = settings.engine_args
        os.environ.update(settings.env)  # read by the engine process it spawns
        self.logger.log_info(f"[{name}] engine settings for this machine: {settings.describe()}")
        self.metrics = metrics
        self.restart = restart
        self._give_up = give_up
        self._on_ready = on_ready
        self.engine: Any = None
        self.in_flight: dict[str, asyncio.Task] = {}
        self._rebuild: asyncio.Future | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.submit(self._start()).result()
        self._monitor = self.submit(self._watch())

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Future:
        """Run `coro` on the engine's loop (from any thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def _start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        # Built off the loop: a restart takes a minute or more, and the loop must keep answering
        # "engine is restarting" at once meanwhile rather than hold every request.
        engine = await asyncio.get_running_loop().run_in_executor(
            None, lambda: AsyncLLM.from_engine_args(AsyncEngineArgs(**self.engine_args)))
        if self._on_ready is not None:
            self._on_ready(engine)
        self.engine = engine
        self.logger.log_info(f"[{self.name}] engine ready: {self.engine_args['model']}")

    async def _watch(self) -> None:
        """Notice a dead engine even when no request is in flight, and rebuild it."""
        while True:
            await asyncio.sleep(0.5)
            engine = self.engine
            self.metrics.metric("dynasor_engine_ready").set(0 if engine is None else 1)
            if engine is None:
                continue
            self.metrics.metric("dynasor_engine_unfinished_requests").set(engine.get_num_unfinished_requests())
            self.metrics.metric("dynasor_engine_requests_in_flight").set(len(self.in_flight))
            if engine.errored:
                self.engine_died(engine)

    def engine_died(self, engine: Any) -> None:
        """The first to notice a dead engine counts it and starts its replacement; later ones no-op,
        so the in-flight request that saw EngineDeadError and the watcher agree on one death."""
        if self.engine is not engine:
            return
        self.logger.log_error(f"[{self.name}] vLLM engine died")
        self.engine = None
        self.metrics.count("dynasor_engine_deaths_total")
        self._rebuild = asyncio.ensure_future(self._replace(engine))

    async def _replace(self, engine: Any) -> None:
        engine.shutdown()
        if not self.restart:
            self._give_up()
            return
        try:
            await self._start()
        except Exception:
            self.logger.log_error(f"[{self.name}] engine restart failed: {traceback.format_exc()}")
            self._give_up()

    def stop(self) -> None:
        """Cancel what is in flight, wait for a rebuild under way, stop the loop and the engine:
        nothing the engine spawned outlives the model."""
        self.logger.log_info(f"[{self.name}] finalize: stopping the engine")

        async def stop() -> None:
            for task in list(self.in_flight.values()):
                task.cancel()
            self._monitor.cancel()
            if self._rebuild is not None:
                # A replacement engine still starting would outlive the server: let it finish, then stop it.
                await asyncio.wait([self._rebuild], timeout=240)
            await asyncio.sleep(0.2)

        self.submit(stop()).result(timeout=300)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
        self.logger.log_info(f"[{self.name}] engine shut down")
