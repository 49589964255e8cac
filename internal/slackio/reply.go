package slackio

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/chat"
)

// Web answers through Slack's Web API and response_url. One Web serves all
// requests; Replier binds it to one request.
type Web struct {
	API  *slack.Client
	HTTP *http.Client // for response_url
	Log  *slog.Logger
	// MaxWait caps how long one call waits out Slack's rate limiting before
	// giving up; operations never wait on Slack longer than this per call.
	MaxWait time.Duration
}

func NewWeb(token, apiURL string, log *slog.Logger) *Web {
	hc := &http.Client{Timeout: 15 * time.Second}
	return &Web{
		API:     slack.New(token, slack.OptionAPIURL(apiURL), slack.OptionHTTPClient(hc)),
		HTTP:    hc,
		Log:     log,
		MaxWait: 30 * time.Second,
	}
}

// Replier answers one request.
type Replier struct {
	w   *Web
	req chat.Request
}

func (w *Web) For(req chat.Request) *Replier { return &Replier{w: w, req: req} }

// In speaks in channel for the same person, through the Web API only (a
// response_url belongs to the channel it came from).
func (r *Replier) In(channel string) chat.Speaker {
	return r.w.For(chat.Request{TeamID: r.req.TeamID, UserID: r.req.UserID, ChannelID: channel})
}

func (r *Replier) Ephemeral(ctx context.Context, m chat.Message) error {
	m = m.Fit()
	if r.req.ResponseURL != "" {
		return r.w.respond(ctx, r.req.ResponseURL, "ephemeral", m)
	}
	return r.w.retry(ctx, "chat.postEphemeral", func() error {
		_, err := r.w.API.PostEphemeralContext(ctx, r.req.ChannelID, r.req.UserID, slack.MsgOptionText(m.Text, false), slack.MsgOptionBlocks(m.Blocks...))
		return err
	})
}

// EphemeralTo shows m to user only, in the request's channel.
func (r *Replier) EphemeralTo(ctx context.Context, user string, m chat.Message) error {
	m = m.Fit()
	return r.w.retry(ctx, "chat.postEphemeral", func() error {
		_, err := r.w.API.PostEphemeralContext(ctx, r.req.ChannelID, user, slack.MsgOptionText(m.Text, false), slack.MsgOptionBlocks(m.Blocks...))
		return err
	})
}

// UploadFile attaches a file in the thread of parent, through Slack's
// external upload flow (files.getUploadURLExternal, the upload,
// files.completeUploadExternal).
func (r *Replier) UploadFile(ctx context.Context, parent chat.Ref, filename, title string, data []byte) error {
	_, err := r.w.API.UploadFileContext(ctx, slack.UploadFileParameters{
		Reader: bytes.NewReader(data), FileSize: len(data), Filename: filename, Title: title,
		Channel: parent.Channel, ThreadTimestamp: parent.TS,
	})
	if err != nil {
		return fmt.Errorf("upload %s: %w", filename, err)
	}
	return nil
}

// Post posts in the request's channel. A bot that is not in the channel
// cannot post there: the message then goes to the channel through the
// response_url, and the requester is told how to fix it.
func (r *Replier) Post(ctx context.Context, m chat.Message) (chat.Ref, error) {
	m = m.Fit()
	var ts string
	err := r.w.retry(ctx, "chat.postMessage", func() error {
		var err error
		_, ts, err = r.w.API.PostMessageContext(ctx, r.req.ChannelID, slack.MsgOptionText(m.Text, false), slack.MsgOptionBlocks(m.Blocks...))
		return err
	})
	if err == nil {
		return chat.Ref{Channel: r.req.ChannelID, TS: ts}, nil
	}
	if notMember(err) && r.req.ResponseURL != "" {
		if rerr := r.w.respond(ctx, r.req.ResponseURL, "in_channel", m); rerr != nil {
			return chat.Ref{}, fmt.Errorf("post to %s: %w (and response_url: %v)", r.req.ChannelID, err, rerr)
		}
		hint := chat.Text("I am not a member of this channel, so I answered through the slash command and cannot post progress updates here. Invite me with `/invite @` + my name to get live progress.")
		_ = r.w.respond(ctx, r.req.ResponseURL, "ephemeral", hint)
		return chat.Ref{Channel: r.req.ChannelID}, nil
	}
	return chat.Ref{}, fmt.Errorf("post to %s: %w", r.req.ChannelID, err)
}

func (r *Replier) Update(ctx context.Context, ref chat.Ref, m chat.Message) error {
	m = m.Fit()
	if ref.TS == "" {
		// Posted through response_url (see Post): replace it there.
		return r.w.respond(ctx, r.req.ResponseURL, "in_channel", m)
	}
	return r.w.retry(ctx, "chat.update", func() error {
		_, _, _, err := r.w.API.UpdateMessageContext(ctx, ref.Channel, ref.TS, slack.MsgOptionText(m.Text, false), slack.MsgOptionBlocks(m.Blocks...))
		return err
	})
}

func (r *Replier) PostThread(ctx context.Context, parent chat.Ref, m chat.Message) (chat.Ref, error) {
	m = m.Fit()
	if parent.TS == "" {
		return chat.Ref{}, fmt.Errorf("post thread in %s: the parent message was not posted by the Web API", parent.Channel)
	}
	var ts string
	err := r.w.retry(ctx, "chat.postMessage", func() error {
		var err error
		_, ts, err = r.w.API.PostMessageContext(ctx, parent.Channel, slack.MsgOptionText(m.Text, false), slack.MsgOptionBlocks(m.Blocks...), slack.MsgOptionTS(parent.TS))
		return err
	})
	if err != nil {
		return chat.Ref{}, fmt.Errorf("post thread in %s: %w", parent.Channel, err)
	}
	return chat.Ref{Channel: parent.Channel, TS: ts}, nil
}

func notMember(err error) bool {
	var se slack.SlackErrorResponse
	if errors.As(err, &se) {
		return se.Err == "not_in_channel" || se.Err == "channel_not_found"
	}
	return err.Error() == "not_in_channel" || err.Error() == "channel_not_found"
}

// retry waits out Slack's 429s (Retry-After) a few times, within MaxWait.
func (w *Web) retry(ctx context.Context, method string, call func() error) error {
	deadline := time.Now().Add(w.MaxWait)
	for attempt := 1; ; attempt++ {
		err := call()
		var rl *slack.RateLimitedError
		if !errors.As(err, &rl) || attempt >= 5 {
			return err
		}
		wait := rl.RetryAfter
		if wait <= 0 {
			wait = time.Second
		}
		if time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("%s: rate limited by Slack for %s, more than the %s this call may wait: %w", method, wait, w.MaxWait, err)
		}
		w.Log.Warn("slack rate limit, waiting", "method", method, "retry_after", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

type responseBody struct {
	ResponseType    string        `json:"response_type"`
	Text            string        `json:"text"`
	Blocks          []slack.Block `json:"blocks,omitempty"`
	ReplaceOriginal bool          `json:"replace_original"`
}

func (w *Web) respond(ctx context.Context, responseURL, kind string, m chat.Message) error {
	body, err := json.Marshal(responseBody{ResponseType: kind, Text: m.Text, Blocks: m.Blocks})
	if err != nil {
		return fmt.Errorf("response_url: encode: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, responseURL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("response_url: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.HTTP.Do(req)
	if err != nil {
		// *url.Error carries the URL, a bearer credential for 30 minutes:
		// keep only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("response_url: %w", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		// Slack answers 404 "expired_url" after 30 minutes or 5 uses.
		return fmt.Errorf("response_url: HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(msg))
	}
	return nil
}
