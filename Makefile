# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-all lint bench clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# The face search page's test drives Debian's chromium through Playwright; nothing downloads a browser.
browser:
	command -v chromium >/dev/null || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

lint: $(STAMP)
	$(BIN)/ruff check backbone tasks tests benchmarks scripts

bench: $(STAMP)
	$(BIN)/python benchmarks/backbone_speed.py
	$(BIN)/python benchmarks/detection_speed.py
	$(BIN)/python benchmarks/search_speed.py

clean:
	rm -rf runs data .pytest_cache
