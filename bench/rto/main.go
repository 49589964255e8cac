// Command rto measures recovery times on the AWS timing model
// (motoserver.WithTiming: moto whose state changes take the durations of
// one cited table, scaled) and prints them in predicted real minutes:
//
//		go run ./bench/rto            (make bench-rto)
//
//	  - the seed runbook's restore from EBS as a person runs it: each action
//	    typed or clicked (Model "human action"), each wait a console refresh
//	    every 30 s until the state shows;
//	  - the bot's restore by rebuild (`restore latest --rebuild`);
//	  - the bot's in-place restore (`restore latest`);
//	  - the bot's failover to a warm standby in the box's subnet;
//	  - the bot's reboot and resize;
//	  - the bot's in-place restore of a backup still completing, against
//	    waiting for it and then restoring.
//
// -only runs some of them (manual, rebuild, inplace, failover, reboot,
// resize, pending); -v prints each operation's steps; -scale 1 runs in
// real time, where moto's own latency is not multiplied into the
// overhead.
//
// Each row is one run on the same model. "to app start" is when the app's
// start command was accepted on the restored box (the app's own start-up,
// the same for every path, is not modelled); "AWS waits" is the sum of the
// model's durations on that path's critical path; the bot's overhead is
// the rest.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/bot"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/sandbox"
	"github.com/circlebot/circlebot/internal/slackio"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/slackfake"
	"github.com/circlebot/circlebot/internal/testenv/ssmbox"
)

// Assumptions of the manual path (not AWS's: the person's).
const (
	humanAction  = 20 * time.Second // to type or click one console or CLI action
	consolePoll  = 30 * time.Second // a person refreshes the console this often while waiting
	botPollReal  = 2 * time.Second  // the bot's default poll (ops.SnapshotRestore.Poll)
	scaleDefault = 1.0 / 10         // smaller factors amplify moto's own latency (×1/scale) into the overhead column
)

var (
	scale   float64
	verbose bool
	only    string
)

func sc(d time.Duration) time.Duration { return time.Duration(float64(d) * scale) }
func real(d time.Duration) time.Duration {
	return time.Duration(float64(d) / scale)
}
func m(key string) time.Duration { return motoserver.ModelDuration(key) }

