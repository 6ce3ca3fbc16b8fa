# Thin targets shared by the README, .ci/run and developers.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_VERSION := 0.3.36

.PHONY: install node-deps buf gen-es proto-baseline proto lint typecheck check test test-fast bench bench-gateway bench-load bench-scaleout bench-search bench-search-dspy demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first: this pin resolves to the CPU wheel on disk instead of a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0
	# llama.cpp without native CPU detection: a native build traps (SIGILL) on AMX here.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --quiet "llama-cpp-python[server]==$(LLAMA_VERSION)"
	$(PIP) install --quiet -e ".[server,local,dev]"
	touch $(STAMP)

# npm packages of the Node.js client and the proto tooling (buf, protoc-gen-es), from the lock.
NODE_DIR := clients/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
BUF := $(NODE_DIR)/node_modules/.bin/buf
node-deps: $(NODE_STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $@

# Lint the proto and check it against the previous release (see buf.yaml).
buf: node-deps
	$(BUF) lint
	$(BUF) breaking --against proto/baseline/a58f1f1.binpb

# TypeScript message types under gen/es (buf.gen.yaml); not checked in.
gen-es: node-deps
	$(BUF) generate

# Re-records the breaking-change baseline from a release's git ref: make proto-baseline REF=<tag>
REF ?= a58f1f1
proto-baseline: node-deps
	$(BUF) build '.git#ref=$(REF),subdir=proto' -o proto/baseline/$(REF).binpb

proto: install
	$(PY) -m grpc_tools.protoc -I proto --python_out=proto --grpc_python_out=proto \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
		--mypy_out=proto --mypy_grpc_out=proto proto/prompttune/v1/optimizer.proto

lint: install buf
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

test: install node-deps
	$(VENV)/bin/pytest -q

test-fast: install node-deps
	$(VENV)/bin/pytest -q -m "not e2e"

check: lint typecheck test

# Each benchmark prints its figures and writes JSON + Markdown under benchmarks/results/.
bench: bench-gateway bench-load bench-scaleout bench-search

bench-gateway: install
	$(PY) benchmarks/gateway_bench.py

bench-load: install
	$(PY) benchmarks/load_bench.py

bench-scaleout: install
	$(PY) benchmarks/scaleout_bench.py

# Search quality on SmolLM2 and Gemma 3 270M (about an hour per model; resumable: finished
# (model, task, method) triples are skipped). Arguments go through BENCH_SEARCH_ARGS, e.g.
# make bench-search BENCH_SEARCH_ARGS="--models smollm2 --tasks sst2". DSPy methods are not run
# by default; `make bench-search-dspy BENCH_SEARCH_ARGS="--methods dspy_bfsrs"` installs its venv.
DSPY_VENV := benchmarks/.venv-dspy
BENCH_SEARCH_ARGS ?=
bench-search: install
	$(PY) benchmarks/search_bench.py $(BENCH_SEARCH_ARGS)

bench-search-dspy: install $(DSPY_VENV)/.installed
	$(PY) benchmarks/search_bench.py $(BENCH_SEARCH_ARGS)

# DSPy lives only in its own venv; the check fails the build if it ever pulls torch.
$(DSPY_VENV)/.installed: benchmarks/requirements-dspy.txt
	test -x $(DSPY_VENV)/bin/python || python3 -m venv $(DSPY_VENV)
	$(DSPY_VENV)/bin/pip install --quiet -r benchmarks/requirements-dspy.txt
	! $(DSPY_VENV)/bin/pip show torch >/dev/null 2>&1
	touch $@

demo: install
	$(VENV)/bin/prompttune demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(NODE_DIR)/node_modules gen
