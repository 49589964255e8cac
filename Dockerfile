# Build: docker build -t circlebot .
# Run:   docker run -v circlebot-data:/data -e SLACK_BOT_TOKEN -e SLACK_SIGNING_SECRET \
#          -v $PWD/bot.yaml:/etc/circlebot/bot.yaml:ro -p 8080:8080 circlebot
# 8080 is `listen` (Slack, /healthz). /metrics is on `metrics.listen`, by
# default 127.0.0.1:9090, which nothing outside the container reaches: to
# scrape, set metrics.listen: ":9090", BOT_METRICS_TOKEN, and publish 9090
# only to the monitoring network.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/bot ./cmd/bot \
 && mkdir -p /out/data

# distroless/static has CA certificates and tzdata (cron schedules), and no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/bot /usr/local/bin/bot
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/bot", "--config", "/etc/circlebot/bot.yaml"]
CMD ["serve"]