func main() {
	flag.Float64Var(&scale, "scale", scaleDefault, "model time per AWS time (0.1: an AWS minute in 6 s)")
	flag.BoolVar(&verbose, "v", false, "print each operation's steps with their predicted real durations")
	flag.StringVar(&only, "only", "", "run only these paths (comma-separated: manual, rebuild, inplace, failover, reboot, resize, pending)")
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type row struct {
	name      string
	appStart  time.Duration // predicted real time to the app's start command
	awsWaits  time.Duration // the model's waits on the critical path
	note      string
	overheadP bool
}

func run() error {
	ctx := context.Background()
	moto, err := motoserver.Start(ctx, motoserver.WithTiming(scale))
	if err != nil {
		return err
	}
	defer moto.Close()
	paths := []struct {
		name string
		run  func(context.Context, *motoserver.Server) (row, error)
	}{{"manual", manual}, {"rebuild", rebuild}, {"inplace", inPlace}, {"failover", failover}, {"reboot", reboot}, {"resize", resize}, {"pending", pendingInPlace}}
	var rows []row
	byName := map[string]row{}
	for _, p := range paths {
		if only != "" && !slices.Contains(strings.Split(only, ","), p.name) {
			continue
		}
		r, err := p.run(ctx, moto)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		rows, byName[p.name] = append(rows, r), r
	}
	fmt.Printf("Recovery of the Services box on the AWS timing model (scale %.4f; predicted real minutes)\n\n", scale)
	fmt.Printf("%-54s %12s %10s %10s  %s\n", "how", "to app start", "AWS waits", "overhead", "")
	for _, r := range rows {
		over := "-"
		if r.overheadP {
			over = fmt.Sprintf("%.1f%%", 100*float64(r.appStart-r.awsWaits)/float64(r.appStart))
		}
		fmt.Printf("%-54s %12s %10s %10s  %s\n", r.name, mins(r.appStart), mins(r.awsWaits), over, r.note)
	}
	man, okM := byName["manual"]
	ip, okI := byName["inplace"]
	if okM && okI {
		fmt.Printf("\nIn-place restore: %s to the app's start, %.1f× faster than the runbook by hand.\n", mins(ip.appStart), float64(man.appStart)/float64(ip.appStart))
	}
	if okI {
		// What its two overlaps save, on the model's numbers: the volumes
		// made while the box still stops, the app started when the agent
		// answers rather than after both status checks.
		vol, checks := m("volume_create"), m("status_checks")-m("agent")
		fmt.Printf("Its overlaps save %s on the model: %s making the volumes while the box stops, %s starting the app when the agent answers instead of after both status checks.\n",
			(vol + checks).Round(time.Second), vol, checks)
	}
	fmt.Println("\nThe model (motoserver.Model):")
	for _, d := range motoserver.Model {
		v := d.Real.String()
		if d.Key == "snapshot_changed" {
			v = fmt.Sprintf("%.0f%%", d.Real.Seconds())
		}
		fmt.Printf("  %-17s %6s  %s — %s\n", d.Key, v, d.What, d.Source)
	}
	fmt.Printf("  human action %s, console refresh every %s (assumptions of the manual path)\n", humanAction, consolePoll)
	return nil
}

func mins(d time.Duration) string { return fmt.Sprintf("%.1f min", d.Minutes()) }

// --- the rig -------------------------------------------------------------------

// tb is the testing.TB ssmbox.New needs, outside a test.
type tb struct {
	testing.TB
	dir      string
	cleanups []func()
}

func (t *tb) Helper()                           {}
func (t *tb) TempDir() string                   { d, _ := os.MkdirTemp(t.dir, "ssm-"); return d }
func (t *tb) Cleanup(f func())                  { t.cleanups = append(t.cleanups, f) }
func (t *tb) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (t *tb) Logf(string, ...any)               {}
func (t *tb) close() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
	os.RemoveAll(t.dir)
}

type rig struct {
	moto  *motoserver.Server
	inst  *sandbox.Install
	ec2   *ec2.Client
	ssm   *ssmbox.Server
	t     *tb
	app   *app.App
	slack *slackfake.Server
	web   *slackio.Web
	dir   string
}

// seed resets moto, seeds the install and waits until the box has come up
// (in the model, a fresh launch is pending at first).
func seed(ctx context.Context, moto *motoserver.Server) (*rig, error) {
	if err := moto.Reset(ctx); err != nil {
		return nil, err
	}
	cfg := motoserver.AWSConfig(moto.URL)
	inst, err := sandbox.Seed(ctx, cfg, sandbox.Options{})
	if err != nil {
		return nil, err
	}
	r := &rig{moto: moto, inst: inst, ec2: ec2.NewFromConfig(cfg)}
	if err := r.waitChecks(ctx, inst.ServicesBox.ID, time.Second); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *rig) state(ctx context.Context, id string) (ec2types.Instance, error) {
	out, err := r.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil || len(out.Reservations) == 0 {
		return ec2types.Instance{}, fmt.Errorf("describe %s: %v", id, err)
	}
	return out.Reservations[0].Instances[0], nil
}

