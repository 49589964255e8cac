# The two commands that matter on a fresh machine:
#   make demo   the bot in console mode against a seeded moto_server (no Slack, no AWS account)
#   make test   everything CI runs: vet, and all tests with the race detector (starts moto itself)
GO ?= go

.PHONY: demo test build vet bench bench-backup bench-failover bench-report fuzz

build:
	$(GO) build -o bin/bot ./cmd/bot

demo: build
	$(GO) run ./cmd/sandbox -- ./bin/bot console

vet:
	$(GO) vet ./...

test: vet
	$(GO) test -race -count=1 ./...

bench-backup:
	$(GO) run ./bench/backup

bench-failover:
	$(GO) run ./bench/failover

bench-report:
	$(GO) run ./bench/report

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./internal/slackio/

fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=60s ./internal/commands/
