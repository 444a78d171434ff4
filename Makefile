# mobileo-deploy: set-up, tests and parity reports.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PYTEST  := $(PY) -m pytest
SWIFT_PKG := ios_bridge/swift
# torch and torchvision must come from the same build (PyPI's): a machine-wide pip config
# or find-links pointing at other torch wheels would mix builds, so both are ignored here.
unexport PIP_FIND_LINKS
export PIP_CONFIG_FILE := /dev/null
# MLX's Linux wheel bundles the reference BLAS; Debian's OpenBLAS is ~14x faster.
OPENBLAS := $(firstword $(wildcard /usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3))
WITH_BLAS := $(if $(OPENBLAS),LD_PRELOAD=$(OPENBLAS))
export PYTHONUNBUFFERED := 1
# hypothesis: CI (CI=true, as .ci/run runs) the derandomised `ci` profile, the same examples every
# run; local runs the `explore` profile, new examples each run (tests/conftest.py)
export HYPOTHESIS_PROFILE ?= $(if $(CI),ci,explore)

.PHONY: setup system-packages test test-quick test-python swift-test swift-bench swift-test-coreml parity parity-full convert-full \
        full-checkpoint bench demo clean bench-batch

setup: system-packages $(VENV)/.installed

system-packages:
	@if [ "$$(uname)" = Linux ] && command -v apt-get >/dev/null && ! dpkg -s libopenblas0-pthread >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libopenblas0-pthread; } \
	  || echo "setup: could not install libopenblas0-pthread (optional: MLX on Linux is ~14x slower without it)"; \
	fi
	@if [ "$$(uname)" = Linux ] && command -v apt-get >/dev/null && ! dpkg -s chromium-driver >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; } \
	  || echo "setup: could not install chromium and chromium-driver (the server page's browser test is skipped without them)"; \
	fi

# the interpreter that makes the venv: `make setup PYTHON=python3.12` (Apple's python3 is 3.9)
PYTHON_CHECK = import sys; v = sys.version_info; sys.exit(0 if v >= (3, 10) else \
  f"setup: {sys.executable} is Python {v.major}.{v.minor}; mobileo-deploy needs 3.10 or newer. Fix: " \
  "make setup PYTHON=python3.12 (any Python >= 3.10; remove $(VENV) first if it was made with an older one)")

$(VENV)/.installed: pyproject.toml
	@if ! test -x $(PY); then \
	  command -v $(PYTHON) >/dev/null || { echo "setup: no $(PYTHON) on PATH. Fix: make setup PYTHON=/path/to/python3.10+"; exit 1; }; \
	  $(PYTHON) -c '$(PYTHON_CHECK)' && $(PYTHON) -m venv $(VENV); \
	fi
	@$(PY) -c '$(PYTHON_CHECK)'
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[convert,dev,server]"
	$(PY) tests/tools/check_setup.py
	touch $@

# Swift first, so that the run closes on pytest's summary and the parity table
test: swift-test test-python

test-python:
	$(WITH_BLAS) $(PYTEST) -q

# the inner loop (<= 3 min on 2 cores): everything but the tests marked slow or full
test-quick:
	$(WITH_BLAS) $(PYTEST) -q -m "not slow and not full"