// poll calls ok every `every` (model time) until it says yes.
func poll(ctx context.Context, every time.Duration, ok func() (bool, error)) error {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		done, err := ok()
		if err != nil || done {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
}

func (r *rig) waitState(ctx context.Context, id string, every time.Duration, want ec2types.InstanceStateName) error {
	return poll(ctx, every, func() (bool, error) {
		in, err := r.state(ctx, id)
		return err == nil && in.State.Name == want, err
	})
}

func (r *rig) waitChecks(ctx context.Context, id string, every time.Duration) error {
	return poll(ctx, every, func() (bool, error) {
		out, err := r.ec2.DescribeInstanceStatus(ctx, &ec2.DescribeInstanceStatusInput{InstanceIds: []string{id}, IncludeAllInstances: aws.Bool(true)})
		if err != nil || len(out.InstanceStatuses) == 0 {
			return false, err
		}
		s := out.InstanceStatuses[0]
		return s.InstanceStatus.Status == ec2types.SummaryStatusOk && s.SystemStatus.Status == ec2types.SummaryStatusOk, nil
	})
}

// withBot adds the bot: its app on this moto, Slack's fake, an SSM
// stand-in whose agents answer as the model says, and one completed
// backup (the restore point).
func (r *rig) withBot(ctx context.Context, edit func(*config.Config)) (*ops.Backup, error) {
	r.t = &tb{}
	r.t.dir, _ = os.MkdirTemp("", "circlebot-rto-")
	r.ssm = ssmbox.New(r.t)
	box := r.ssm.AddBox(r.inst.ServicesBox.ID)
	box.SetAppState(ssmbox.AppStarted)
	setBoot(box, time.Now().Add(-48*time.Hour))
	r.ssm.RegisterNew(func(id string) bool { return strings.HasPrefix(id, "i-") && r.moto.AgentOnline(ctx, id) })
	// The agent as the model says, and the box's OS as a real one: when
	// the agent goes away the OS went down (the app with it); when it
	// answers again the OS has booted (a new btime in /proc/stat, which a
	// reboot waits for). The bot's polls send commands throughout a
	// wait, so no transition goes unseen.
	var mu sync.Mutex
	up := map[string]bool{}
	r.ssm.SetAgentGate(func(id string) bool {
		on := r.moto.AgentOnline(ctx, id)
		mu.Lock()
		was, seen := up[id]
		up[id] = on
		mu.Unlock()
		if b := r.ssm.Box(id); b != nil && seen && was != on {
			if on {
				setBoot(b, time.Now())
			} else {
				b.SetAppState(ssmbox.AppStopped)
			}
		}
		return on
	})
	r.slack = slackfake.New()
	r.dir, _ = os.MkdirTemp("", "circlebot-rto-data-")
	cfg := config.Defaults()
	cfg.DataDir = r.dir
	cfg.Slack.AllowedChannels = []string{"C0INCIDENT"}
	cfg.Roles.Operators = []string{"U0ALICE"}
	cfg.Roles.Approvers = []string{"U0BOB"}
	if edit != nil {
		edit(&cfg)
	}
	cfg.Secrets = config.SecretsFromEnv(func(k string) string {
		return map[string]string{"SLACK_BOT_TOKEN": "xoxb-bench", "SLACK_SIGNING_SECRET": "bench", "SLACK_API_URL": r.slack.APIURL()}[k]
	})
	awsCfg := motoserver.AWSConfig(r.moto.URL)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := app.New(ctx, app.Options{Config: cfg, Version: "bench", AWS: &awsCfg, SSMEndpoint: r.ssm.URL, Log: log})
	if err != nil {
		return nil, err
	}
	r.app = a
	// The bot's polls, scaled like everything else.
	a.Snapshot.Poll = sc(botPollReal)
	a.Failover.Poll = sc(botPollReal)
	a.Engine.MinInterval = sc(botPollReal)
	r.web = slackio.NewWeb("xoxb-bench", r.slack.APIURL(), log)
	return a.Backups.Run(ctx, r.web.For(chat.Request{ChannelID: "C0INCIDENT"}), bot.BackupRequest{Trigger: "manual", Requester: "U0ALICE", Channel: "C0INCIDENT"})
}

// setBoot writes the box's boot time where the kernel shows it.
func setBoot(b *ssmbox.Box, at time.Time) {
	p := b.Path("/proc/stat")
	stat := fmt.Sprintf("cpu  1 2 3 4\nbtime %d\nprocesses 42\n", at.Unix())
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		panic(err)
	}
	if err := os.WriteFile(p+".tmp", []byte(stat), 0o644); err != nil {
		panic(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		panic(err)
	}
}

func (r *rig) close() {
	if r.app != nil {
		r.app.Close()
	}
	if r.slack != nil {
		r.slack.Close()
	}
	if r.t != nil {
		r.t.close()
	}
	os.RemoveAll(r.dir)
}

// approved runs a destructive command through the bot: requested by
// Alice, approved by Bob; it returns the finished operation.
var handled int

func (r *rig) approved(ctx context.Context, text string) (*journal.Op, error) {
	handle := func(user, text string) {
		// Each its own ID: the bot answers a request ID once.
		handled++
		r.app.Bot.Handle(ctx, chat.Request{ID: fmt.Sprintf("bench-%d", handled), UserID: user, ChannelID: "C0INCIDENT", Text: text, Source: "bench"}, r.web.For(chat.Request{ChannelID: "C0INCIDENT", UserID: user}))
	}
	handle("U0ALICE", text)
	reqs, err := r.app.Approvals.Store.All(ctx)
	var pending string
	for _, q := range reqs {
		if q.State == approvals.Pending {
			pending = q.ID
		}
	}
	if err != nil || pending == "" {
		return nil, fmt.Errorf("%s: no pending request (%v)", text, err)
	}
	handle("U0BOB", "approve "+pending)
	op, err := r.app.Journal.ByRequest(ctx, pending)
	if verbose && op != nil {
		fmt.Fprintf(os.Stderr, "%s (%s):\n", text, op.ID)
		for _, s := range op.Steps {
			fmt.Fprintf(os.Stderr, "  %-50s %6.1fs .. %6.1fs  (%5.1fs)\n", s.Name, real(s.Started.Sub(op.Steps[0].Started)).Seconds(), real(s.Finished.Sub(op.Steps[0].Started)).Seconds(), real(s.Finished.Sub(s.Started)).Seconds())
		}
	}
	if err != nil || op.State != journal.Done {
		why := ""
		if op != nil {
			why = op.Why
		}
		return nil, fmt.Errorf("%s did not finish: %v %s", text, err, why)
	}
	return op, nil
}

// toStep is the time from the operation's start to the end of its step
// named name.
func toStep(op *journal.Op, name string) (time.Duration, error) {
	for _, s := range op.Steps {
		if s.Name == name {
			return s.Finished.Sub(op.Steps[0].Started), nil
		}
	}
	return 0, fmt.Errorf("%s has no step %q", op.ID, name)
}

// --- the paths -------------------------------------------------------------------

// manual is the runbook's "Restore from EBS" (register an image of the
// snapshot, launch it with --private-ip-address) after fencing the old
// box by hand, each action a human action and each wait a console
// refresh, ending when the person can start the app from the admin
// console (the box answers: its agent is the model's stand-in for that).
func manual(ctx context.Context, moto *motoserver.Server) (row, error) {
	r, err := seed(ctx, moto)
	if err != nil {
		return row{}, err
	}
	snaps, err := r.ec2.CreateSnapshots(ctx, &ec2.CreateSnapshotsInput{InstanceSpecification: &ec2types.InstanceSpecification{InstanceId: aws.String(r.inst.ServicesBox.ID)}})
	if err != nil {
		return row{}, err
	}
	var ids []string
	for _, s := range snaps.Snapshots {
		ids = append(ids, aws.ToString(s.SnapshotId))
	}
	if err := poll(ctx, sc(time.Second), func() (bool, error) {
		out, err := r.ec2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: ids})
		if err != nil {
			return false, err
		}
		for _, s := range out.Snapshots {
			if s.State != ec2types.SnapshotStateCompleted {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		return row{}, err
	}
	start := time.Now()
	act := func() { time.Sleep(sc(humanAction)) } // a person typing: model time, not a wait for a state
	every := sc(consolePoll)
	act() // describe-snapshots, pick the newest
	act() // describe-instances: the old box's subnet, security groups, type and IP, which the relaunch must repeat ("the same SecurityGroups")
	var bdm []ec2types.BlockDeviceMapping
	for _, s := range snaps.Snapshots {
		out, _ := r.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{aws.ToString(s.VolumeId)}})
		dev := aws.ToString(out.Volumes[0].Attachments[0].Device)
		bdm = append(bdm, ec2types.BlockDeviceMapping{DeviceName: aws.String(dev), Ebs: &ec2types.EbsBlockDevice{SnapshotId: s.SnapshotId}})
	}
	act() // register-image
	img, err := r.ec2.RegisterImage(ctx, &ec2.RegisterImageInput{Name: aws.String("CircleCI-restore"), Architecture: ec2types.ArchitectureValuesX8664, RootDeviceName: aws.String("/dev/sda1"), BlockDeviceMappings: bdm})
	if err != nil {
		return row{}, err
	}
	if err := poll(ctx, every, func() (bool, error) {
		out, err := r.ec2.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{aws.ToString(img.ImageId)}})
		return err == nil && len(out.Images) == 1 && out.Images[0].State == ec2types.ImageStateAvailable, err
	}); err != nil {
		return row{}, err
	}
	act() // stop the old box ("ensure the initial machine is dead")
	if _, err := r.ec2.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{r.inst.ServicesBox.ID}}); err != nil {
		return row{}, err
	}
	if err := r.waitState(ctx, r.inst.ServicesBox.ID, every, ec2types.InstanceStateNameStopped); err != nil {
		return row{}, err
	}
	act() // terminate it, to free its private IP
	if _, err := r.ec2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{r.inst.ServicesBox.ID}}); err != nil {
		return row{}, err
	}
	act() // run-instances --private-ip-address, tried until the IP is free
	var newID string
	if err := poll(ctx, every, func() (bool, error) {
		out, err := r.ec2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: img.ImageId, InstanceType: ec2types.InstanceType(r.inst.ServicesBox.Type), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
			SubnetId: aws.String(r.inst.ServicesBox.SubnetID), PrivateIpAddress: aws.String(r.inst.ServicesBox.PrivateIP), SecurityGroupIds: []string{r.inst.SecurityGroupID}})
		if err != nil {
			if strings.Contains(err.Error(), "InUse") {
				return false, nil
			}
			return false, err
		}
		newID = aws.ToString(out.Instances[0].InstanceId)
		return true, nil
	}); err != nil {
		return row{}, err
	}
	if err := r.waitChecks(ctx, newID, every); err != nil { // "2/2 checks passed" in the console
		return row{}, err
	}
	act() // the admin console on :8800, Start
	took := real(time.Since(start))
	waits := m("image") + m("stop") + m("terminate") + m("ip_release") + m("launch") + m("status_checks") + 7*humanAction
	return row{name: "runbook by hand (register image, relaunch)", appStart: took, awsWaits: waits, note: "7 actions of a person, console refreshed every 30 s"}, nil
}

