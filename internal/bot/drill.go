package bot

import (
	"context"
	"errors"
	"time"

	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/engine"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
)

// DrillService runs restore drills, one at a time, by hand or on
// schedule, through the engine's drill kind (which tears down what a
// drill cut off by a crash left, on whichever replica recovers it).
type DrillService struct {
	// Runner is what the drill kind acts with (tests tune it); its
	// records are the drills' catalogue.
	Runner *ops.DrillRunner
	Engine *engine.Engine
}

// Run takes one drill and returns its record; its progress and result go
// to p. A drill already running is a refusal naming it. The trigger
// follows from the requester (engine.Scheduler: scheduled).
func (s *DrillService) Run(ctx context.Context, p progress.Poster, requester, channel string) (*ops.Drill, error) {
	id, err := s.Engine.Start(ctx, commands.Command{Name: commands.DrillNow}, requester, channel, p)
	if id == "" {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	d, rerr := s.Runner.Records.Get(rctx, id)
	if rerr != nil {
		return &ops.Drill{ID: id, State: ops.DrillFailed}, errors.Join(err, rerr)
	}
	return d, err
}

func (d Deps) drillNow(ctx context.Context, c Call) (Outcome, error) {
	dr, err := d.Drills.Run(ctx, c.Reply, c.Req.UserID, c.Req.ChannelID)
	if err != nil {
		if dr == nil {
			return Outcome{}, err
		}
		return Outcome{Result: "failed", Detail: dr.ID + ": " + ops.Explain(err)}, nil
	}
	return Outcome{Result: "ok", Detail: dr.ID}, nil
}
