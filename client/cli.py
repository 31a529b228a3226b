"""`dynasor` command line: serve the model repository, ask one question, solve a batch, record
traces, replay allocation policies on them and calibrate allocation from them, prepare models."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

DEFAULT_GRPC = "127.0.0.1:8001"


def _serve(args: argparse.Namespace, extra: list[str]) -> int:
    from serving.launcher import MODEL_REPOSITORY, OpenAIFront, start_openai_front, start_server

    srv = start_server(
        model_repository=Path(args.model_repository) if args.model_repository else MODEL_REPOSITORY,
        policy_model=args.model,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        address=args.address,
        extra_args=extra,
        engine_overrides=_engine_args(args.engine_arg),
        reward_settings=json.loads(Path(args.reward).read_text()) if args.reward else None,
        agent_port=args.agent_port,
    )
    stop = threading.Event()
    ready = False
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    front: OpenAIFront | None = None
    try:
        print(f"dynasor: policy engine settings: {srv.engine_settings}", flush=True)
        print(f"dynasor: starting tritonserver (log: {srv.log_path})", flush=True)
        srv.wait_ready(timeout_s=args.ready_timeout)
        print(f"dynasor: ready  gRPC {srv.grpc_url}  HTTP {srv.http_url}  metrics {args.address}:{srv.metrics_port}/metrics", flush=True)
        ready = True
        if args.openai_port:
            front = start_openai_front(srv.grpc_url, args.openai_port, args.address, srv.run_dir)
            front.wait_ready()
            print(f"dynasor: OpenAI-compatible API at {front.url} (log: {front.log_path})", flush=True)
        while not stop.wait(0.5):
            if srv.process.poll() is not None:
                print(f"dynasor: tritonserver exited with code {srv.process.returncode}; log {srv.log_path}", file=sys.stderr)
                return 1
            if front is not None and front.process.poll() is not None:
                print(f"dynasor: the OpenAI front exited with code {front.process.returncode}; log {front.log_path}", file=sys.stderr)
                return 1
        return 0
    except (RuntimeError, TimeoutError) as e:
        print(f"dynasor: {e}", file=sys.stderr)
        return 1
    finally:
        if ready and args.drain_grace > 0 and srv.process.poll() is None:
            _drain(srv.grpc_url, args.drain_grace)
        if front is not None:
            front.stop()
        print("dynasor: stopping tritonserver", flush=True)
        srv.stop()


def _fleet(args: argparse.Namespace) -> int:
    """`dynasor fleet`: N replicas behind HAProxy on this machine, until Ctrl-C/SIGTERM."""
    from serving.fleet import start_fleet

    fleet = start_fleet(args.replicas, args.model, args.grpc_port, args.http_port, args.stats_port,
                        engine_overrides=_engine_args(args.engine_arg))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        print(f"dynasor fleet: {args.replicas} replicas starting (logs under {fleet.run_dir})", flush=True)
        fleet.wait_ready()
        for i, r in enumerate(fleet.replicas, 1):
            print(f"dynasor fleet: replica r{i}  gRPC {r.grpc_url}  HTTP {r.http_url}  metrics 127.0.0.1:{r.metrics_port}", flush=True)
        print(f"dynasor fleet: ready behind HAProxy  gRPC {fleet.grpc_url}  HTTP {fleet.http_url}  "
              f"stats http://127.0.0.1:{fleet.stats_port}/stats", flush=True)
        stop.wait()
        return 0
    except (RuntimeError, TimeoutError) as e:
        print(f"dynasor fleet: {e}", file=sys.stderr)
        return 1
    finally:
        for r in fleet.replicas:
            if r.process.poll() is None:
                _drain(r.grpc_url, args.drain_grace)
        fleet.stop()


def _drain(url: str, grace_s: float) -> None:
    """Before stopping: no new programs, those in flight finish (or stop with their best answers
    when the grace period ends)."""
    from client.dynasor_client import DynasorClient, ProgramError

    print(f"dynasor: draining (grace {grace_s:g} s)", flush=True)
    try:
        last = DynasorClient(url, timeout_s=grace_s + 30).drain(grace_s)
        print(f"dynasor: drained ({last.details.get('programs_in_flight', 0)} programs left)", flush=True)
    except ProgramError as e:
        print(f"dynasor: drain failed ({e}); stopping anyway", file=sys.stderr, flush=True)


def _ready(args: argparse.Namespace) -> int:
    """`dynasor ready`: a Kubernetes exec readiness probe; the reasons go where kubelet shows them."""
    from client.readiness import not_ready_reasons

    reasons = not_ready_reasons(args.http, args.metrics, args.timeout)
    print("; ".join(reasons) if reasons else "ready", file=sys.stderr if reasons else sys.stdout)
    return 1 if reasons else 0


def _drain_command(args: argparse.Namespace) -> int:
    """`dynasor drain`: what a Kubernetes preStop hook runs; returns once the server is drained."""
    from client.dynasor_client import DynasorClient, ProgramError

    def show(p: Any) -> None:
        if not p.final:
            print(f"dynasor drain: {p.details.get('programs_in_flight')} programs in flight, "
                  f"{p.details.get('grace_left_s')} s of grace left", flush=True)

    try:
        DynasorClient(args.url, args.protocol, timeout_s=args.grace + 30).drain(args.grace, None if args.quiet else show)
    except ProgramError as e:
        print(f"dynasor drain: {e}", file=sys.stderr)
        return 1
    print("dynasor drain: drained, no program in flight", flush=True)
    return 0


def _engine_args(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` vLLM engine arguments; a VALUE that parses as JSON is taken as such (numbers,
    true/false), anything else as a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"dynasor serve: --engine-arg expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options = json.loads(args.options) if args.options else {}
    for key in ("budget", "deadline_s", "settle_threshold", "temperature", "max_tokens", "calibration", "prompt"):
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    return options


def _brief(answer: str | None) -> str:
    """An answer for a progress line: a program (the `code` program's answers) by its size only."""
    if answer is not None and "\n" in answer:
        return f"<program, {answer.count(chr(10)) + 1} lines>"
    return str(answer)


class ProgressLine:
    """`dynasor ask`'s progress: on a terminal one line updated in place, elsewhere a line per
    change (a program reports every second; a repeat says nothing new), nothing with --quiet."""

    def __init__(self, stream: Any = None, quiet: bool = False):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last = ""

    def show(self, p: Any) -> None:
        if self.quiet or p.final:
            return
        line = f"  ... answer={_brief(p.answer):<14} certaindex={p.certaindex:.2f}  steps={p.steps}/{p.budget}  tokens={p.tokens_used}"
        if line == self.last:
            return
        self.last = line
        self.stream.write(f"\r\033[K{line}" if self.tty else f"{line}\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line updated in place, so what follows starts on its own."""
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


def _ask(args: argparse.Namespace) -> int:
    from client.dynasor_client import DynasorClient, ProgramError

    client = DynasorClient(args.url, protocol=args.protocol)
    line = ProgressLine(quiet=args.quiet)
    try:
        result = client.solve(args.question, args.program, _options(args), on_progress=line.show)
    except ProgramError as e:
        line.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    line.close()
    if args.quiet:
        print(result.answer)
        return 0
    print(f"answer:{chr(10) if result.answer and chr(10) in result.answer else ' '}{result.answer}\ncertaindex: {result.certaindex:.3f}\nstopped: {result.stop_reason}\n"
          f"steps: {result.steps}/{result.budget}  tokens: {result.tokens_used}  latency: {result.latency_s:.1f} s")
    return 0


def _solve(args: argparse.Namespace) -> int:
    from client.batch import solve_file

    return solve_file(args.file, url=args.url, protocol=args.protocol, program=args.program, options=_options(args),
                      concurrency=args.concurrency, limit=args.limit, output=args.output)


def _program_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_GRPC, help="host:port of the server (gRPC, or HTTP with --protocol http)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--program", default=None, help="self-consistency, code, rebase, mcts, cot-probe, or a registered one")
    p.add_argument("--budget", type=int, help="cap on the program's knob (samples, expansions, iterations, chunks)")
    p.add_argument("--deadline", dest="deadline_s", type=float, help="seconds; the best answer so far is returned then")
    p.add_argument("--threshold", dest="settle_threshold", type=float, help="certaindex at which the answer counts as settled")
    p.add_argument("--temperature", type=float)
    p.add_argument("--max-tokens", dest="max_tokens", type=int, help="tokens per generation step")
    p.add_argument("--calibration", help="name of a calibration file on the server")
    p.add_argument("--prompt", help="math (step by step, answer in \\boxed{}; the default), game24 or code")
    p.add_argument("--options", help="JSON object of further program options")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dynasor", description="LLM reasoning programs served in Triton (Dynasor)")
    sub = ap.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start tritonserver with the model repository; Ctrl-C stops it",
                           epilog="Unknown arguments are passed to tritonserver.")
    serve.add_argument("--model", default=None, help="policy model: NAME under models/, a folder, or a Hugging Face id (default: model.json)")
    serve.add_argument("--model-repository", default=None)
    serve.add_argument("--reward", default=None, metavar="MODEL_JSON",
                       help="`reward`'s model.json for this run, e.g. deploy/reward/prm-qwen-step-tag.json (default: the judge)")
    serve.add_argument("--address", default="127.0.0.1", help="address for HTTP, gRPC and metrics (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--ready-timeout", type=float, default=600.0)
    serve.add_argument("--agent-port", type=int, default=0,
                       help="serve HAProxy's agent check on this port: drain state and a weight from the predicted backlog (0: not)")
    serve.add_argument("--openai-port", type=int, default=0, help="also serve the OpenAI-compatible API on this port (0: not)")
    serve.add_argument("--drain-grace", type=float, default=30.0,
                       help="on Ctrl-C/SIGTERM, seconds programs in flight get to finish before they stop with their best answers (0: none)")
    serve.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="vLLM engine argument for policy, over model.json (repeatable): dtype=float32, max_num_seqs=32")

    fleet = sub.add_parser("fleet", help="N replicas behind HAProxy on this machine (trying a fleet; the fleet tests)")
    fleet.add_argument("--replicas", type=int, default=2)
    fleet.add_argument("--model", default=None, help="policy model of every replica (default: model.json)")
    fleet.add_argument("--grpc-port", type=int, default=8001, help="the proxy's gRPC port")
    fleet.add_argument("--http-port", type=int, default=8000, help="the proxy's HTTP port")
    fleet.add_argument("--stats-port", type=int, default=8404, help="HAProxy's statistics (/stats) and Prometheus (/metrics) port")
    fleet.add_argument("--drain-grace", type=float, default=30.0)
    fleet.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE")

    drain = sub.add_parser("drain", help="drain a server: no new programs, those in flight finish (a preStop hook)")
    drain.add_argument("--url", default=DEFAULT_GRPC, help="host:port of the server (gRPC, or HTTP with --protocol http)")
    drain.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    drain.add_argument("--grace", type=float, default=30.0, help="seconds before programs still running stop with their best answers")
    drain.add_argument("--quiet", "-q", action="store_true")

    ready = sub.add_parser("ready", help="exit 0 only if the server, its engines and `dynasor` admit programs (a readiness probe)")
    ready.add_argument("--http", default="127.0.0.1:8000", help="host:port of Triton's HTTP endpoint")
    ready.add_argument("--metrics", default="127.0.0.1:8002", help="host:port of Triton's metrics endpoint")
    ready.add_argument("--timeout", type=float, default=3.0, help="seconds per HTTP request")

    ask = sub.add_parser("ask", help="run one reasoning program and show its progress")
    ask.add_argument("question")
    ask.add_argument("--quiet", "-q", action="store_true", help="print the answer only (for scripts)")
    _program_args(ask)

    solve = sub.add_parser("solve", help="run a JSONL file of questions; accuracy when it has answers")
    solve.add_argument("file", help="JSONL with 'question' (or 'problem') and optionally 'answer'")
    _program_args(solve)
    solve.add_argument("--concurrency", type=int, default=8)
    solve.add_argument("--limit", type=int, default=None, help="first N records only")
    solve.add_argument("--output", default=None, help="write one JSON result per line here")

    sub.add_parser("calibrate", help="fit allocation thresholds/curves from recorded traces", add_help=False)
    sub.add_parser("replay", help="replay every allocation policy on recorded traces: token-to-accuracy curves", add_help=False)
    sub.add_parser("record", help="record certaindex traces on the direct vLLM engine (input of calibrate and replay)", add_help=False)
    sub.add_parser("models", help="prepare the real models under models/", add_help=False)
    sub.add_parser("openai", help="the OpenAI-compatible API for a running server (--triton HOST:PORT --port PORT)", add_help=False)

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "calibrate":
        from scheduler_backend.calibrate import main as calibrate

        return calibrate(argv[1:])
    if argv and argv[0] == "replay":
        from client.replay import main as replay

        return replay(argv[1:])
    if argv and argv[0] == "record":
        from client.record import main as record

        return record(argv[1:])
    if argv and argv[0] == "openai":  # its own program (frontends/ sits above this layer): run in place
        os.execv(sys.executable, [sys.executable, "-m", "frontends.openai_server", *argv[1:]])
    if argv and argv[0] == "models":
        from serving.models import main as models

        return models(argv[1:])
    args, extra = ap.parse_known_args(argv)
    if args.command == "serve":
        return _serve(args, extra)
    if extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "drain":
        return _drain_command(args)
    if args.command == "ready":
        return _ready(args)
    if args.command == "fleet":
        return _fleet(args)
    return _ask(args) if args.command == "ask" else _solve(args)


if __name__ == "__main__":
    sys.exit(main())
