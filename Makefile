# make install | test | test-all | lint | browser | demo
# PYTHON picks the interpreter (a venv's python, say); everything is installed into its environment.
PYTHON ?= python3
# Where the test harness keeps ComfyUI unless FLASH_VAED_COMFYUI says otherwise.
export FLASH_VAED_COMFYUI ?= $(CURDIR)/.cache/comfyui
# Extra pytest arguments, e.g. make test PYTEST_ARGS="-k harness -x"
PYTEST_ARGS ?=

# pip runs again only when the package metadata changes (one stamp per interpreter environment).
ENV_ID := $(shell $(PYTHON) -c 'import sys; print(sys.prefix)' 2>/dev/null | cksum | cut -d' ' -f1)
PIP_STAMP := .cache/pip-install-$(ENV_ID)

.PHONY: install install-test test test-all lint browser demo

$(PIP_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m pip install -e ".[test,dev]" -c constraints.txt
	@mkdir -p $(@D) && touch $@

install: $(PIP_STAMP)
	PYTHON=$(PYTHON) tests/harness/install.sh

# the frontend tests drive Debian's chromium through playwright (apt needs root: CI and dev boxes are), under
# the frontend ComfyUI bundles and under the newest one, pinned and installed into .cache/frontends/
install-test: install
	PYTHON=$(PYTHON) tests/harness/install_browser.sh
	PYTHON=$(PYTHON) tests/harness/install_frontend.sh

# The project's test command. Tests that need the real ComfyUI fail (not skip) when it is missing.
test: install-test
	FLASH_VAED_REQUIRE_COMFY=1 $(PYTHON) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install-test
	FLASH_VAED_REQUIRE_COMFY=1 $(PYTHON) -m pytest $(PYTEST_ARGS)

lint: $(PIP_STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

browser:
	PYTHON=$(PYTHON) tests/harness/install_browser.sh

demo: install
	$(PYTHON) -m training.demo
