package bot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/engine"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/store"
)

// TarballRunner takes a tarball backup; nil when backup.bucket is unset.
type TarballRunner interface {
	Run(ctx context.Context, b *ops.Backup, p ops.Progress) error
	Steps() []string
	// Abandon cleans up after a run the bot died in (command, upload,
	// scratch space) and says what it did.
	Abandon(ctx context.Context, b *ops.Backup) []string
}

// Backups runs backups for every entry point (slash command, schedule,
// resume after a restart) the same way: one at a time per Services box,
// recorded, and streamed into a channel.
type Backups struct {
	EBS     *ops.EBSBackup
	Tarball TarballRunner
	Records ops.Records
	Store   *store.Store
	EC2     ops.EC2
	Policy  ops.Policy
	// Engine runs retention after a scheduled backup; its progress goes
	// to ReportChannel.
	Engine        *engine.Engine
	ReportChannel string
	NameTag       string
	DefaultMethod string
	SlashCommand  string
	Log           *slog.Logger
	// Stream options for tests (delivery pacing); zero means defaults.
	MinInterval time.Duration

	resumed sync.WaitGroup
}

// Wait returns when the backups picked up by Resume have finished.
func (s *Backups) Wait() { s.resumed.Wait() }

func (s *Backups) lockKey() string { return engine.BoxLock(s.NameTag) }

// Request says who wants which backup and where progress goes.
type BackupRequest struct {
	Method    string // "" = default
	Trigger   string // manual | scheduled
	Requester string // Slack user ID or "scheduler"
	Channel   string
	// ID, when set, is the backup's ID (the API gives it out before the
	// backup starts); Reason is recorded with it.
	ID     string
	Reason string
	// Started, when set, hears the backup's ID once it holds the box, before
	// any work: the caller may answer its requester then.
	Started func(id string)
}

// Run takes one backup and returns its record. A backup already running
// for the box gives a *store.HeldError naming it, and nothing is started.
func (s *Backups) Run(ctx context.Context, poster progress.Poster, r BackupRequest) (*ops.Backup, error) {
	method := r.Method
	if method == "" {
		method = s.DefaultMethod
	}
	if method == ops.MethodTarball && s.Tarball == nil {
		return nil, &UserError{Msg: "tarball backups need `backup.bucket` in the config. Nothing was run."}
	}
	id := r.ID
	if id == "" {
		id = ops.NewBackupID(time.Now())
	}
	b := &ops.Backup{ID: id, Method: method, Trigger: r.Trigger, Requester: r.Requester, Reason: r.Reason, Channel: r.Channel, Started: time.Now()}
	unlock, err := s.Store.TryLock(ctx, store.Lock{Key: s.lockKey(), OpID: b.ID, What: map[string]string{ops.MethodEBS: "EBS backup", ops.MethodTarball: "tarball backup"}[method], Requester: r.Requester, Process: s.Store.Process()})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := unlock(); err != nil {
			s.Log.Error("release backup lock", "backup", b.ID, "err", err)
		}
	}()
	if r.Started != nil {
		r.Started(b.ID)
	}
	steps, title := ops.EBSSteps, "EBS backup of the Services box"
	if method == ops.MethodTarball {
		steps, title = s.Tarball.Steps(), "Tarball backup of the Services box"
	}
	st := progress.Start(ctx, poster, progress.Options{OpID: b.ID, Title: title + " (`" + s.NameTag + "`)", Requester: r.Requester, Steps: steps, Log: s.Log, MinInterval: s.MinInterval})
	// A replica cut off from the shared state stops its backup before
	// another replica takes it for abandoned.
	wctx, cancel := s.Store.WorkContext(ctx)
	defer cancel()
	if method == ops.MethodTarball {
		err = s.Tarball.Run(wctx, b, st)
	} else {
		err = s.EBS.Run(wctx, b, st)
	}
	s.finish(ctx, st, b, err)
	return b, err
}

