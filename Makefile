# Two entry points, each of which sets everything up first (see README.md).
UV := .tools/bin/uv

.PHONY: demo test setup browser bench bench-http bench-agreements bench-popular-party lint bench-peer bench-initial-sync bench-memory
# Root installs Debian packages itself; anyone else through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

demo: setup
	$(UV) run lianxin demo

test: setup browser
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy
	$(UV) run pytest

bench: setup
	$(UV) run python -m bench.apply_changes

bench-agreements: setup
	$(UV) run python -m bench.agreements

bench-popular-party: setup
	$(UV) run python -m bench.popular_party

bench-http: setup
	$(UV) run python -m bench.http_sync
bench-console: setup ; $(UV) run python -m bench.console

# Installs pouchdb-server with npm into .tools/pouchdb on first use (minutes: leveldown compiles).
bench-peer: setup
	$(UV) run python -m bench.peer

bench-initial-sync: setup
	$(UV) run python -m bench.initial_sync

# Builds an office of 1,000,000 cases first (long); --store DIR keeps it for the next run.
bench-memory: setup
	$(UV) run python -m bench.memory

setup: $(UV)
	$(UV) sync --frozen --quiet

# The console's browser tests drive Debian's Chromium (Playwright never downloads one),
# with CJK fonts so the Chinese pages render (and their screenshots read).
browser:
	@command -v chromium >/dev/null && fc-list :lang=zh | grep -q . || { \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		$(SUDO) apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; }

.tools/bin/uv:
	python3 -m pip install --quiet --target .tools/uv-pkg "uv==0.13.9"
	mkdir -p .tools/bin && ln -sf ../uv-pkg/bin/uv .tools/bin/uv
