package app_test

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/slackio"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/slackfake"
)

// `report now` posts the report and attaches the chart through Slack's
// external upload flow; the PNG decodes.
func TestReportNowPostsTheReportAndTheChart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.slash(alice, incident, "backup now")
	b := e.lastBackup(ops.StateCompleted)
	e.server.Wait()
	e.slash(alice, incident, "report now")
	txt := e.waitText("report", "Daily backup report", b.ID)
	// The seeded runbook set and the bot's backup: two sets of 180 GiB.
	for _, want := range []string{"Totals:* 2 completed restore points, 360 GiB", "No successful restore drill", "RPO 24h)", "2 restore point(s)",
		"in-place restores: none measured yet; the prediction is the timing model's default, about 2–3 min", "drills, to healthy: none measured yet"} {
		if !strings.Contains(txt, want) {
			t.Errorf("report lacks %q:\n%s", want, txt)
		}
	}
	e.slack.WaitFor(t, 30*time.Second, "completed upload", func(c slackfake.Call) bool { return c.Method == "files.completeUploadExternal" })
	e.server.Wait()
	ups := e.slack.Uploads()
	if len(ups) != 1 {
		t.Fatalf("%d uploads", len(ups))
	}
	for _, data := range ups {
		if _, err := png.Decode(bytes.NewReader(data)); err != nil {
			t.Fatalf("the chart is not a PNG: %v", err)
		}
	}
	for _, c := range e.slack.Calls() {
		if c.Method == "files.completeUploadExternal" && (c.Channel != incident || c.ThreadTS == "") {
			t.Errorf("chart shared to channel %q thread %q, want the report's thread in %s", c.Channel, c.ThreadTS, incident)
		}
	}
}

type drillEnv struct {
	*restoreEnv
	subnet, sg string
}

// newDrillEnv is a restore env whose drills run in the sandbox's
// isolated drill subnet and security group.
func newDrillEnv(t *testing.T) *drillEnv {
	t.Helper()
	d := &drillEnv{}
	r := newRestoreEnv(t, nil)
	d.restoreEnv, d.subnet, d.sg = r, r.inst.DrillSubnet, r.inst.DrillSecurityGroup
	d.setDrill(r.app)
	return d
}

func (d *drillEnv) setDrill(a *app.App) {
	a.Drills.Runner.Subnet, a.Drills.Runner.SecurityGroup = d.subnet, d.sg
	a.Drills.Runner.Poll = 20 * time.Millisecond
	a.Engine.MinInterval = 20 * time.Millisecond
}

// leftovers lists what drills left in AWS.
func (e *env) leftovers() []string {
	e.t.Helper()
	ctx := context.Background()
	api := ec2.NewFromConfig(e.aws)
	var left []string
	in, err := api.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{{Name: aws.String("tag-key"), Values: []string{ops.TagDrill}}}})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, r := range in.Reservations {
		for _, i := range r.Instances {
			if i.State.Name != ec2types.InstanceStateNameTerminated {
				left = append(left, "instance "+aws.ToString(i.InstanceId)+" "+string(i.State.Name))
			}
		}
	}
	imgs, err := api.DescribeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"self"}, Filters: []ec2types.Filter{{Name: aws.String("name"), Values: []string{"circleci-drill-*"}}}})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, i := range imgs.Images {
		left = append(left, "image "+aws.ToString(i.ImageId))
	}
	vols, err := api.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: []ec2types.Filter{{Name: aws.String("tag-key"), Values: []string{ops.TagDrill}}}})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, v := range vols.Volumes {
		left = append(left, "volume "+aws.ToString(v.VolumeId)+" "+string(v.State))
	}
	return left
}

// A drill restores the newest restore point into the isolated subnet,
// measures it, and leaves no instance, image or volume behind; the
// restore point itself is untouched; the next report shows the drill.
func TestDrillMeasuresAndLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	d := newDrillEnv(t)
	d.slash(alice, incident, "drill now")
	// The progress message has each step's time; the health step says
	// the status checks' share apart.
	d.waitText("drill result", "restores: healthy in", "Make an image — ", "Wait until healthy — ", "EC2 status checks passed after ")
	d.server.Wait()
	if left := d.leftovers(); len(left) != 0 {
		t.Fatalf("the drill left %v", left)
	}
	drills, _ := d.app.Drills.Runner.Records.All(t.Context())
	if len(drills) != 1 || drills[0].State != ops.DrillPassed || drills[0].RestoreTime <= 0 || drills[0].Source != d.backup.ID {
		t.Fatalf("drill record: %+v", drills)
	}
	if n := len(d.snapshotsOf(d.backup.ID)); n != len(d.backup.Snapshots) {
		t.Errorf("the drill touched the restore point: %d snapshots left", n)
	}
	// Production was not touched.
	if st := d.instance(d.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Errorf("the box is %s after a drill", st)
	}
	d.slash(alice, incident, "report now")
	// It measured the rebuild's image, launch and status checks: the
	// report's rebuild prediction rests on it.
	d.waitText("report with drill", "Last successful restore drill:* `"+drills[0].ID+"`", "drills, to healthy: ", "from 1 drill ("+drills[0].ID+")")
}

