package app

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/circlebot/circlebot/internal/bot"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/kv"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/store"
)

// The backup API: pipelines back up before an upgrade or an
// infrastructure change ("at some significant events", the runbook says)
// with `POST /api/v1/backups` on `listen`, and follow the backup with
// `GET /api/v1/backups/<id>`. It is served only when BOT_API_TOKEN is
// set, and every request must carry it as a bearer token.

// Tables of the shared state the API keeps: an Idempotency-Key's backup,
// and what the API was asked for each backup (for GET before the backup's
// own record exists).
const (
	tableIdempotency = "api-idempotency"
	tableAPIBackups  = "api-backups"
)

// How long the API's records are kept. An Idempotency-Key guards a
// caller's retries of one request, which come within minutes; a day is
// what payment APIs keep theirs (Stripe: 24 hours), after which the key
// names a new request. An API backup's own record is needed only until
// the backup's record exists (GET falls back to it; "lost" after 10
// minutes without one).
const (
	idempotencyTTL = 24 * time.Hour
	apiBackupTTL   = 24 * time.Hour
)

// maxAPIBody bounds a request body: the JSON is a reason and a method.
const maxAPIBody = 16 << 10

var backupIDRE = regexp.MustCompile(`^bk-[0-9]{8}-[0-9]{6}-[0-9a-f]{4}$`)

type backupAPI struct {
	token    [sha256.Size]byte
	backups  *bot.Backups
	method   string // backup.method: what a request without one takes
	kv       kv.Store
	audit    *store.Store
	channel  string // slack.report_channel: the announcement and the progress
	postTo   func(channel string) progress.Poster
	heldText func(*store.HeldError) string
	log      *slog.Logger
	work     context.Context // outlives the request: the backup runs on
	running  sync.WaitGroup
}

type apiRequest struct {
	Reason string `json:"reason"`
	Method string `json:"method"`
	// Caller names who asked (a pipeline, a job URL); optional.
	Caller string `json:"caller"`
}

type idempotent struct {
	ID      string    `json:"id"`
	Request string    `json:"request"` // sha256 of the request it was given for
	Created time.Time `json:"created"`
}

type apiBackup struct {
	ID      string    `json:"id"`
	Reason  string    `json:"reason"`
	Method  string    `json:"method,omitempty"`
	Caller  string    `json:"caller"`
	Created time.Time `json:"created"`
}

// BackupState is what GET /api/v1/backups/<id> answers.
type BackupState struct {
	ID        string    `json:"id"`
	State     string    `json:"state"` // starting, running, completed, failed, interrupted, lost
	Method    string    `json:"method,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Started   time.Time `json:"started,omitzero"`
	Finished  time.Time `json:"finished,omitzero"`
	Error     string    `json:"error,omitempty"`
	Snapshots []string  `json:"snapshots,omitempty"`
	Object    string    `json:"object,omitempty"` // s3://bucket/key of a tarball
	Replayed  bool      `json:"replayed,omitempty"`
}

func apiError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

func apiJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// authorized compares SHA-256 digests in constant time: neither the token
// nor its length shows in the time an answer takes.
func (a *backupAPI) authorized(w http.ResponseWriter, r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	sum := sha256.Sum256([]byte(got))
	if subtle.ConstantTimeCompare(sum[:], a.token[:]) != 1 || !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="circlebot api"`)
		apiError(w, http.StatusUnauthorized, "missing or wrong bearer token (Authorization: Bearer $BOT_API_TOKEN)")
		return false
	}
	return true
}

func printable(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) && r != '\t' {
			return false
		}
	}
	return true
}

