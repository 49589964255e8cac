// Package slackio owns the Slack side of the bot: verifying and acking
// requests over HTTP or Socket Mode, and answering through the Web API and
// response_url.
package slackio

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"time"
)

// MaxSkew is Slack's documented replay window.
const MaxSkew = 5 * time.Minute

var (
	ErrUnsigned = errors.New("missing Slack signature headers")
	ErrStale    = errors.New("request timestamp outside the 5-minute window")
	ErrForged   = errors.New("signature does not match")
	ErrNoSecret = errors.New("no signing secret configured")
)

// Verify checks Slack's v0 request signature: HMAC-SHA256 over
// "v0:<timestamp>:<body>" with the signing secret, and the timestamp within
// MaxSkew of now (so a captured request cannot be replayed later).
func Verify(secret []byte, h http.Header, body []byte, now time.Time) error {
	// With no secret anyone can compute the MAC: refuse everything rather
	// than accept everything.
	if len(secret) == 0 {
		return ErrNoSecret
	}
	tsHeader := h.Get("X-Slack-Request-Timestamp")
	sig := h.Get("X-Slack-Signature")
	if tsHeader == "" || sig == "" {
		return ErrUnsigned
	}
	ts, err := strconv.ParseInt(tsHeader, 10, 64)
	if err != nil {
		return ErrUnsigned
	}
	if d := now.Sub(time.Unix(ts, 0)); d > MaxSkew || d < -MaxSkew {
		return ErrStale
	}
	if len(sig) != len("v0=")+sha256.Size*2 || sig[:3] != "v0=" {
		return ErrForged
	}
	got, err := hex.DecodeString(sig[3:])
	if err != nil {
		return ErrForged
	}
	if !hmac.Equal(got, Sign(secret, tsHeader, body)) {
		return ErrForged
	}
	return nil
}

// Sign computes the raw v0 MAC; tests and the benchmark use it to make real
// signed requests.
func Sign(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("v0:"))
	m.Write([]byte(ts))
	m.Write([]byte(":"))
	m.Write(body)
	return m.Sum(nil)
}

// SignatureHeader is the X-Slack-Signature value for body at ts.
func SignatureHeader(secret []byte, ts string, body []byte) string {
	return "v0=" + hex.EncodeToString(Sign(secret, ts, body))
}
