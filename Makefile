# hookrelay — `make help` lists the targets.
SHELL := bash
.DEFAULT_GOAL := help
.PHONY: help run test conformance bench bench-history lint fmt openapi stop-db clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' \
		'{ name[NR] = $$1; text[NR] = $$2; if (length($$1) > width) width = length($$1) } \
		END { fmt = "  make %-" width "s  %s\n"; for (i = 1; i <= NR; i++) printf fmt, name[i], text[i] }'

run: ## build and start `hookrelay serve` on 127.0.0.1:8080 (private PostgreSQL unless DATABASE_URL is reachable)
	@scripts/run.sh

test: ## provision a throwaway PostgreSQL, run every test of the workspace, then `make conformance`
	@scripts/test.sh

conformance: ## schemathesis (pinned, in .data/venv) against the running service's OpenAPI document
	@scripts/conformance.sh

bench: ## benchmarks (release build, private PostgreSQL, built-in receiver): table + target/bench/report.json
	@scripts/bench.sh

bench-history: ## fill a bench database with 10 M delivered rows, for `BENCH_PHASES=history make bench`
	@scripts/bench-history.sh

lint: ## formatting and clippy, warnings as errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

openapi: ## regenerate openapi/openapi.json from the code
	cargo run -q -p hookrelay --bin hookrelay -- openapi > openapi/openapi.json

fmt: ## format the code
	cargo fmt --all

stop-db: ## stop the private PostgreSQL clusters under .data/ (Citus's too)
	@scripts/pg.sh stop
	@scripts/citus.sh stop

clean: stop-db ## stop the clusters and delete .data/ (all local data) and target/
	rm -rf .data target