func (a *backupAPI) post(w http.ResponseWriter, r *http.Request) {
	if !a.authorized(w, r) {
		return
	}
	var req apiRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxAPIBody+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		apiError(w, http.StatusBadRequest, `the body must be JSON {"reason": "...", "method": "ebs|tarball"}: `+err.Error())
		return
	}
	if dec.More() {
		apiError(w, http.StatusBadRequest, "the body must be one JSON object")
		return
	}
	req.Reason, req.Caller = strings.TrimSpace(req.Reason), strings.TrimSpace(req.Caller)
	switch {
	case req.Reason == "":
		apiError(w, http.StatusBadRequest, `"reason" is required: say why this backup is taken, e.g. "before the upgrade to 2.x"`)
		return
	case len(req.Reason) > 500 || !printable(req.Reason):
		apiError(w, http.StatusBadRequest, `"reason" must be one line of at most 500 bytes`)
		return
	case len(req.Caller) > 200 || !printable(req.Caller):
		apiError(w, http.StatusBadRequest, `"caller" must be one line of at most 200 bytes`)
		return
	}
	switch req.Method {
	case "", ops.MethodEBS, ops.MethodTarball:
	default:
		apiError(w, http.StatusBadRequest, fmt.Sprintf(`"method" %q must be "ebs" or "tarball" (or absent: the configured method)`, req.Method))
		return
	}
	if req.Method == ops.MethodTarball && a.backups.Tarball == nil {
		apiError(w, http.StatusBadRequest, "tarball backups need `backup.bucket` in the bot's config")
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if len(key) > 255 || !printable(key) {
		apiError(w, http.StatusBadRequest, "Idempotency-Key must be at most 255 printable characters")
		return
	}
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	caller := req.Caller
	if caller == "" {
		caller = "an API client"
	}
	caller += " (from " + host + ")"
	sum := sha256.Sum256([]byte(req.Reason + "\x00" + req.Method))
	reqHash := hex.EncodeToString(sum[:])
	ctx := r.Context()

	id := ops.NewBackupID(time.Now())
	var keyRef string
	var keyVersion int64
	if key != "" {
		ks := sha256.Sum256([]byte(key))
		keyRef = hex.EncodeToString(ks[:])
		// The key is claimed with a conditional write: on every replica
		// sharing the state, the first request with it wins and the
		// others answer with its backup.
		val, _ := json.Marshal(idempotent{ID: id, Request: reqHash, Created: time.Now().UTC()})
		v, err := a.kv.Put(ctx, tableIdempotency, keyRef, val, 0)
		if errors.Is(err, kv.ErrConflict) {
			// A key past idempotencyTTL names a new request: it is taken
			// over, conditionally, so that racing replicas still give one
			// winner.
			if old, gerr := a.kv.Get(ctx, tableIdempotency, keyRef); gerr == nil && expired(old.Value, idempotencyTTL, time.Now()) {
				v, err = a.kv.Put(ctx, tableIdempotency, keyRef, val, old.Version)
			}
		}
		switch {
		case errors.Is(err, kv.ErrConflict):
			a.replay(w, r, keyRef, reqHash)
			return
		case err != nil:
			apiError(w, http.StatusServiceUnavailable, "the bot's state cannot be written: "+err.Error())
			return
		}
		keyVersion = v
	}
	forget := func() {
		// Refused: the key may be used again for a new try.
		if keyRef != "" {
			_ = a.kv.Delete(context.WithoutCancel(ctx), tableIdempotency, keyRef, keyVersion)
		}
		_ = a.kv.Delete(context.WithoutCancel(ctx), tableAPIBackups, id, 1)
	}
	val, _ := json.Marshal(apiBackup{ID: id, Reason: req.Reason, Method: req.Method, Caller: caller, Created: time.Now().UTC()})
	if _, err := a.kv.Put(ctx, tableAPIBackups, id, val, 0); err != nil {
		forget()
		apiError(w, http.StatusServiceUnavailable, "the bot's state cannot be written: "+err.Error())
		return
	}

	started := make(chan struct{})
	done := make(chan error, 1)
	var poster progress.Poster = discard{}
	if a.channel != "" {
		poster = a.postTo(a.channel)
	}
	a.running.Add(1)
	go func() {
		defer a.running.Done()
		b, err := a.backups.Run(a.work, poster, bot.BackupRequest{
			ID: id, Method: req.Method, Trigger: "api", Requester: "api: " + caller, Reason: req.Reason, Channel: a.channel,
			Started: func(string) {
				// The caller hears 202 at once; the announcement (a Slack
				// call) comes before the backup's first step.
				close(started)
				a.announce(poster, id, req, caller)
			},
		})
		done <- err
		outcome, detail := "ok", id
		if err != nil {
			outcome, detail = "failed", id+": "+ops.Explain(err)
		}
		if b == nil {
			outcome = "refused"
		}
		_ = a.audit.Audit(context.WithoutCancel(a.work), store.AuditRecord{UserID: "api", Channel: a.channel, Source: "api", Command: "backup now " + req.Method, Outcome: outcome, Detail: detail + " — " + caller + ": " + req.Reason})
	}()
	select {
	case <-started:
		a.log.Info("backup requested through the API", "backup", id, "caller", caller, "reason", req.Reason, "idempotency_key", keyRef != "")
		apiJSON(w, http.StatusAccepted, BackupState{ID: id, State: "starting", Method: req.Method, Reason: req.Reason})
	case err := <-done:
		select {
		case <-started:
			// It started, and ended before this answer: the backup exists.
			a.log.Info("backup requested through the API", "backup", id, "caller", caller, "reason", req.Reason, "idempotency_key", keyRef != "")
			st, ok := a.state(r.Context(), id)
			if !ok {
				st = BackupState{ID: id, State: "starting", Method: req.Method, Reason: req.Reason}
			}
			apiJSON(w, http.StatusAccepted, st)
			return
		default:
		}
		forget()
		var held *store.HeldError
		var ue *bot.UserError
		switch {
		case errors.As(err, &held):
			apiError(w, http.StatusConflict, a.heldText(held))
		case errors.As(err, &ue):
			apiError(w, http.StatusBadRequest, ue.Msg)
		default:
			apiError(w, http.StatusInternalServerError, "the backup could not start: "+ops.Explain(err))
		}
	}
}

