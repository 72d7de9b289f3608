.PHONY: bootstrap test lint demo bench clean

VENV := .venv
PY := $(VENV)/bin/python

bootstrap:
	sh scripts/bootstrap.sh

lint: bootstrap
	$(VENV)/bin/ruff check src tests bench

test: bootstrap lint
	$(PY) -m pytest -q

demo: bootstrap
	$(PY) demo/run.py

bench: bootstrap
	$(PY) bench/esp_bench.py
	$(PY) bench/spd_bench.py
	$(PY) bench/ike_bench.py
	$(PY) bench/ke_bench.py
	$(PY) bench/tunnel_bench.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
