package bot

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/engine"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
)

// Backups takes backups for every entry point (slash command, schedule)
// the same way: through the engine, whose backup kinds journal them, hold
// the box while they run, stream them into a channel and recover them
// after a crash (continued for EBS, abandoned with a clean-up for
// tarballs). The records they keep are the catalogue read here.
type Backups struct {
	// EBS and Tarball are what the engine's backup kinds act with (nil
	// Tarball: backup.bucket unset); kept here for tuning in tests.
	EBS     *ops.EBSBackup
	Tarball *ops.TarballBackup
	Records ops.Records
	EC2     ops.EC2
	Policy  ops.Policy
	// Engine runs backups, and retention after a scheduled backup; its
	// progress goes to ReportChannel.
	Engine        *engine.Engine
	ReportChannel string
	Log           *slog.Logger
}

// BackupRequest says who wants which backup and where progress goes.
type BackupRequest struct {
	Method    string // "" = default
	Requester string // Slack user ID, or engine.Scheduler (a scheduled backup)
	Channel   string
	// Trigger is "api" for the backup API ("": from the requester).
	Trigger string
	// ID, when set, is the backup's ID (the API gives it out before the
	// backup starts); Reason is recorded with it.
	ID     string
	Reason string
	// Started, when set, hears the backup's ID once it holds the box, before
	// any work: the caller may answer its requester then.
	Started func(id string)
}

// Run takes one backup and returns its record. A backup or other
// operation already holding the box is a refusal naming it, and nothing
// is started.
func (s *Backups) Run(ctx context.Context, poster progress.Poster, r BackupRequest) (*ops.Backup, error) {
	cmd := commands.Command{Name: commands.BackupNow, Method: commands.BackupMethod(r.Method)}
	id, err := s.Engine.StartWith(ctx, cmd, r.Requester, r.Channel, poster, engine.StartOptions{ID: r.ID, Trigger: r.Trigger, Reason: r.Reason, Started: r.Started})
	if id == "" {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	b, rerr := s.Records.Backup(rctx, id)
	if rerr != nil {
		// Its record could not be written or read (the store failed):
		// what it would say is in the error.
		return &ops.Backup{ID: id, State: ops.StateFailed}, errors.Join(err, rerr)
	}
	return b, err
}

// PruneNow applies the retention policy after a scheduled backup; the
// policy in the config is its approval. The engine reports in the channel.
func (s *Backups) PruneNow(ctx context.Context, out engine.Out) error {
	_, err := s.Engine.Start(ctx, commands.Command{Name: commands.BackupPrune}, engine.Scheduler, s.ReportChannel, out)
	if errors.Is(err, engine.ErrNothingToDo) {
		return nil
	}
	return err
}
