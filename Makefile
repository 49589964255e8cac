# The two commands that matter on a fresh machine:
#   make demo   the bot in console mode against a seeded moto_server (no Slack, no AWS account)
#   make test   everything CI runs: vet, and all tests with the race detector (starts moto itself)
GO ?= go

.PHONY: demo test build vet cover bench bench-backup bench-failover bench-report bench-rto fuzz

build:
	$(GO) build -o bin/bot ./cmd/bot

demo: build
	$(GO) run ./cmd/sandbox -- ./bin/bot console

vet:
	$(GO) vet ./...

test: vet
	$(GO) test -race -count=1 -timeout 30m ./...

# The safety-critical functions of internal/ops (file:function). `make cover`
# runs the ops unit tests (small fakes, no moto) with a coverage profile,
# prints each one's statement coverage and fails if one is below COVER_MIN%
# or no longer in the profile.
COVER_FUNCS = fence.go:run fence.go:stop fence.go:wait \
	failover.go:fence failover.go:ensureFenced failover.go:move failover.go:moveIP failover.go:moveENI failover.go:moveTargets \
	restore.go:protect restore.go:checkProtected restore.go:stopOld restore.go:freeIP restore.go:launch restore.go:run \
	builders.go:replace builders.go:unsurge builders.go:ReplaceAll
COVER_MIN = 90

cover:
	@mkdir -p bin
	$(GO) test -coverprofile=bin/ops-cover.out ./internal/ops/
	@$(GO) tool cover -func=bin/ops-cover.out | awk -v want='$(COVER_FUNCS)' -v min=$(COVER_MIN) ' \
		{ f = $$1; sub(/:[0-9]+:$$/, "", f); sub(/.*\//, "", f); k = f ":" $$2 } \
		!(k in pct) || $$3 + 0 < pct[k] { pct[k] = $$3 + 0 } \
		END { n = split(want, w, " "); for (i = 1; i <= n; i++) { k = w[i]; \
			if (!(k in pct)) { printf "%-26s missing from the profile\n", k; bad++; continue } \
			low = pct[k] < min; bad += low; printf "%-26s %5.1f%%%s\n", k, pct[k], low ? "  below " min "%" : "" }; \
			if (bad) { printf "FAIL: %d of %d safety-critical functions below %d%% or missing\n", bad, n, min; exit 1 } }'

bench-backup:
	$(GO) run ./bench/backup

bench-failover:
	$(GO) run ./bench/failover

bench-report:
	$(GO) run ./bench/report

# Recovery times on the AWS timing model (motoserver.WithTiming), in
# predicted real minutes: the runbook by hand, restore by rebuild and in
# place, failover to a warm standby.
bench-rto:
	$(GO) run ./bench/rto

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./internal/slackio/

fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=60s ./internal/commands/
