package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

const backupUsage = `usage: bot backup --reason "..." [--method ebs|tarball] [--wait] [--url URL] [--caller NAME] [--idempotency-key KEY]

Asks a running bot for a backup through its API (POST /api/v1/backups on its
"listen" address), for CI pipelines before an upgrade or an infrastructure
change. The token is read from BOT_API_TOKEN; the URL from --url, else
BOT_API_URL, else http://127.0.0.1:8080.

  --reason TEXT          why (required); announced in the report channel
  --method ebs|tarball   default: the bot's backup.method
  --wait                 follow the backup until it ends; exit 1 if it fails
  --caller NAME          who asks (default: $CIRCLE_BUILD_URL, else user@host)
  --idempotency-key KEY  the same key gives the same backup (default: a new
                         key, reused for this command's own retries)
  --poll DURATION        --wait's interval (default 5s)
  --timeout DURATION     --wait's limit (default 6h)

Exit status: 0 accepted (or, with --wait, completed); 1 refused, failed or
timed out; 2 bad usage.
`

// apiState is the API's answer (a subset of app.BackupState).
type apiState struct {
	ID       string `json:"id"`
	State    string `json:"state"`
	Error    string `json:"error"`
	Replayed bool   `json:"replayed"`
}

// backupCmd is `bot backup`.
func backupCmd(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bot backup", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	reason := fs.String("reason", "", "")
	method := fs.String("method", "", "")
	wait := fs.Bool("wait", false, "")
	url := fs.String("url", "", "")
	caller := fs.String("caller", "", "")
	key := fs.String("idempotency-key", "", "")
	poll := fs.Duration("poll", 5*time.Second, "")
	timeout := fs.Duration("timeout", 6*time.Hour, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, backupUsage)
			return nil
		}
		return usageError{err.Error() + "\n" + backupUsage}
	}
	switch {
	case fs.NArg() > 0:
		return usageError{fmt.Sprintf("unexpected argument %q\n%s", fs.Arg(0), backupUsage)}
	case strings.TrimSpace(*reason) == "":
		return usageError{"--reason is required: say why this backup is taken\n" + backupUsage}
	case *method != "" && *method != "ebs" && *method != "tarball":
		return usageError{fmt.Sprintf("--method %q: ebs or tarball\n%s", *method, backupUsage)}
	case *poll <= 0:
		return usageError{"--poll must be positive\n" + backupUsage}
	}
	token := strings.TrimSpace(env("BOT_API_TOKEN"))
	if token == "" {
		return usageError{"BOT_API_TOKEN is not set: the bot's API needs it as a bearer token"}
	}
	base := strings.TrimRight(firstOf(*url, env("BOT_API_URL"), "http://127.0.0.1:8080"), "/")
	if *caller == "" {
		*caller = env("CIRCLE_BUILD_URL")
	}
	if *caller == "" {
		host, _ := os.Hostname()
		*caller = firstOf(env("USER"), "someone") + "@" + host
	}
	if *key == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		*key = "bot-backup-" + hex.EncodeToString(b[:])
	}
	body, _ := json.Marshal(map[string]string{"reason": *reason, "method": *method, "caller": *caller})
	c := &http.Client{Timeout: 30 * time.Second}

	// A POST whose answer is lost is sent again with the same key: the bot
	// answers with the backup the first one started.
	var st apiState
	var err error
	for attempt := 1; ; attempt++ {
		var status int
		status, err = call(ctx, c, http.MethodPost, base+"/api/v1/backups", token, *key, body, &st)
		if err == nil && status == http.StatusAccepted {
			break
		}
		if err == nil {
			return fmt.Errorf("the bot refused the backup (HTTP %d): %s", status, st.Error)
		}
		if attempt == 3 || ctx.Err() != nil {
			return fmt.Errorf("ask %s for a backup: %w", base, err)
		}
		fmt.Fprintf(stderr, "bot backup: %v; trying again with the same Idempotency-Key\n", err)
		if err := pause(ctx, time.Duration(attempt)*2*time.Second); err != nil {
			return err
		}
	}
	note := ""
	if st.Replayed {
		note = " (this Idempotency-Key's backup, asked for before)"
	}
	fmt.Fprintf(stdout, "backup %s accepted%s\n", st.ID, note)
	if !*wait {
		return nil
	}
	deadline := time.Now().Add(*timeout)
	last := st.State
	for {
		switch st.State {
		case "completed":
			fmt.Fprintf(stdout, "backup %s completed\n", st.ID)
			return nil
		case "failed", "interrupted", "lost":
			return fmt.Errorf("backup %s %s: %s", st.ID, st.State, st.Error)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("backup %s is still %s after %s (--timeout); it goes on in the bot", st.ID, st.State, *timeout)
		}
		if err := pause(ctx, *poll); err != nil {
			return err
		}
		var next apiState
		status, err := call(ctx, c, http.MethodGet, base+"/api/v1/backups/"+st.ID, token, "", nil, &next)
		switch {
		case err != nil:
			fmt.Fprintf(stderr, "bot backup: read the state of %s: %v (trying again)\n", st.ID, err)
			continue
		case status != http.StatusOK:
			return fmt.Errorf("read the state of %s (HTTP %d): %s", st.ID, status, next.Error)
		}
		st = next
		if st.State != last {
			fmt.Fprintf(stdout, "backup %s %s\n", st.ID, st.State)
			last = st.State
		}
	}
}

// call sends one request and decodes the JSON answer into out; err is for
// a request that got no HTTP answer (worth sending again).
func call(ctx context.Context, c *http.Client, method, url, token, key string, body []byte, out *apiState) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err := json.Unmarshal(raw, out); err != nil {
		out.Error = strings.TrimSpace(string(raw))
	}
	if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable {
		return resp.StatusCode, fmt.Errorf("HTTP %d: %s", resp.StatusCode, out.Error)
	}
	return resp.StatusCode, nil
}

func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func firstOf(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
