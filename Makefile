# Two commands on a fresh machine: `make demo` and `make test`. Both set up `.venv` first.
# The environment is installed by uv from uv.lock (exact versions, hashes); uv does not read pip's
# find-links, so a machine-local CPU-only torch wheel can never replace the registry's torch.
SHELL := /bin/bash
UV_VERSION := 0.13.9
PYTHON ?= python3
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: setup lint format test test-fast demo bench gpu-check lock clean media

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --no-input --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) uv.lock pyproject.toml packages/*/pyproject.toml apps/pyproject.toml
	$(UV) sync --frozen --all-packages --compile-bytecode --python $(PYTHON)
	touch $@

setup: $(VENV)/.synced

lock: $(UV)
	$(UV) lock

# Real test media from Debian's registry (a CC-BY-SA webcam clip of a person speaking, see packages/curation):
# fetched into the cache the curation tests look in; where apt is unavailable those tests skip with a reason.
MEDIA_CACHE := $(HOME)/.cache/cofe/forensics-samples
media:
	@if [ ! -f "$(MEDIA_CACHE)/usr/share/forensics-samples/original-files/movie2/movie-hello.mp4" ] && command -v apt-get >/dev/null; then \
		mkdir -p "$(MEDIA_CACHE)" && cd "$(MEDIA_CACHE)" && \
		{ apt-get download forensics-samples-files >/dev/null 2>&1 || \
		  { apt-get update -qq >/dev/null 2>&1 && apt-get download forensics-samples-files >/dev/null 2>&1; }; } && \
		dpkg -x forensics-samples-files_*.deb . || echo "note: test media unavailable; real-clip tests will skip"; \
	fi

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: setup lint media
	$(PY) -m pytest packages apps tests

test-fast: setup
	$(PY) -m pytest packages apps tests -m "not slow"

demo: setup
	$(VENV)/bin/cofe demo --out outputs/demo

bench: setup
	$(PY) packages/dit/benchmarks/bench_dit.py

# On a GPU machine: Triton kernels on CUDA, expert-gate and DiT bf16 numbers, an FSDP2 step of each real preset's
# 2-block slice on every local GPU (tokens/s, peak memory, MFU). On a CPU it says what it skipped.
gpu-check: setup
	$(PY) apps/benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .ruff_cache outputs