// botToApp runs command (made for the seeded rig) through the bot, after
// one backup, on a freshly seeded install, and returns the predicted real
// time from its first step to the end of "Start the app".
func botToApp(ctx context.Context, moto *motoserver.Server, command func(*rig) string) (time.Duration, error) {
	r, err := seed(ctx, moto)
	if err != nil {
		return 0, err
	}
	defer r.close()
	if _, err := r.withBot(ctx, nil); err != nil {
		return 0, err
	}
	op, err := r.approved(ctx, command(r))
	if err != nil {
		return 0, err
	}
	d, err := toStep(op, "Start the app")
	return real(d), err
}

func text(s string) func(*rig) string { return func(*rig) string { return s } }

func rebuild(ctx context.Context, moto *motoserver.Server) (row, error) {
	d, err := botToApp(ctx, moto, text("restore latest --rebuild"))
	if err != nil {
		return row{}, err
	}
	waits := m("image") + m("stop") + m("terminate") + m("ip_release") + m("launch") + m("status_checks")
	return row{name: "bot: restore --rebuild (image, new instance)", appStart: d, awsWaits: waits, overheadP: true, note: "app started after both status checks"}, nil
}

func inPlace(ctx context.Context, moto *motoserver.Server) (row, error) {
	d, err := botToApp(ctx, moto, text("restore latest"))
	if err != nil {
		return row{}, err
	}
	// The volumes are created while the box stops (overlap 1), so
	// volume_create is off the critical path; the app starts when the
	// agent answers (overlap 2), before the status checks.
	waits := m("stop") + m("volume_detach") + m("volume_attach") + m("start") + m("agent") // detaches, then attaches, at once
	return row{name: "bot: restore in place (swap the volumes)", appStart: d, awsWaits: waits, overheadP: true, note: "volumes made while it stops; app at agent online"}, nil
}

