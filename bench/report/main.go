// Command report measures the daily report over a large account: 10,000
// backup snapshots in moto (3,334 tagged sets; moto stamps them all "now",
// so the time series is short, but listing and grouping see all 10,000),
// the report built from AWS and bbolt as the bot does, and the chart drawn:
//
//	go run ./bench/report            (make bench-report)
//
// It prints where the time goes: listing the snapshots (AWS pagination),
// the bot's own computation, the chart.
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
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/bot"
	"github.com/circlebot/circlebot/internal/chart"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/sandbox"
	"github.com/circlebot/circlebot/internal/store"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
)

func main() {
	n := flag.Int("snapshots", 10000, "backup snapshots to create")
	runs := flag.Int("runs", 5, "reports to time")
	flag.Parse()
	if err := run(*n, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(n, runs int) error {
	ctx := context.Background()
	moto, err := motoserver.Start(ctx)
	if err != nil {
		return err
	}
	defer moto.Close()
	direct := motoserver.AWSConfig(moto.URL)
	inst, err := sandbox.Seed(ctx, direct, sandbox.Options{})
	if err != nil {
		return err
	}
	api := ec2.NewFromConfig(direct)
	start := time.Now()
	if err := fill(ctx, api, inst, n); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: created %d snapshots in %s\n", n, time.Since(start).Round(time.Second))

	proxy := faultproxy.New(moto.URL, faultproxy.Faults{})
	defer proxy.Close()
	viaProxy := ec2.NewFromConfig(motoserver.AWSConfig(proxy.URL))
	dir, _ := os.MkdirTemp("", "circlebot-bench-report-")
	defer os.RemoveAll(dir)
	st, err := store.Open(dir)
	if err != nil {
		return err
	}
	defer st.Close()
	reports := &bot.Reports{EC2: viaProxy, Prune: viaProxy, Records: ops.Records{Store: st}, Drills: ops.Drills{Store: st},
		Policy: ops.Policy{KeepLast: 30, KeepDaily: 30}, Schedule: "0 */8 * * *", RPO: 8 * time.Hour, SlashCommand: "/circleci",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}

	var gather, build, draw, total []time.Duration
	pages := 0
	for range runs {
		proxy.Reset()
		t0 := time.Now()
		in, err := reports.Gather(ctx) // AWS: snapshots (paginated), images; bbolt
		if err != nil {
			return err
		}
		t1 := time.Now()
		r := ops.BuildReport(in) // the bot's own computation
		_ = bot.ReportText(r, "/circleci")
		t2 := time.Now()
		if _, err := chart.PNG(r); err != nil {
			return err
		}
		t3 := time.Now()
		pages = proxy.Count("DescribeSnapshots")
		gather, build, draw, total = append(gather, t1.Sub(t0)), append(build, t2.Sub(t1)), append(draw, t3.Sub(t2)), append(total, t3.Sub(t0))
		if r.Count == 0 {
			return fmt.Errorf("no restore points")
		}
	}
	fmt.Printf("Daily report over %d snapshots in moto_server (%d runs; %d DescribeSnapshots call(s) per report)\n\n", n, runs, pages)
	fmt.Printf("%-56s %10s %10s\n", "part", "median", "max")
	row := func(name string, d []time.Duration) {
		slices.Sort(d)
		fmt.Printf("%-56s %10s %10s\n", name, d[len(d)/2].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond))
	}
	row("read AWS and bbolt (DescribeSnapshots pages, images)", gather)
	row("the bot's computation (report, sawtooth, text)", build)
	row("draw the chart (PNG)", draw)
	row("report end to end", total)
	return nil
}

// fill makes n snapshots in sets of three, tagged as the bot's backups.
func fill(ctx context.Context, api *ec2.Client, inst *sandbox.Install, n int) error {
	sets := (n + 2) / 3
	var made atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	next := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range next {
				at := time.Now().Add(-time.Duration(i) * time.Hour)
				id := ops.NewBackupID(at)
				for v, vol := range inst.ServicesBox.Volumes {
					if int(made.Load()) >= n {
						break
					}
					_, err := api.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: aws.String(vol), Description: aws.String(ops.BackupDescription(at)),
						TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeSnapshot, Tags: []ec2types.Tag{
							{Key: aws.String(ops.TagBackupID), Value: aws.String(id)}, {Key: aws.String(ops.TagDevice), Value: aws.String(fmt.Sprintf("/dev/sd%c", 'f'+v))},
							{Key: aws.String(ops.TagTrigger), Value: aws.String("scheduled")}}}}})
					if err != nil {
						select {
						case errc <- err:
						default:
						}
						return
					}
					made.Add(1)
				}
			}
		})
	}
	for i := range sets {
		next <- i
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}
