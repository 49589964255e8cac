package bot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/store"
)

// DrillService runs restore drills, one at a time, by hand or on schedule.
type DrillService struct {
	Runner       *ops.DrillRunner
	Store        *store.Store
	SlashCommand string
	Log          *slog.Logger
	MinInterval  time.Duration
}

// Run takes one drill and posts its progress and result.
func (s *DrillService) Run(ctx context.Context, p progress.Poster, trigger, requester, channel string) (*ops.Drill, error) {
	d := &ops.Drill{ID: ops.NewDrillID(time.Now()), Trigger: trigger, Requester: requester, Channel: channel, Started: time.Now()}
	unlock, err := s.Store.TryLock(ctx, store.Lock{Key: "drill", OpID: d.ID, What: "restore drill", Requester: requester, Process: s.Store.Process()})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := unlock(); err != nil {
			s.Log.Error("release drill lock", "drill", d.ID, "err", err)
		}
	}()
	st := progress.Start(ctx, p, progress.Options{OpID: d.ID, Title: "Restore drill (isolated; production is not touched)", Requester: requester, Steps: ops.DrillSteps, Log: s.Log, MinInterval: s.MinInterval})
	err = s.Runner.Run(ctx, d, st)
	cleanup := "removed: " + strings.Join(d.Cleanup, "; ")
	if len(d.Cleanup) == 0 {
		cleanup = "nothing was left to remove"
	}
	switch {
	case err == nil:
		st.Finish(progress.Succeeded, fmt.Sprintf("Restore point `%s` restores: healthy in *%s* (the measured restore time). Everything the drill made is gone (%s).", d.Source, d.RestoreTime.Round(time.Second), cleanup))
	case d.State == ops.DrillInterrupted && ctx.Err() != nil:
		st.Finish(progress.Cancelled, "Stopped: the bot is shutting down. "+cleanup+".")
	default:
		st.Finish(progress.Failed, fmt.Sprintf(":rotating_light: The drill of `%s` failed: %s If the restore point itself is at fault, a real restore from it would fail too: look now. Teardown: %s.", sourceName(d.Source), ops.Explain(err), cleanup))
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	_ = st.Wait(wctx) // a Slack message, not state: the stream keeps trying on its own
	return d, err
}

func sourceName(s string) string {
	if s == "" {
		return "the newest restore point"
	}
	return s
}

// Sweep removes what drills cut off by a crash left behind and says so.
// It holds the drill lock meanwhile (a drill asked for during the sweep
// is told one is running), and frees a lock a dead process left.
func (s *DrillService) Sweep(ctx context.Context, p progress.Poster) {
	if locks, err := s.Store.Locks(ctx); err == nil {
		for _, l := range locks {
			if l.Key == "drill" && !s.Store.Alive(ctx, l.Process) {
				if err := s.Store.Unlock(ctx, l.Key, l.OpID); err != nil {
					s.Log.Error("release a drill lock left by a dead process; tried again at the next sweep", "op", l.OpID, "err", err)
				}
			}
		}
	}
	unlock, err := s.Store.TryLock(ctx, store.Lock{Key: "drill", OpID: "sweep", What: "clean-up of interrupted drills", Requester: "the bot", Process: s.Store.Process()})
	if err != nil {
		s.Log.Warn("drill sweep skipped: a drill is running", "err", err)
		return
	}
	defer func() {
		if err := unlock(); err != nil {
			s.Log.Error("release drill lock after a sweep", "err", err)
		}
	}()
	said, err := s.Runner.Sweep(ctx)
	if err != nil {
		s.Log.Error("sweep drill leftovers", "err", err)
		if p != nil {
			if _, perr := p.Post(ctx, chat.Text(":warning: Could not remove what an interrupted restore drill left behind: "+ops.Explain(err)+" Look for resources tagged `"+ops.TagDrill+"`.")); perr != nil {
				s.Log.Error("report failed drill sweep", "err", perr)
			}
		}
		return
	}
	for _, line := range said {
		s.Log.Warn("drill sweep", "did", line)
		if p != nil {
			if _, err := p.Post(ctx, chat.Text(":broom: "+line)); err != nil {
				s.Log.Error("report drill sweep", "err", err)
			}
		}
	}
}

func (d Deps) drillNow(ctx context.Context, c Call) (Outcome, error) {
	dr, err := d.Drills.Run(ctx, c.Reply, "manual", c.Req.UserID, c.Req.ChannelID)
	var held *store.HeldError
	if errors.As(err, &held) {
		return Outcome{}, &UserError{Msg: fmt.Sprintf("a restore drill is already running: `%s`, requested by %s. Follow it in its message.", held.Holder.OpID, chat.Who(held.Holder.Requester))}
	}
	if err != nil {
		if dr == nil {
			return Outcome{}, err
		}
		return Outcome{Result: "failed", Detail: dr.ID + ": " + ops.Explain(err)}, nil
	}
	return Outcome{Result: "ok", Detail: dr.ID}, nil
}
