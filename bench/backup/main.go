// Command backup measures the EBS backup path against moto and prints a
// table:
//
//		go run ./bench/backup            (make bench-backup)
//
//	  - `backup now` end to end (find the box, CreateSnapshots for 3 volumes,
//	    follow to completion, record) through the real app and Slack fake;
//	  - the delay between the snapshots turning completed and the bot
//	    noticing, beside the SDK's SnapshotCompleted waiter watching the same
//	    snapshots from the same moment;
//	  - Slack Web API calls per backup.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/bot"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/sandbox"
	"github.com/circlebot/circlebot/internal/slackio"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/slackfake"
)

func main() {
	runs := flag.Int("runs", 20, "backups for the end-to-end timing")
	samples := flag.Int("samples", 3, "completion-delay samples (each costs at least 15 s for the SDK waiter)")
	flag.Parse()
	if err := run(*runs, *samples); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type rig struct {
	moto  *motoserver.Server
	slack *slackfake.Server
	app   *app.App
	inst  *sandbox.Install
	web   *slackio.Web
	dir   string
}

func newRig(ctx context.Context, moto *motoserver.Server) (*rig, error) {
	if err := moto.Reset(ctx); err != nil {
		return nil, err
	}
	inst, err := sandbox.Seed(ctx, motoserver.AWSConfig(moto.URL), sandbox.Options{})
	if err != nil {
		return nil, err
	}
	fake := slackfake.New()
	dir, _ := os.MkdirTemp("", "circlebot-bench-")
	cfg := config.Defaults()
	cfg.DataDir = dir
	cfg.Slack.AllowedChannels = []string{"C0INCIDENT"}
	cfg.Roles.Operators = []string{"U0ALICE"}
	cfg.Secrets = config.SecretsFromEnv(func(k string) string {
		return map[string]string{"SLACK_BOT_TOKEN": "xoxb-bench", "SLACK_SIGNING_SECRET": "bench", "SLACK_API_URL": fake.APIURL()}[k]
	})
	awsCfg := motoserver.AWSConfig(moto.URL)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := app.New(ctx, app.Options{Config: cfg, Version: "bench", AWS: &awsCfg, Log: log})
	if err != nil {
		return nil, err
	}
	return &rig{moto: moto, slack: fake, app: a, inst: inst, web: slackio.NewWeb("xoxb-bench", fake.APIURL(), log), dir: dir}, nil
}

func (r *rig) close() { r.app.Close(); r.slack.Close(); os.RemoveAll(r.dir) }

func (r *rig) backup(ctx context.Context) (*ops.Backup, error) {
	return r.app.Backups.Run(ctx, r.web.For(chat.Request{ChannelID: "C0INCIDENT"}), bot.BackupRequest{Requester: "U0ALICE", Channel: "C0INCIDENT"})
}

func run(runs, samples int) error {
	ctx := context.Background()
	plain, err := motoserver.Start(ctx)
	if err != nil {
		return err
	}
	defer plain.Close()
	r, err := newRig(ctx, plain)
	if err != nil {
		return err
	}
	var took, work []time.Duration
	var calls []int
	for range runs {
		before := len(r.slack.Calls())
		start := time.Now()
		b, err := r.backup(ctx)
		if err != nil {
			return err
		}
		took = append(took, time.Since(start))
		work = append(work, b.Finished.Sub(b.Started))
		calls = append(calls, len(r.slack.Calls())-before)
	}
	r.close()

	patched, err := motoserver.Start(ctx, motoserver.WithPatchedSnapshots())
	if err != nil {
		return err
	}
	defer patched.Close()
	r, err = newRig(ctx, patched)
	if err != nil {
		return err
	}
	defer r.close()
	api := ec2.NewFromConfig(motoserver.AWSConfig(patched.URL))
	var botDelay, waiterDelay []time.Duration
	holds := []time.Duration{time.Second, 4 * time.Second, 9 * time.Second}
	for i := range samples {
		var b *ops.Backup
		var berr error
		done := make(chan time.Time, 1)
		go func() { b, berr = r.backup(ctx); done <- time.Now() }()
		var ids []string
		for deadline := time.Now().Add(time.Minute); len(ids) == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if recs, _ := r.app.Backups.Records.Backups(ctx); len(recs) > 0 && recs[0].State == ops.StateRunning && len(recs[0].Snapshots) == 3 {
				for _, s := range recs[0].Snapshots {
					ids = append(ids, s.ID)
				}
			}
		}
		if len(ids) == 0 {
			return fmt.Errorf("sample %d: backup never created snapshots", i)
		}
		var wg sync.WaitGroup
		waiterDone := make(chan time.Time, 1)
		wg.Go(func() {
			w := ec2.NewSnapshotCompletedWaiter(api)
			if err := w.Wait(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: ids}, 10*time.Minute); err != nil {
				fmt.Fprintln(os.Stderr, "waiter:", err)
			}
			waiterDone <- time.Now()
		})
		time.Sleep(holds[i%len(holds)]) // snapshots "take" this long
		flipped := time.Now()
		for _, id := range ids {
			if err := patched.SetSnapshotState(ctx, id, "completed", "100%"); err != nil {
				return err
			}
		}
		<-done
		wg.Wait()
		if berr != nil || b == nil {
			return fmt.Errorf("sample %d: %v", i, berr)
		}
		// Finished is stamped when the bot saw the set complete, before the
		// final Slack update (which is paced at 1/s) goes out.
		botDelay = append(botDelay, b.Finished.Sub(flipped))
		waiterDelay = append(waiterDelay, (<-waiterDone).Sub(flipped))
	}

	fmt.Printf("EBS backup benchmark (moto_server, 3 volumes, %d runs, %d completion samples)\n\n", runs, samples)
	fmt.Printf("%-52s %10s %10s %10s\n", "measure", "median", "p95", "max")
	row := func(name string, d []time.Duration) {
		slices.Sort(d)
		fmt.Printf("%-52s %10s %10s %10s\n", name, d[len(d)/2].Round(time.Millisecond), d[(len(d)*95)/100].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond))
	}
	row("backup now: AWS work (find, CreateSnapshots, follow)", work)
	row("backup now, end to end incl. final Slack update", took)
	row("completed -> noticed: the bot (poll 0.5 s .. 1.5 s)", botDelay)
	row("completed -> noticed: SDK SnapshotCompleted waiter", waiterDelay)
	slices.Sort(calls)
	fmt.Printf("%-52s %10d %10d %10d\n", "Slack Web API calls per backup", calls[len(calls)/2], calls[(len(calls)*95)/100], calls[len(calls)-1])
	return nil
}
