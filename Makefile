# Two commands for a newcomer: `make demo` and `make test`. Both set up first when needed.
PY := .venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup warm demo test unit lint serve bench-slo bench-live bench-policy bench-accuracy bench-dynasor bench-scheduling bench-scheduler bench-batch bench-slo-floor bench-openai bench-cot bench-fleet bench-fleet-sim bench-reward fleet openai loadtest lock clean

setup:
	@bash scripts/setup.sh

# Recompile requirements/cpu.txt and gpu.txt from their .in lists (UPGRADE=1 moves every pin on).
lock: setup
	@bash scripts/lock.sh

# torch.compile's cache for the policy model, so the first server start does not compile (skipped
# once warm; the tests run eager and do not need it).
warm: setup
	$(PY) -m serving.compile_cache

demo: warm
	$(PY) -m benchmarks.demo

test: setup
	$(PY) -m pytest tests/unit tests/integration -v -p no:cacheprovider --durations=15

unit: setup
	$(PY) -m pytest tests/unit -q -p no:cacheprovider

# ruff over everything; mypy over the packages (strict for scheduler_backend, see pyproject.toml).
lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy scheduler_backend engines serving client frontends benchmarks loadtest

serve: warm
	.venv/bin/dynasor serve

# The server with its OpenAI-compatible API on OPENAI_PORT (docs/openai.md).
OPENAI_PORT ?= 9000
openai: warm
	.venv/bin/dynasor serve --openai-port $(OPENAI_PORT)

# The live server against trace replay on held-out questions, and the default allocation against
# the uniform budget on problems it was not fitted on (real server, Qwen; about 15 minutes on 2 cores).
bench-live: warm
	$(PY) -m benchmarks.bench_live

bench-policy: warm
	$(PY) -m benchmarks.bench_policy

bench-accuracy: warm
	$(PY) -m benchmarks.bench_accuracy

bench-dynasor: warm
	$(PY) -m benchmarks.bench_dynasor

bench-scheduling: warm
	$(PY) -m benchmarks.bench_scheduling

# SLO attainment under load, dynasor against the baseline (fixed-n self-consistency straight to policy):
# real-server rate and SLO-scale sweeps with Locust (about 55 minutes on 2 cores), then the simulator
# checked against them and run at scale: docs/results/slo_*.png and slo.md.
bench-slo: warm
	$(PY) -m benchmarks.bench_slo
	$(PY) -m loadtest.slo_report

# SLO sweeps at a quality floor, code and math (100 programs a point), then the report: about 70
# minutes on 2 cores. The first math sweep without a floor (runs/slo/real.json) is `bench-slo`'s.
bench-slo-floor: warm
	$(PY) -m benchmarks.bench_slo --workload code --rates 0.2,0.4 --slo-scales 2 --scale-sweep-rate 0.2 --programs 100 --floor 2 --out runs/slo/code.json
	$(PY) -m benchmarks.bench_slo --workload code --systems baseline --rates 0.1 --slo-scales 2 --scale-sweep-rate 0.1 --programs 100 --floor 2 --out runs/slo/code.json
	$(PY) -m benchmarks.bench_slo --workload math --rates 0.25 --slo-scales 2 --scale-sweep-rate 0.25 --programs 100 --floor 2 --out runs/slo/math.json
	$(PY) -m loadtest.slo_report

# The OpenAI front's cost: the same self-consistency load through it and straight through gRPC.
bench-openai: warm
	$(PY) -m benchmarks.bench_openai

# Dynasor-CoT over chat: tokens saved at equal accuracy on GSM8K chains of thought (replayed presets).
bench-cot: warm
	$(PY) -m benchmarks.bench_cot

# Two SmolLM2 replicas behind HAProxy: their engine measured side by side, then Locust with one drained
# mid-load and one SIGKILLed, 240 s of load each (about 20 minutes); then the simulator's two replicas on the same load.
bench-fleet: setup
	$(PY) -m benchmarks.bench_fleet
	$(PY) -m loadtest.fleet_agreement

# The default Qwen model as a step-tag process reward model (its own pooling engine) beside the judge:
# served memory of both, Rebase and MCTS traces scored by it, rank agreement with the judge (about 8 minutes).
bench-reward: warm
	$(PY) -m benchmarks.bench_reward

# Simulated GPU fleets (1-8 replicas of the GPU preset), balanced per program against per request (about 19 minutes on 2 cores).
bench-fleet-sim: setup
	$(PY) -m loadtest.fleet_scaling

# N replicas behind HAProxy on this machine (docs/fleet.md).
REPLICAS ?= 2
fleet: warm
	.venv/bin/dynasor fleet --replicas $(REPLICAS)

bench-scheduler: setup
	$(PY) -m benchmarks.bench_scheduler

# Allocation policies replayed on the committed traces: docs/results/*.png and batch.md, no engine.
bench-batch: setup
	$(PY) -m benchmarks.bench_batch

# A short headless load test (Locust) against a server you started yourself (`make serve`, or
# `.venv/bin/dynasor serve` / `tritonserver`): LOAD_GRPC and LOAD_HTTP say where it listens. All three
# user classes at LOAD_RATE programs/s each; Locust's CSV and HTML plus the SLO summary go to runs/.
# A missed SLO is a Locust failure, so failures do not fail the target (--exit-code-on-error 0).
LOAD_GRPC ?= 127.0.0.1:8001
LOAD_HTTP ?= 127.0.0.1:8000
LOAD_TIME ?= 120s
LOAD_RATE ?= 0.05
LOAD_ARGS ?= --base-deadline-s 60 --slo-scale 1
loadtest: setup
	@mkdir -p runs
	PYTHONPATH=. .venv/bin/locust -f loadtest/locustfile.py --headless --only-summary -u 3 -r 3 -t $(LOAD_TIME) \
	    --grpc-url $(LOAD_GRPC) --http-url $(LOAD_HTTP) --program-rate $(LOAD_RATE) $(LOAD_ARGS) --exit-code-on-error 0 \
	    --csv runs/loadtest --html runs/loadtest.html --summary-json runs/loadtest_summary.json

clean:
	rm -rf .venv models