// finish writes the summary and waits, briefly, for it to reach Slack; the
// stream keeps trying on its own after that.
func (s *Backups) finish(ctx context.Context, st *progress.Stream, b *ops.Backup, err error) {
	switch {
	case err == nil:
		st.Finish(progress.Succeeded, BackupSummary(b, s.SlashCommand))
	case errors.Is(err, context.Canceled):
		if b.Method == ops.MethodEBS && len(b.Snapshots) > 0 {
			st.Finish(progress.Cancelled, "Stopped following the backup (the bot is shutting down). The snapshots go on in AWS; the bot follows them again when it starts.")
		} else {
			st.Finish(progress.Cancelled, "Stopped: the bot is shutting down. This backup is not a restore point and is not retried; take a new one when the bot is back.")
		}
	default:
		st.Finish(progress.Failed, fmt.Sprintf("Backup `%s` failed: %s It is not a restore point.", b.ID, ops.Explain(err)))
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	_ = st.Wait(wctx) // a Slack message, not state: the stream keeps trying on its own
}

// BackupSummary is the closing sentence of a backup.
func BackupSummary(b *ops.Backup, slash string) string {
	switch b.Method {
	case ops.MethodTarball:
		return fmt.Sprintf("Restore point `%s`: `s3://%s/%s`, %s, sha256 `%s`. Restore with `%s restore s3://%s/%s`.",
			b.ID, b.Bucket, b.Key, chat.Bytes(b.Size), b.SHA256, slash, b.Bucket, b.Key)
	default:
		var ids []string
		for _, s := range b.Snapshots {
			ids = append(ids, fmt.Sprintf("`%s` (%s)", s.ID, s.Device))
		}
		note := ""
		if len(b.Notes) > 0 {
			note = " Note: " + strings.Join(b.Notes, "; ") + "."
		}
		return fmt.Sprintf("Restore point `%s`: %d GiB of `%s` (%s) in %s.%s", b.ID, b.SizeGiB(), b.Shape.InstanceID, b.Shape.PrivateIP, strings.Join(ids, ", "), note)
	}
}

// Resume picks up backups that a previous run of the bot left running
// (stopped, crashed or shut down mid-way): EBS sets whose snapshots are
// known are followed to the end; anything else is marked interrupted and
// reported. Nothing is started again.
func (s *Backups) Resume(ctx context.Context, posterFor func(channel string) progress.Poster) {
	recs, err := s.Records.Backups(ctx)
	if err != nil {
		s.Log.Error("read backup records at start-up", "err", err)
		return
	}
	locks, err := s.Store.Locks(ctx)
	if err != nil {
		s.Log.Error("read locks at start-up", "err", err)
		return
	}
	for _, l := range locks {
		// A backup's or prune's lock of a process that is not alive (gone
		// with a restart, or a replica whose heartbeat stopped) is stale.
		// A journaled operation (op-…) keeps the box
		// until it is resumed or given up.
		if l.Key == s.lockKey() && !s.Store.Alive(ctx, l.Process) && !strings.HasPrefix(l.OpID, "op-") {
			s.Log.Warn("releasing a lock left by a previous run", "op", l.OpID, "since", l.Since)
			if err := s.Store.Unlock(ctx, l.Key, l.OpID); err != nil {
				s.Log.Error("release a lock left by a previous run; tried again at the next check", "op", l.OpID, "lock", l.Key, "err", err)
			}
		}
	}
	for _, b := range recs {
		if b.State != ops.StateRunning {
			continue
		}
		// A running backup holds the box from before its record exists
		// until after it is final: taking the lock here means no live
		// process (of this replica or another) is making it. The record
		// is then read again, in case it finished meanwhile.
		unlock, err := s.Store.TryLock(ctx, store.Lock{Key: s.lockKey(), OpID: b.ID, What: b.Method + " backup (resumed)", Requester: b.Requester, Process: s.Store.Process()})
		var held *store.HeldError
		if errors.As(err, &held) {
			if held.Holder.OpID != b.ID || !s.Store.Alive(ctx, held.Holder.Process) {
				s.Log.Warn("backup left running, but the box is held: looked at again later", "backup", b.ID, "holder", held.Holder.OpID)
			}
			continue
		}
		if err != nil {
			s.Log.Error("cannot resume backup", "backup", b.ID, "err", err)
			continue
		}
		if fresh, err := s.Records.Backup(ctx, b.ID); err != nil || fresh.State != ops.StateRunning {
			if err := unlock(); err != nil {
				s.Log.Error("release backup lock", "backup", b.ID, "err", err)
			}
			continue
		} else {
			b = fresh
		}
		poster := posterFor(b.Channel)
		if b.Method == ops.MethodEBS && len(b.Snapshots) > 0 {
			s.resumed.Go(func() {
				defer func() {
					if err := unlock(); err != nil {
						s.Log.Error("release backup lock", "backup", b.ID, "err", err)
					}
				}()
				st := progress.Start(ctx, poster, progress.Options{OpID: b.ID, Title: "EBS backup of the Services box, resumed after a bot restart", Requester: b.Requester, Steps: ops.EBSSteps, Log: s.Log, MinInterval: s.MinInterval})
				st.Done(0, "`"+b.Shape.InstanceID+"` (before the restart)")
				st.Done(1, fmt.Sprintf("%d snapshots (before the restart)", len(b.Snapshots)))
				st.Log("The bot restarted while this backup was being made; following its snapshots again. Nothing was created twice.")
				s.finish(ctx, st, b, s.EBS.Follow(ctx, b, st))
			})
			continue
		}
		var cleaned []string
		if b.Method == ops.MethodTarball && s.Tarball != nil {
			cleaned = s.Tarball.Abandon(ctx, b)
		}
		b.State, b.Error, b.Finished = ops.StateInterrupted, "the bot stopped before the backup's snapshots or upload were recorded", time.Now()
		b.Notes = append(b.Notes, cleaned...)
		if err := s.Records.SaveBackup(ctx, b); err != nil {
			s.Log.Error("mark backup interrupted", "backup", b.ID, "err", err)
		}
		if err := unlock(); err != nil {
			s.Log.Error("release backup lock", "backup", b.ID, "err", err)
		}
		msg := fmt.Sprintf(":warning: Backup `%s` (%s, requested by %s) was interrupted when the bot stopped, before its %s was recorded. It was not retried and is not a restore point. Run `%s backup now` to take a new one.",
			b.ID, b.Method, chat.Who(b.Requester), map[string]string{ops.MethodEBS: "snapshots", ops.MethodTarball: "upload"}[b.Method], s.SlashCommand)
		if len(cleaned) > 0 {
			msg += " Cleanup: " + strings.Join(cleaned, "; ") + "."
		}
		s.Log.Warn("interrupted backup", "backup", b.ID, "message", msg)
		if _, err := poster.Post(ctx, chat.Text(msg)); err != nil {
			s.Log.Error("report interrupted backup", "backup", b.ID, "err", err)
		}
	}
}

// PruneNow applies the retention policy after a scheduled backup; the
// policy in the config is its approval. The engine reports in the channel.
func (s *Backups) PruneNow(ctx context.Context, out engine.Out) error {
	err := s.Engine.Start(ctx, commands.Command{Name: commands.BackupPrune}, "scheduler", s.ReportChannel, out)
	if errors.Is(err, engine.ErrNothingToDo) {
		return nil
	}
	return err
}
