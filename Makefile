# Fresh machine: `make demo` (end-to-end on the built-in tiny checkpoint) and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml scripts/bootstrap.sh
	PY=$(PY) VENV=$(VENV) bash scripts/bootstrap.sh
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py --out demo_out

test: $(STAMP)
	$(BIN)/ruff check tts_awq tests scripts
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check tts_awq tests scripts

bench: $(STAMP)
	$(BIN)/python scripts/bench_quantize.py

clean:
	rm -rf $(VENV) demo_out
