package slackio

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/slack-go/slack"
	"github.com/slack-go/slack/socketmode"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/metrics"
)

// Socket receives slash commands and clicks over Socket Mode (no public
// HTTP endpoint needed). Every envelope is acked first, then mapped into the
// same chat.Request the HTTP path makes and submitted to the same pool.
type Socket struct {
	Client  *socketmode.Client
	Submit  Submit
	Dedupe  *Dedupe
	Metrics *metrics.Metrics
	Log     *slog.Logger
}

// NewSocketClient makes a Socket Mode client on the bot's Web API base.
func NewSocketClient(botToken, appToken, apiURL string) *socketmode.Client {
	api := slack.New(botToken, slack.OptionAppLevelToken(appToken), slack.OptionAPIURL(apiURL))
	return socketmode.New(api)
}

// Run serves until ctx ends.
func (s *Socket) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.Client.RunContext(ctx) }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			if err == nil || errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		case evt, ok := <-s.Client.Events:
			if !ok {
				return nil
			}
			s.event(evt)
		}
	}
}

func (s *Socket) event(evt socketmode.Event) {
	start := time.Now()
	var req chat.Request
	kind := ""
	switch evt.Type {
	case socketmode.EventTypeConnected:
		s.Log.Info("socket mode connected")
		return
	case socketmode.EventTypeConnectionError, socketmode.EventTypeInvalidAuth:
		s.Log.Error("socket mode connection problem", "event", string(evt.Type))
		return
	case socketmode.EventTypeSlashCommand:
		c, ok := evt.Data.(slack.SlashCommand)
		if !ok {
			return
		}
		req = chat.Request{ID: c.TriggerID, Source: "slash", TeamID: c.TeamID, UserID: c.UserID, UserName: c.UserName,
			ChannelID: c.ChannelID, Command: c.Command, Text: c.Text, ResponseURL: c.ResponseURL}
		kind = "cmd:"
	case socketmode.EventTypeInteractive:
		cb, ok := evt.Data.(slack.InteractionCallback)
		if !ok {
			return
		}
		r, ours := FromInteraction(cb)
		if !ours {
			s.ack(evt)
			return
		}
		req, kind = r, "btn:"
	default:
		if evt.Request != nil {
			s.ack(evt)
		}
		return
	}
	req.ReceivedAt = start
	if req.ID == "" && evt.Request != nil {
		req.ID = evt.Request.EnvelopeID // Slack redelivers an envelope under its ID
	}
	if !s.Dedupe.First(kind + req.ID) {
		s.Metrics.Rejected.WithLabelValues("duplicate").Inc()
		s.ack(evt)
		return
	}
	// Submit never blocks, so deciding before the ack keeps it fast and
	// lets a refusal ride on the ack itself.
	if !s.Submit(req) {
		s.Metrics.Rejected.WithLabelValues("busy").Inc()
		s.Log.Warn("at capacity, request not taken", "request", req.ID)
		s.ack(evt, map[string]string{"response_type": "ephemeral", "text": busyText})
		return
	}
	s.ack(evt)
	s.Metrics.Ack.WithLabelValues("socket").Observe(time.Since(start).Seconds())
}

func (s *Socket) ack(evt socketmode.Event, payload ...any) {
	if evt.Request == nil {
		return
	}
	if err := s.Client.Ack(*evt.Request, payload...); err != nil {
		s.Log.Error("socket mode ack failed", "err", err)
	}
}
