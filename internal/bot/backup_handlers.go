package bot

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/ops"
)

func (d Deps) backupNow(ctx context.Context, c Call) (Outcome, error) {
	b, err := d.Backups.Run(ctx, c.Reply, BackupRequest{Method: string(c.Cmd.Method), Requester: c.Req.UserID, Channel: c.Req.ChannelID})
	if b == nil {
		return Outcome{}, err // refused: nothing was started
	}
	if err != nil {
		// The progress message already says what failed, in the channel.
		return Outcome{Result: "failed", Detail: b.ID + ": " + ops.Explain(err)}, nil
	}
	return Outcome{Result: "ok", Detail: b.ID}, nil
}

func (d Deps) points(ctx context.Context) ([]ops.Point, error) {
	recs, err := d.Backups.Records.Backups(ctx)
	if err != nil {
		return nil, err
	}
	return ops.RestorePoints(ctx, d.Backups.EC2, recs)
}

func (d Deps) backupList(ctx context.Context, c Call) (Outcome, error) {
	pts, err := d.points(ctx)
	if err != nil {
		return Outcome{}, &UserError{Msg: ops.Explain(err)}
	}
	now := time.Now()
	var b strings.Builder
	if len(pts) == 0 {
		b.WriteString(":x: There are no restore points. Run `" + d.SlashCommand + " backup now`.")
	} else if newest, ok := ops.Newest(pts); ok {
		age := now.Sub(newest.Started)
		mark := ":white_check_mark:"
		if d.RPO > 0 && age > d.RPO {
			mark = ":warning:"
		}
		fmt.Fprintf(&b, "%s Newest restore point `%s` is %s old (RPO %s).\n", mark, newest.ID, chat.Age(age), chat.Age(d.RPO))
	} else {
		b.WriteString(":x: No completed restore point: every backup listed failed, is still running or is partly pruned.\n")
	}
	const show = 25
	for i, p := range pts {
		if i == show {
			fmt.Fprintf(&b, "… and %d older.\n", len(pts)-show)
			break
		}
		b.WriteString(pointLine(p, now))
		b.WriteByte('\n')
	}
	msg := chat.Message{Text: fmt.Sprintf("%d restore points", len(pts)), Blocks: append([]slack.Block{chat.Header("Restore points, newest first")}, chat.Section(b.String())...)}
	_, err = c.Reply.Post(ctx, msg.Fit())
	return OK, err
}

func pointLine(p ops.Point, now time.Time) string {
	state := map[string]string{ops.StateCompleted: ":white_check_mark:", ops.StateRunning: ":hourglass_flowing_sand:", ops.StateFailed: ":x:", ops.StateInterrupted: ":warning:", ops.StatePartlyPruned: ":wastebasket:"}[p.State]
	size := fmt.Sprintf("%d GiB", p.SizeGiB)
	if p.Method == ops.MethodTarball {
		size = chat.Bytes(p.Bytes)
	}
	by := "by hand (runbook)"
	if p.MadeByBot {
		by = p.Trigger + " by " + chat.Who(p.Requester)
	}
	line := fmt.Sprintf("%s `%s` %s, %s ago, %s, %s", state, p.ID, p.Method, chat.Age(now.Sub(p.Started)), size, by)
	if p.State == ops.StateRunning {
		line += fmt.Sprintf(", %.0f%%", p.Pct)
	}
	if p.PartlyPruned() {
		line += fmt.Sprintf(" — partly pruned: %d of its %d snapshots left by `%s`, which stopped part-way; not a restore point, the next prune deletes them", len(p.Snapshots), p.SetSize, p.PrunedBy)
	}
	if p.Error != "" {
		line += " — " + oneLine(p.Error, 120)
	}
	return line
}

func (d Deps) backupStatus(ctx context.Context, c Call) (Outcome, error) {
	pts, err := d.points(ctx)
	if err != nil {
		return Outcome{}, &UserError{Msg: ops.Explain(err)}
	}
	id := c.Cmd.ID
	for _, p := range pts {
		if p.ID != id && p.Location != id && !slices.Contains(p.Snapshots, id) {
			continue
		}
		var b strings.Builder
		b.WriteString(pointLine(p, time.Now()) + "\n")
		fmt.Fprintf(&b, "*Started* %s UTC\n", p.Started.UTC().Format("2006-01-02 15:04:05"))
		if p.PrunedBy != "" && !p.PartlyPruned() {
			fmt.Fprintf(&b, "*Marked for pruning* by `%s`, which stopped before deleting any of its snapshots; retention decides about it again at the next prune\n", p.PrunedBy)
		}
		if r := p.Record; r != nil {
			fmt.Fprintf(&b, "*Source* `%s` %s (%s, %s, subnet `%s`)\n", r.Shape.InstanceID, r.Shape.PrivateIP, r.Shape.Type, r.Shape.AZ, r.Shape.SubnetID)
			if !r.Finished.IsZero() {
				fmt.Fprintf(&b, "*Took* %s\n", r.Finished.Sub(r.Started).Round(time.Second))
			}
			for _, s := range r.Snapshots {
				if p.PartlyPruned() && !slices.Contains(p.Snapshots, s.ID) {
					fmt.Fprintf(&b, "• `%s` %s (`%s`) %d GiB — deleted by `%s`\n", s.ID, s.Device, s.VolumeID, s.SizeGiB, p.PrunedBy)
					continue
				}
				fmt.Fprintf(&b, "• `%s` %s (`%s`) %d GiB — %s %s\n", s.ID, s.Device, s.VolumeID, s.SizeGiB, s.State, s.Progress)
			}
			if r.SHA256 != "" {
				fmt.Fprintf(&b, "*Object* `s3://%s/%s` %s, sha256 `%s`\n", r.Bucket, r.Key, chat.Bytes(r.Size), r.SHA256)
			}
			for _, n := range r.Notes {
				b.WriteString(":warning: " + n + "\n")
			}
		} else {
			for _, s := range p.Snapshots {
				fmt.Fprintf(&b, "• `%s`\n", s)
			}
		}
		return OK, c.Reply.Ephemeral(ctx, chat.Text(b.String()))
	}
	return Outcome{}, &UserError{Msg: fmt.Sprintf("no restore point `%s` exists (see `%s backup list`).", id, d.SlashCommand)}
}
