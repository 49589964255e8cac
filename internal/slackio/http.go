package slackio

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/metrics"
)

// MaxBody bounds a Slack request body. Slash commands are a few hundred
// bytes; interaction payloads carry the message they sit on and can reach
// tens of KiB. Anything bigger is not Slack.
const MaxBody = 256 << 10

// ButtonActionID marks buttons whose value is a command text to run as the
// clicker (re-authorised on every click). Slack wants the action IDs within
// one block to differ, so buttons that share a block carry it with a suffix
// (ButtonID); both forms are read.
const ButtonActionID = "circlebot:cmd"

// ButtonID is ButtonActionID for one of several buttons in a block.
func ButtonID(name string) string { return ButtonActionID + ":" + name }

func isButtonID(id string) bool {
	return id == ButtonActionID || strings.HasPrefix(id, ButtonActionID+":")
}

const busyText = "I am at capacity right now and did not run that. Please try again in a few seconds."

// Submit hands a verified request to the bot; false means the bot is at
// capacity and the request was not taken.
type Submit func(chat.Request) bool

// HTTP serves Slack's HTTP endpoints.
type HTTP struct {
	Secret config.Secret
	// Keys, when set, gives the signing secret in force instead of
	// Secret: a signature that does not match makes it read the keys again
	// (rotated in Secrets Manager, Slack signs with the new secret at
	// once) and check once more.
	Keys    Keys
	Submit  Submit
	Dedupe  *Dedupe
	Metrics *metrics.Metrics
	Log     *slog.Logger
	Now     func() time.Time // for tests of stale requests; time.Now when nil
}

func (h *HTTP) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST /slack/commands", h.commands)
	mux.HandleFunc("POST /slack/interactions", h.interactions)
}

// verified reads and checks a request. It answers the refusals itself and
// returns ok=false for them; nothing past this point runs for a bad request.
func (h *HTTP) verified(w http.ResponseWriter, r *http.Request) (url.Values, []byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.reject(w, http.StatusRequestEntityTooLarge, "too_large")
			return nil, nil, false
		}
		h.reject(w, http.StatusBadRequest, "unreadable")
		return nil, nil, false
	}
	now := time.Now()
	if h.Now != nil {
		now = h.Now()
	}
	err = h.verify(r, body, now)
	if err != nil {
		reason := "signature"
		if errors.Is(err, ErrStale) {
			reason = "stale"
		}
		h.Log.Warn("slack request refused", "reason", reason, "remote", r.RemoteAddr, "path", r.URL.Path)
		h.reject(w, http.StatusUnauthorized, reason)
		return nil, nil, false
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		h.reject(w, http.StatusBadRequest, "malformed")
		return nil, nil, false
	}
	return form, body, true
}

func (h *HTTP) verify(r *http.Request, body []byte, now time.Time) error {
	if h.Keys == nil {
		return Verify([]byte(h.Secret.Reveal()), r.Header, body, now)
	}
	used := h.Keys.Slack().SigningSecret
	err := Verify([]byte(used.Reveal()), r.Header, body, now)
	if !errors.Is(err, ErrForged) {
		return err
	}
	h.Keys.Refresh(r.Context())
	if next := h.Keys.Slack().SigningSecret; next.Reveal() != used.Reveal() {
		return Verify([]byte(next.Reveal()), r.Header, body, now)
	}
	return err
}

func (h *HTTP) reject(w http.ResponseWriter, status int, reason string) {
	h.Metrics.Rejected.WithLabelValues(reason).Inc()
	http.Error(w, http.StatusText(status), status)
}

func (h *HTTP) commands(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	form, body, ok := h.verified(w, r)
	if !ok {
		return
	}
	req := chat.Request{
		ID:          form.Get("trigger_id"),
		Source:      "slash",
		TeamID:      form.Get("team_id"),
		UserID:      form.Get("user_id"),
		UserName:    form.Get("user_name"),
		ChannelID:   form.Get("channel_id"),
		Command:     form.Get("command"),
		Text:        form.Get("text"),
		ResponseURL: form.Get("response_url"),
		ReceivedAt:  start,
	}
	h.accept(w, req, "cmd:", body, start)
}

func (h *HTTP) interactions(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	form, body, ok := h.verified(w, r)
	if !ok {
		return
	}
	var cb slack.InteractionCallback
	if err := json.Unmarshal([]byte(form.Get("payload")), &cb); err != nil {
		h.reject(w, http.StatusBadRequest, "malformed")
		return
	}
	req, ok := FromInteraction(cb)
	if !ok {
		// Not one of our command buttons (e.g. a confirm dialog closing):
		// acknowledge and do nothing.
		w.WriteHeader(http.StatusOK)
		return
	}
	req.ReceivedAt = start
	h.accept(w, req, "btn:", body, start)
}

// FromInteraction maps a block_actions click on one of our command buttons
// to a request; the button carries the command text it stands for.
func FromInteraction(cb slack.InteractionCallback) (chat.Request, bool) {
	if cb.Type != slack.InteractionTypeBlockActions || len(cb.ActionCallback.BlockActions) == 0 {
		return chat.Request{}, false
	}
	a := cb.ActionCallback.BlockActions[0]
	if !isButtonID(a.ActionID) || a.Value == "" {
		return chat.Request{}, false
	}
	id := cb.TriggerID
	if id == "" {
		id = a.ActionTs
	}
	return chat.Request{
		ID:          id,
		Source:      "button",
		TeamID:      cb.Team.ID,
		UserID:      cb.User.ID,
		UserName:    cb.User.Name,
		ChannelID:   cb.Channel.ID,
		Text:        a.Value,
		ResponseURL: cb.ResponseURL,
		MessageTS:   cb.Container.MessageTs,
	}, true
}

// accept dedupes, hands the request to the bot and acks. The ack carries no
// body: every answer, even a usage error, goes through the same reply path
// as it would from the console.
func (h *HTTP) accept(w http.ResponseWriter, req chat.Request, kind string, body []byte, start time.Time) {
	key := req.ID
	if key == "" {
		sum := sha256.Sum256(body)
		key = hex.EncodeToString(sum[:])
		req.ID = key[:16]
	}
	if !h.Dedupe.First(kind + key) {
		h.Log.Info("duplicate slack delivery ignored", "request", req.ID)
		h.Metrics.Rejected.WithLabelValues("duplicate").Inc()
		w.WriteHeader(http.StatusOK)
		return
	}
	if !h.Submit(req) {
		h.Metrics.Rejected.WithLabelValues("busy").Inc()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"response_type": "ephemeral",
			"text":          busyText,
		})
		return
	}
	w.WriteHeader(http.StatusOK)
	h.Metrics.Ack.WithLabelValues("http").Observe(time.Since(start).Seconds())
}
