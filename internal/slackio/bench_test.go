package slackio

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/metrics"
)

// The slash-command ack path (read with a size limit, verify the HMAC and
// the timestamp, parse the form, dedupe, hand off, ack) beside a bare
// net/http handler that only reads and parses the same form, in one run:
//
//	go test -run='^$' -bench=Ack -benchmem ./internal/slackio/
//
// "recorder" calls ServeHTTP in process (allocations of the handler alone);
// "loopback" goes through a real HTTP server and client on 127.0.0.1, which
// is what Slack's 3-second budget sees minus the internet.

const benchSecret = "bench-signing-secret"

func benchBodies(n int) ([][]byte, []string) {
	bodies := make([][]byte, n)
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	sigs := make([]string, n)
	for i := range bodies {
		bodies[i] = []byte(url.Values{
			"command": {"/circleci"}, "text": {"status"}, "user_id": {"U0ALICE"}, "channel_id": {"C0INCIDENT"},
			"team_id": {"T0001"}, "trigger_id": {fmt.Sprintf("1337.42.%d", i)},
			"response_url": {"https://hooks.slack.com/commands/T0001/1/abc"},
		}.Encode())
		sigs[i] = SignatureHeader([]byte(benchSecret), ts, bodies[i])
	}
	return bodies, append(sigs, ts)
}

func bare() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		if _, err := url.ParseQuery(string(body)); err != nil {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
}

func signedHandler(taken *atomic.Int64) http.Handler {
	mux := http.NewServeMux()
	h := &HTTP{
		Secret:  config.NewSecret(benchSecret),
		Submit:  func(chat.Request) bool { taken.Add(1); return true },
		Dedupe:  NewDedupe(10*time.Minute, 1<<20),
		Metrics: metrics.New(),
		Log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	h.Register(mux)
	return mux
}

func BenchmarkAck(b *testing.B) {
	for _, tc := range []struct {
		name   string
		signed bool
	}{{"bare", false}, {"signed", true}} {
		b.Run(tc.name+"-recorder", func(b *testing.B) {
			var taken atomic.Int64
			h := bare()
			if tc.signed {
				h = signedHandler(&taken)
			}
			bodies, sigs := benchBodies(b.N)
			ts := sigs[len(sigs)-1]
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				req := httptest.NewRequest(http.MethodPost, "/slack/commands", bytes.NewReader(bodies[i]))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				req.Header.Set("X-Slack-Request-Timestamp", ts)
				req.Header.Set("X-Slack-Signature", sigs[i])
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatalf("HTTP %d", w.Code)
				}
			}
			b.StopTimer()
			if tc.signed && taken.Load() != int64(b.N) {
				b.Fatalf("%d of %d requests handed to the bot", taken.Load(), b.N)
			}
		})
		b.Run(tc.name+"-loopback", func(b *testing.B) {
			var taken atomic.Int64
			h := bare()
			if tc.signed {
				h = signedHandler(&taken)
			}
			srv := httptest.NewServer(h)
			defer srv.Close()
			client := srv.Client()
			bodies, sigs := benchBodies(b.N)
			ts := sigs[len(sigs)-1]
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				req, _ := http.NewRequest(http.MethodPost, srv.URL+"/slack/commands", bytes.NewReader(bodies[i]))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				req.Header.Set("X-Slack-Request-Timestamp", ts)
				req.Header.Set("X-Slack-Signature", sigs[i])
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("HTTP %d", resp.StatusCode)
				}
			}
		})
	}
}
