# relsync — the two commands a user needs: `make demo` and `make test`.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
EBIN  := relsync/erlang/ebin
ERL_SRC := $(wildcard relsync/erlang/*.erl)
BEAMS := $(patsubst relsync/erlang/%.erl,$(EBIN)/%.beam,$(ERL_SRC))

.PHONY: setup erlang examples images arm-image lint test test-arm pytest ct demo bench soak wheel clean

setup:
	@scripts/setup.sh

# Target-side helpers, compiled once here (beams from OTP 25 load on 25-27).
erlang: setup $(BEAMS)
$(EBIN)/%.beam: relsync/erlang/%.erl relsync/erlang/relsync_target.hrl
	@mkdir -p $(EBIN)
	erlc +deterministic +debug_info -o $(EBIN) $<

examples: setup
	@examples/build.sh

# docker-otp board images (Debian packages only; starts dockerd when needed, as root).
images: setup
	@scripts/docker-engine.sh
	@targets/docker-otp/build.sh all

# The qemu-arm board's base image (Debian armhf packages; seconds when the .deb cache is warm).
arm-image: setup
	@targets/qemu-arm/build.sh >/dev/null

# The e2e suite on the emulated 32-bit ARM board, both modes (also part of `make test`).
test-arm: erlang arm-image
	@scripts/setup.sh test
	$(PY) -m pytest -rs -m arm tests/py

lint:
	@scripts/setup.sh lint
	$(VENV)/bin/ruff check relsync tests bench scripts targets
	$(VENV)/bin/ruff format --check relsync tests bench scripts targets
	$(VENV)/bin/mypy --strict relsync targets/qemu-arm/boardctl.py
	@scripts/dialyzer.sh

pytest: erlang examples
	@scripts/setup.sh test
	$(PY) -m pytest -rs tests/py

ct: erlang
	@tests/ct/run.sh

test: lint pytest ct

demo: erlang examples
	$(PY) scripts/demo.py

bench: erlang examples
	$(PY) -m bench

# Long random histories of the board model (tests/py/support/board_model.py), both modes,
# shadow trees and syncs in place; prints histories, steps and failures. Not part of `make test`.
SOAK_HISTORIES ?= 12
SOAK_STEPS ?= 25
soak: erlang examples
	@scripts/setup.sh test
	RELSYNC_MODEL_HISTORIES=$(SOAK_HISTORIES) RELSYNC_MODEL_STEPS=$(SOAK_STEPS) \
	  $(PY) -m pytest -rs -s tests/py/integration/test_model.py

# A wheel in dist/ with the helper beams, relsyncd (compiled) and the harness files. Needs
# erlc and pip only (setup.py compiles the helper): no .venv, no apt.
wheel:
	@relsyncd/build.sh
	$(or $(wildcard $(PY)),python3) -m pip wheel -q --no-deps -w dist .

clean:
	rm -rf $(EBIN) tests/ct/logs .pytest_cache .mypy_cache .ruff_cache .demo
