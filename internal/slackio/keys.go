package slackio

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strings"

	"github.com/slack-go/slack"
	"github.com/slack-go/slack/socketmode"

	"github.com/circlebot/circlebot/internal/config"
)

// Keys are the Slack credentials in force. Refresh reads them again after
// Slack refused one (the implementation decides how often that may
// happen); callers compare what they used with Slack() afterwards.
type Keys interface {
	Slack() config.Secrets
	Refresh(ctx context.Context)
}

// StaticKeys are credentials that never change (the environment's).
type StaticKeys config.Secrets

func (k StaticKeys) Slack() config.Secrets { return config.Secrets(k) }
func (StaticKeys) Refresh(context.Context) {}

// The slack-go clients are built with these stand-ins instead of the
// tokens: tokenTransport puts the tokens in force in their place on every
// request, so that a rotated token is used from the next call on without
// rebuilding clients that other goroutines hold. A stand-in that reached
// Slack unreplaced would only be refused.
const (
	botStandIn = "xoxb-circlebot-token-in-force"
	appStandIn = "xapp-circlebot-token-in-force"
)

// rejectedToken are Slack's errors for a token that is no longer good:
// after one, the keys are read again and the call is repeated once if the
// token changed.
var rejectedToken = map[string]bool{
	"invalid_auth":     true,
	"token_revoked":    true,
	"token_expired":    true,
	"not_authed":       true,
	"account_inactive": true,
}

// tokenTransport substitutes the tokens in force for the stand-ins (in the
// Authorization header, the query and a form body: slack-go sends the
// token in each, by method) and handles a rejected token.
type tokenTransport struct {
	base http.RoundTripper
	keys Keys
}

func (t *tokenTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil && req.Body != http.NoBody && isForm(req.Header.Get("Content-Type")) {
		// A form body is small (the token, a channel, some text) and is
		// needed twice if the call is repeated.
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		body = b
	}
	used := t.keys.Slack()
	resp, err := t.send(req, body, used, false)
	if err != nil || !usesStandIn(req, body) {
		return resp, err
	}
	code, resp, err := slackError(resp)
	if err != nil || !rejectedToken[code] {
		return resp, err
	}
	t.keys.Refresh(req.Context())
	now := t.keys.Slack()
	if now.BotToken.Reveal() == used.BotToken.Reveal() && now.AppToken.Reveal() == used.AppToken.Reveal() {
		return resp, nil
	}
	if body == nil && req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return resp, nil // cannot send the body again
	}
	resp.Body.Close()
	return t.send(req, body, now, true)
}

func (t *tokenTransport) send(req *http.Request, body []byte, k config.Secrets, repeat bool) (*http.Response, error) {
	r := req.Clone(req.Context())
	bot, app := k.BotToken.Reveal(), k.AppToken.Reveal()
	if a := r.Header.Get("Authorization"); a != "" {
		r.Header.Set("Authorization", strings.NewReplacer(botStandIn, bot, appStandIn, app).Replace(a))
	}
	if q := r.URL.RawQuery; strings.Contains(q, botStandIn) || strings.Contains(q, appStandIn) {
		u := *r.URL
		u.RawQuery = strings.NewReplacer(botStandIn, url.QueryEscape(bot), appStandIn, url.QueryEscape(app)).Replace(q)
		r.URL = &u
	}
	switch {
	case body != nil:
		b := []byte(strings.NewReplacer(botStandIn, url.QueryEscape(bot), appStandIn, url.QueryEscape(app)).Replace(string(body)))
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.ContentLength = int64(len(b))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	case repeat && req.GetBody != nil:
		// The first send consumed the body: a fresh copy.
		rb, err := req.GetBody()
		if err != nil {
			return nil, err
		}
		r.Body = rb
	}
	return t.base.RoundTrip(r)
}

func usesStandIn(req *http.Request, body []byte) bool {
	return strings.Contains(req.Header.Get("Authorization"), "-circlebot-token-in-force") ||
		strings.Contains(req.URL.RawQuery, "-circlebot-token-in-force") ||
		bytes.Contains(body, []byte("-circlebot-token-in-force"))
}

func isForm(ct string) bool {
	mt, _, _ := mime.ParseMediaType(ct)
	return mt == "application/x-www-form-urlencoded"
}

// slackError reads a Web API answer's error code, leaving the body
// readable for slack-go.
func slackError(resp *http.Response) (string, *http.Response, error) {
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt != "application/json" {
		return "", resp, nil
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(b))
	if err != nil {
		return "", resp, err
	}
	var r struct {
		OK    *bool  `json:"ok"`
		Error string `json:"error"`
	}
	if json.Unmarshal(b, &r) != nil || r.OK == nil || *r.OK {
		return "", resp, nil
	}
	return r.Error, resp, nil
}

// keysClient is an HTTP client that sends the tokens in force.
func keysClient(keys Keys, hc *http.Client) *http.Client {
	base := hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c := *hc
	c.Transport = &tokenTransport{base: base, keys: keys}
	return &c
}

// NewWebWith is NewWeb with the tokens in force taken from keys on every
// call.
func NewWebWith(keys Keys, apiURL string, log *slog.Logger) *Web {
	w := NewWeb(botStandIn, apiURL, log)
	w.HTTP = keysClient(keys, w.HTTP)
	w.API = slack.New(botStandIn, slack.OptionAPIURL(apiURL), slack.OptionHTTPClient(w.HTTP))
	return w
}

// NewSocketClientWith is NewSocketClient with the tokens in force taken
// from keys whenever it connects (apps.connections.open) or calls the
// Web API.
func NewSocketClientWith(keys Keys, apiURL string) *socketmode.Client {
	hc := keysClient(keys, &http.Client{})
	api := slack.New(botStandIn, slack.OptionAppLevelToken(appStandIn), slack.OptionAPIURL(apiURL), slack.OptionHTTPClient(hc))
	return socketmode.New(api)
}