// A drill whose bot dies mid-way (it hangs here, as a dead process would)
// is swept at the next start: nothing is left and the record says so.
func TestInterruptedDrillIsSweptAtStartUp(t *testing.T) {
	t.Parallel()
	d := newDrillEnv(t)
	hang := make(chan struct{})
	var once sync.Once
	d.proxy.SetFaults(faultproxy.Faults{Match: func(c faultproxy.Call) bool {
		if c.Action == "DescribeInstanceStatus" {
			once.Do(func() { <-hang }) // the bot is gone while waiting for health
		}
		return false
	}})
	web := slackio.NewWeb(botToken, d.slack.APIURL(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	go d.app.Bot.Handle(context.Background(), chat.Request{ID: "t", UserID: alice, ChannelID: incident, Text: "drill now", Source: "test"}, web.For(chat.Request{ChannelID: incident, UserID: alice}))
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if left := d.leftovers(); len(left) >= 2 { // the image and the instance
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the drill never launched")
		}
	}
	// Someone's own image that merely looks like a drill's, and a drill
	// image of another installation: the sweep must leave both alone.
	api := ec2.NewFromConfig(d.aws)
	golden, err := api.RegisterImage(context.Background(), &ec2.RegisterImageInput{Name: aws.String("circleci-drill-golden-base"), RootDeviceName: aws.String("/dev/sda1"),
		BlockDeviceMappings: []ec2types.BlockDeviceMapping{{DeviceName: aws.String("/dev/sda1"), Ebs: &ec2types.EbsBlockDevice{SnapshotId: aws.String(d.backup.Snapshots[0].ID)}}}})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := api.RegisterImage(context.Background(), &ec2.RegisterImageInput{Name: aws.String("circleci-drill-dr-other"), RootDeviceName: aws.String("/dev/sda1"),
		BlockDeviceMappings: []ec2types.BlockDeviceMapping{{DeviceName: aws.String("/dev/sda1"), Ebs: &ec2types.EbsBlockDevice{SnapshotId: aws.String(d.backup.Snapshots[0].ID)}}},
		TagSpecifications:   []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeImage, Tags: []ec2types.Tag{{Key: aws.String(ops.TagDrill), Value: aws.String("dr-other")}, {Key: aws.String(ops.TagDrillOwner), Value: aws.String("another_install")}}}}})
	if err != nil {
		t.Fatal(err)
	}
	// A new process on the same data_dir: the old one's goroutine stays
	// stuck, as a killed process would.
	cfg := d.app.Config
	cfg.Slack.ReportChannel = incident
	d.app.Close()
	a := reopen(t, d.env, cfg)
	d.setDrill(a)
	a.Drills.Runner.Process = a.Store.Process()
	a.Resume(context.Background(), func(string) progress.Poster { return d.slackPoster() })
	left := d.leftovers()
	left = slices.DeleteFunc(left, func(l string) bool {
		return l == "image "+aws.ToString(golden.ImageId) || l == "image "+aws.ToString(foreign.ImageId)
	})
	if len(left) != 0 {
		imgs, _ := api.DescribeImages(context.Background(), &ec2.DescribeImagesInput{Owners: []string{"self"}})
		var seen []string
		for _, i := range imgs.Images {
			seen = append(seen, fmt.Sprintf("%s %s %s %v", aws.ToString(i.ImageId), aws.ToString(i.Name), i.State, i.Tags))
		}
		recs, _ := a.Drills.Runner.Records.All(t.Context())
		var notes []string
		for _, m := range d.slack.Messages(incident) {
			if strings.Contains(m.AllText(), "Could not remove") || strings.Contains(m.AllText(), "removed") {
				notes = append(notes, m.AllText())
			}
		}
		t.Errorf("after the start-up sweep: %v\nimages: %v\nrecords: %+v\nsweep said: %v", left, seen, recs, notes)
	}
	for _, id := range []*string{golden.ImageId, foreign.ImageId} {
		out, err := api.DescribeImages(context.Background(), &ec2.DescribeImagesInput{ImageIds: []string{aws.ToString(id)}})
		if err != nil || len(out.Images) != 1 {
			t.Errorf("the sweep removed %s, which is not this bot's drill's: %v", aws.ToString(id), err)
		}
	}
	drills, _ := a.Drills.Runner.Records.All(t.Context())
	if len(drills) != 1 || drills[0].State != ops.DrillInterrupted {
		t.Errorf("drill record after the sweep: %+v", drills)
	}
	d.waitText("sweep notice", "cut off by a bot restart")
	// The dead drill's lock is gone: the next drill runs.
	d.proxy.SetFaults(faultproxy.Faults{})
	if dr, err := a.Drills.Run(context.Background(), d.slackPoster(), alice, incident); err != nil || dr.State != ops.DrillPassed {
		t.Errorf("a drill after the restart: %v %+v", err, dr)
	}
	close(hang)
}