# golden vectors (sampler, token sampling, real-Qwen tokenizer ids, manifest, fake-runner pipeline) are
# written by Python into the gitignored $(GOLDEN) and checked by `swift test`; off macOS
# the Core ML runner runs against a functional Core ML stand-in (ios_bridge/swift/Tools)
GOLDEN := build/golden
# Swift 6 language mode (Package.swift) with warnings as errors, for the library, the tests and
# the app-shaped consumer (MobileOAppTests); the flag stays out of Package.swift so that apps
# can depend on the package
SWIFT_STRICT := -Xswiftc -warnings-as-errors
swift-test:
	@if command -v swift >/dev/null; then \
	  mkdir -p $(dir $(GOLDEN)) && \
	  $(WITH_BLAS) $(PY) -m coreml_convert --model demo --out $(GOLDEN)-conversion --components mcp dit vae_decoder \
	    > $(GOLDEN)-conversion.log 2>&1 || { tail -20 $(GOLDEN)-conversion.log; exit 1; }; \
	  $(WITH_BLAS) $(PY) tests/tools/golden.py $(GOLDEN) --export $(GOLDEN)-conversion && \
	  $(PY) tests/tools/swift_docs.py $(SWIFT_PKG)/Sources/MobileO && \
	  cd $(SWIFT_PKG) && swift build --build-tests $(SWIFT_STRICT) && \
	  MOBILEO_GOLDEN_DIR=$(CURDIR)/$(GOLDEN) swift test --disable-swift-testing $(SWIFT_STRICT) && \
	  MOBILEO_GOLDEN_DIR=$(CURDIR)/$(GOLDEN) ./Tools/typecheck-coreml.sh; \
	else echo "swift-test: no Swift toolchain on this machine, skipped"; fi

# CoreMLRunner end to end on the Core ML stand-in with every demo bundle (llm and vision_encoder
# included: ~1.5 min more conversion than swift-test, so not in `make test`): generate through
# llm + mcp + dit + vae_decoder, understand through vision_encoder + llm (prefill, decode,
# KV-cache state), edit through all five and a text chat must equal Python's run of the same
# bundles on the numpy MIL executor
swift-test-coreml:
	$(WITH_BLAS) $(PY) -m coreml_convert --model demo --out $(GOLDEN)-conversion-all > $(GOLDEN)-conversion-all.log 2>&1 \
	  || { tail -20 $(GOLDEN)-conversion-all.log; exit 1; }
	$(WITH_BLAS) $(PY) tests/tools/golden.py $(GOLDEN)-all --export $(GOLDEN)-conversion-all
	cd $(SWIFT_PKG) && MOBILEO_GOLDEN_DIR=$(CURDIR)/$(GOLDEN)-all ./Tools/typecheck-coreml.sh

# token-sampling speed in release (ms/token over 151,936 logits; not a test)
swift-bench:
	cd $(SWIFT_PKG) && swift run -c release MobileOBench

# component-by-component and end-to-end parity report (tiny + reduced full-width configs)
parity: test-python

# the same at the real sizes; writes a full-size random checkpoint first
parity-full: full-checkpoint
	MOBILEO_FULL_CHECKPOINT=checkpoints/full $(WITH_BLAS) $(PYTEST) -q -m full -o addopts=""

full-checkpoint: checkpoints/full/model.safetensors.index.json
checkpoints/full/model.safetensors.index.json:
	$(PY) -m weights.loading.synthetic checkpoints/full --preset full

# every component with its default compression recipe (COMPRESS=none: fp16 weights, into build/full-none)
COMPRESS ?= default
convert-full: full-checkpoint
	$(PY) -m coreml_convert --model checkpoints/full --out build/full$(if $(filter default,$(COMPRESS)),,-$(COMPRESS)) --compress $(COMPRESS)

# MLX (-q 4 folder, low memory, float) vs the torch reference, load, decode tok/s vs mlx-lm, each in
# its own process, at full size; table + build/bench.json (not part of CI; tests/test_bench.py runs --quick)
bench: full-checkpoint
	$(WITH_BLAS) $(PY) tests/tools/bench.py --model checkpoints/full $(BENCH_ARGS)

demo:
	$(PY) -m mlx_model.generate "a red cup" --model demo

clean:
	rm -rf build $(SWIFT_PKG)/.build

# batch generation throughput, 1 vs 2 processes under mlx.launch --backend ring (demo model);
# table + build/bench-batch.json; BENCH_BATCH_ARGS="--size 256 --procs 1 2 --blas-threads 1"
bench-batch:
	$(WITH_BLAS) $(PY) tests/tools/bench_batch.py $(BENCH_BATCH_ARGS)