// failover to a warm standby in the box's subnet (already running, its
// agent up): the fence is the wait.
func failover(ctx context.Context, moto *motoserver.Server) (row, error) {
	r, err := seed(ctx, moto)
	if err != nil {
		return row{}, err
	}
	defer r.close()
	out, err := r.ec2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String(r.inst.ImageID), InstanceType: ec2types.InstanceType(r.inst.ServicesBox.Type), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		SubnetId: aws.String(r.inst.ServicesBox.SubnetID), SecurityGroupIds: []string{r.inst.SecurityGroupID},
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String("circleci_services_standby")}}}}})
	if err != nil {
		return row{}, err
	}
	standby := aws.ToString(out.Instances[0].InstanceId)
	if err := r.waitChecks(ctx, standby, time.Second/10); err != nil {
		return row{}, err
	}
	if _, err := r.withBot(ctx, nil); err != nil {
		return row{}, err
	}
	// The standby's OS as a replica's: Ubuntu, its primary interface
	// ens5, the app stopped. The failover configures the service address
	// there (failover.os_address_command's default).
	sb := r.ssm.AddBox(standby)
	sb.SetAppState(ssmbox.AppStopped)
	sb.SetOS("ubuntu", "22.04")
	nic := out.Instances[0].NetworkInterfaces[0]
	sb.SetInterface("ens5", aws.ToString(nic.MacAddress), aws.ToString(nic.PrivateIpAddress)+"/24")
	op, err := r.approved(ctx, "failover --to "+standby)
	if err != nil {
		return row{}, err
	}
	var last string
	for _, s := range op.Steps {
		if strings.Contains(strings.ToLower(s.Name), "start the app") {
			last = s.Name
		}
	}
	d, err := toStep(op, last)
	if err != nil {
		return row{}, err
	}
	return row{name: "bot: failover to a warm standby", appStart: real(d), awsWaits: m("stop"), overheadP: true, note: "fence (stop), move the IP, start the app"}, nil
}