// replay answers a request whose Idempotency-Key was used before: the
// same request gets the same backup; another request with the key is an
// error.
func (a *backupAPI) replay(w http.ResponseWriter, r *http.Request, keyRef, reqHash string) {
	it, err := a.kv.Get(r.Context(), tableIdempotency, keyRef)
	if err != nil {
		apiError(w, http.StatusServiceUnavailable, "the bot's state cannot be read: "+err.Error())
		return
	}
	var e idempotent
	if err := json.Unmarshal(it.Value, &e); err != nil {
		apiError(w, http.StatusInternalServerError, "a stored idempotency record cannot be read")
		return
	}
	if e.Request != reqHash {
		apiError(w, http.StatusUnprocessableEntity, fmt.Sprintf("this Idempotency-Key was used for another request (backup %s): use a new key for a new backup", e.ID))
		return
	}
	st, ok := a.state(r.Context(), e.ID)
	if !ok {
		st = BackupState{ID: e.ID, State: "starting"}
	}
	st.Replayed = true
	apiJSON(w, http.StatusAccepted, st)
}

func (a *backupAPI) announce(p progress.Poster, id string, req apiRequest, caller string) {
	method := req.Method
	if method == "" {
		method = a.method
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.work), 10*time.Second)
	defer cancel()
	text := fmt.Sprintf(":inbox_tray: Backup `%s` (%s) requested through the API by %s. Reason: %s", id, method, mrkdwnEscape(caller), mrkdwnEscape(req.Reason))
	if _, err := p.Post(ctx, chat.Text(text)); err != nil {
		a.log.Warn("announce an API backup", "backup", id, "err", err)
	}
}

func (a *backupAPI) get(w http.ResponseWriter, r *http.Request) {
	if !a.authorized(w, r) {
		return
	}
	id := r.PathValue("id")
	if !backupIDRE.MatchString(id) {
		apiError(w, http.StatusBadRequest, fmt.Sprintf("%q is not a backup ID (bk-YYYYMMDD-HHMMSS-xxxx)", id))
		return
	}
	st, ok := a.state(r.Context(), id)
	if !ok {
		apiError(w, http.StatusNotFound, "no backup "+id)
		return
	}
	apiJSON(w, http.StatusOK, st)
}

// state is a backup's state from its record, or from what the API was
// asked while the record is not written yet.
func (a *backupAPI) state(ctx context.Context, id string) (BackupState, bool) {
	b, err := a.backups.Records.Backup(ctx, id)
	if err == nil {
		st := BackupState{ID: b.ID, State: b.State, Method: b.Method, Reason: b.Reason, Started: b.Started, Finished: b.Finished, Error: b.Error}
		for _, s := range b.Snapshots {
			st.Snapshots = append(st.Snapshots, s.ID)
		}
		if b.Key != "" {
			st.Object = "s3://" + b.Bucket + "/" + b.Key
		}
		return st, true
	}
	it, err := a.kv.Get(ctx, tableAPIBackups, id)
	if err != nil {
		return BackupState{}, false
	}
	var ab apiBackup
	if json.Unmarshal(it.Value, &ab) != nil {
		return BackupState{}, false
	}
	st := BackupState{ID: id, State: "starting", Method: ab.Method, Reason: ab.Reason}
	if time.Since(ab.Created) > 10*time.Minute {
		// Accepted, but its record was never written: the bot stopped
		// before the backup began.
		st.State, st.Error = "lost", "the bot stopped before this backup began; request a new one"
	}
	return st, true
}

// expired says whether a stored API record (its JSON has "created") is
// older than ttl; one that cannot be read is not (it is left alone).
func expired(raw []byte, ttl time.Duration, now time.Time) bool {
	var r struct {
		Created time.Time `json:"created"`
	}
	return json.Unmarshal(raw, &r) == nil && !r.Created.IsZero() && now.Sub(r.Created) > ttl
}

// SweepAPIRecords deletes the API's records past their time
// (idempotencyTTL, apiBackupTTL), each conditionally on the version read,
// so that a key claimed again meanwhile stays. It returns how many went.
func SweepAPIRecords(ctx context.Context, s kv.Store, now time.Time) (int, error) {
	n := 0
	for table, ttl := range map[string]time.Duration{tableIdempotency: idempotencyTTL, tableAPIBackups: apiBackupTTL} {
		items, err := s.List(ctx, table)
		if err != nil {
			return n, fmt.Errorf("list %s: %w", table, err)
		}
		for _, it := range items {
			if !expired(it.Value, ttl, now) {
				continue
			}
			switch err := s.Delete(ctx, table, it.Key, it.Version); {
			case err == nil:
				n++
			case errors.Is(err, kv.ErrConflict), errors.Is(err, kv.ErrNotFound):
			default:
				return n, fmt.Errorf("delete %s/%s: %w", table, it.Key, err)
			}
		}
	}
	return n, nil
}

// discard is where a backup's progress goes without a report channel.
type discard struct{}

func (discard) Post(context.Context, chat.Message) (chat.Ref, error) {
	return chat.Ref{Channel: "-", TS: "0"}, nil
}
func (discard) Update(context.Context, chat.Ref, chat.Message) error { return nil }
func (discard) PostThread(context.Context, chat.Ref, chat.Message) (chat.Ref, error) {
	return chat.Ref{Channel: "-", TS: "0"}, nil
}

// mrkdwnEscape keeps a caller's text literal in Slack: no <!channel>, no
// links, no user mentions.
func mrkdwnEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
