# Two entry points, each of which sets everything up first (see README.md).
UV := .tools/bin/uv

.PHONY: demo test setup bench bench-http bench-agreements lint

demo: setup
	$(UV) run lianxin demo

test: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy
	$(UV) run pytest

bench: setup
	$(UV) run python -m bench.apply_changes

bench-agreements: setup
	$(UV) run python -m bench.agreements

bench-http: setup
	$(UV) run python -m bench.http_sync

setup: $(UV)
	$(UV) sync --frozen --quiet

.tools/bin/uv:
	python3 -m pip install --quiet --target .tools/uv-pkg "uv==0.13.9"
	mkdir -p .tools/bin && ln -sf ../uv-pkg/bin/uv .tools/bin/uv