// reboot is `reboot`: RebootInstances, the box back (its agent answers
// with a boot after the call), the app started.
func reboot(ctx context.Context, moto *motoserver.Server) (row, error) {
	d, err := botToApp(ctx, moto, text("reboot"))
	if err != nil {
		return row{}, err
	}
	return row{name: "bot: reboot", appStart: d, awsWaits: m("reboot_agent"), overheadP: true, note: "app started when the rebooted agent answers"}, nil
}

// resize is `resize`: stop, change the type, start, the app at agent
// online.
func resize(ctx context.Context, moto *motoserver.Server) (row, error) {
	to := "m5.4xlarge"
	d, err := botToApp(ctx, moto, func(r *rig) string {
		if r.inst.ServicesBox.Type == to {
			to = "m5.2xlarge"
		}
		return "resize " + to
	})
	if err != nil {
		return row{}, err
	}
	return row{name: "bot: resize (stop, set the type, start)", appStart: d, awsWaits: m("stop") + m("start") + m("agent"), overheadP: true, note: "to " + to + "; app started when the agent answers"}, nil
}

// pendingInPlace is `backup now` on a box that must be restored (the
// bot's EBS backup: one CreateSnapshots of every volume, tagged with its
// ID) and the in-place restore of that backup requested at once, while
// its snapshots are still pending: the restore follows their progress
// and stops the box for their tail. Timed from the snapshots' request to
// the app's start; compared with waiting for them to complete and then
// restoring the completed set (the same restore again, on this rig).
func pendingInPlace(ctx context.Context, moto *motoserver.Server) (row, error) {
	r, err := seed(ctx, moto)
	if err != nil {
		return row{}, err
	}
	defer r.close()
	if _, err := r.withBot(ctx, nil); err != nil {
		return row{}, err
	}
	// The stop the bot assumes before it has measured one, scaled.
	r.app.Snapshot.StopLead = sc(ops.DefaultStopLead)
	start := time.Now()
	bk := ops.NewBackupID(start)
	snaps, err := r.ec2.CreateSnapshots(ctx, &ec2.CreateSnapshotsInput{
		InstanceSpecification: &ec2types.InstanceSpecification{InstanceId: aws.String(r.inst.ServicesBox.ID)},
		Description:           aws.String(ops.BackupDescription(start)),
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeSnapshot, Tags: []ec2types.Tag{
			{Key: aws.String(ops.TagBackupID), Value: aws.String(bk)}}}},
	})
	if err != nil {
		return row{}, err
	}
	box, err := r.state(ctx, r.inst.ServicesBox.ID)
	if err != nil {
		return row{}, err
	}
	devices := map[string]string{}
	for _, bm := range box.BlockDeviceMappings {
		devices[aws.ToString(bm.Ebs.VolumeId)] = aws.ToString(bm.DeviceName)
	}
	var ids []string
	var largest int32
	for _, s := range snaps.Snapshots {
		ids = append(ids, aws.ToString(s.SnapshotId))
		largest = max(largest, aws.ToInt32(s.VolumeSize))
		// As the backup's next step does: each snapshot's device.
		if _, err := r.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{aws.ToString(s.SnapshotId)}, Tags: []ec2types.Tag{
			{Key: aws.String(ops.TagDevice), Value: aws.String(devices[aws.ToString(s.VolumeId)])}}}); err != nil {
			return row{}, err
		}
	}
	// When they complete, watched on the side.
	completed := make(chan time.Time, 1)
	go func() {
		_ = poll(ctx, sc(time.Second), func() (bool, error) {
			out, err := r.ec2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: ids})
			if err != nil {
				return false, err
			}
			for _, s := range out.Snapshots {
				if s.State != ec2types.SnapshotStateCompleted {
					return false, nil
				}
			}
			return true, nil
		})
		completed <- time.Now()
	}()
	op, err := r.approved(ctx, "restore "+bk)
	if err != nil {
		return row{}, err
	}
	app, err := toStep(op, "Start the app")
	if err != nil {
		return row{}, err
	}
	overlapped := op.Steps[0].Started.Sub(start) + app
	snapTook := (<-completed).Sub(start)
	// Waiting instead: the snapshots' time, then the restore of the
	// completed set (now the newest).
	again, err := r.approved(ctx, "restore latest")
	if err != nil {
		return row{}, err
	}
	if !strings.Contains(again.Plan, `"source":"`+bk+`"`) {
		return row{}, fmt.Errorf("restore latest after %s completed did not restore it", bk)
	}
	after, err := toStep(again, "Start the app")
	if err != nil {
		return row{}, err
	}
	waited := snapTook + after
	snap := m("snapshot_base") + time.Duration(float64(largest)*m("snapshot_changed").Seconds()/100*float64(m("snapshot_per_gib")))
	// The stop overlaps the snapshots' tail; after they complete: the
	// volumes, the swap, the start and the agent.
	waits := snap + m("volume_create") + m("volume_detach") + m("volume_attach") + m("start") + m("agent")
	return row{name: "bot: restore in place from a backup still completing", appStart: real(overlapped), awsWaits: waits, overheadP: true,
		note: fmt.Sprintf("from `backup now`; waiting for it, then restoring: %s (the overlap saved %.1f min)", mins(real(waited)), real(waited-overlapped).Minutes())}, nil
}
