# The front door. `make run` starts a working daemon; `make test` runs the whole suite.
# Both install what they need: SoftHSM2 (apt-get, as root), the virtual environment, generated code.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PROTOS := $(wildcard proto/hsmd/v1/*.proto)
GEN    := hsmd/v1/__init__.py
SOFTHSM_LIB := /usr/lib/softhsm/libsofthsm2.so
# google/rpc/status.proto (batch results carry a google.rpc.Status), from googleapis-common-protos.
GOOGLE_PROTOS = $(shell $(BIN)/python -c 'import google.rpc, pathlib; print(pathlib.Path(google.rpc.__path__[0]).parents[1])')

.PHONY: run test lint proto softhsm dev bench clean

run: dev
	$(BIN)/hsmd init --dir var
	$(BIN)/hsmd serve --config var/hsmd.toml

test: dev lint
	$(BIN)/pytest -q

lint: dev
	$(BIN)/ruff check hsmd client tests bench
	$(BIN)/ruff format --check hsmd client tests bench
	$(BIN)/mypy hsmd client/hsmclient
	$(BIN)/lint-imports

proto: $(GEN)

dev: softhsm $(VENV)/.installed $(GEN)

softhsm: $(SOFTHSM_LIB)

$(SOFTHSM_LIB):
	@command -v apt-get >/dev/null || { echo "SoftHSM2 is missing and apt-get is not available; install softhsm2" >&2; exit 1; }
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[daemon,dev,lab]'
	touch $@

$(GEN): $(PROTOS) $(VENV)/.installed
	mkdir -p hsmd/v1
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iproto -I$(GOOGLE_PROTOS) \
		--python_out=. --grpc_python_out=. \
		--mypy_out=. --mypy_grpc_out=. $(PROTOS)
	touch $@

# Speed, as ratios to the raw token rate measured in the same run; never fails on timing.
bench: dev $(VENV)/.bench-installed
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.checkpoint
	$(BIN)/python -m bench.isolation
	$(BIN)/python -m bench.audit_index

$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[daemon,dev,bench]'
	touch $@

clean:
	rm -rf $(VENV) hsmd/v1 .pytest_cache .mypy_cache .ruff_cache
