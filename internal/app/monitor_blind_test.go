package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"

	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/monitor"
)

// putAgent writes v for the last n minutes of a CWAgent metric of the box
// with the dimensions the CloudWatch agent publishes: its
// append_dimensions (ImageId, InstanceId, InstanceType) and, for disk,
// device, fstype and path.
func (r *monitorRig) putAgent(metric string, disk map[string]string, n int, v float64) {
	r.t.Helper()
	dims := []cwtypes.Dimension{
		{Name: aws.String("InstanceId"), Value: aws.String(r.inst.ServicesBox.ID)},
		{Name: aws.String("ImageId"), Value: aws.String("ami-0123456789abcdef0")},
		{Name: aws.String("InstanceType"), Value: aws.String("m5.2xlarge")},
	}
	for _, k := range []string{"device", "fstype", "path"} {
		if v, ok := disk[k]; ok {
			dims = append(dims, cwtypes.Dimension{Name: aws.String(k), Value: aws.String(v)})
		}
	}
	for i := n; i >= 1; i-- {
		_, err := r.cw.PutMetricData(context.Background(), &cloudwatch.PutMetricDataInput{Namespace: aws.String("CWAgent"), MetricData: []cwtypes.MetricDatum{{
			MetricName: aws.String(metric), Value: aws.Float64(v), Timestamp: aws.Time(r.now.Add(-time.Duration(i)*time.Minute + 30*time.Second)), Dimensions: dims,
		}}})
		if err != nil {
			r.t.Fatal(err)
		}
	}
}

func defaultCheck(t *testing.T, name string) config.Check {
	t.Helper()
	for _, c := range monitor.DefaultChecks(true) {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no default check %q", name)
	return config.Check{}
}

var (
	rootFS = map[string]string{"device": "nvme0n1p1", "fstype": "ext4", "path": "/"}
	dataFS = map[string]string{"device": "nvme1n1", "fstype": "xfs", "path": "/data"}
)

// The default disk and memory checks find the dimension sets the agent
// really publishes for the box (CloudWatch answers only the exact set)
// and watch each filesystem by its path: a full /data alerts, a quiet /
// does not.
func TestMonitorFindsTheAgentsDimensionsAndWatchesEveryFilesystem(t *testing.T) {
	t.Parallel()
	r := newMonitorRig(t)
	m := r.app.Monitor
	m.Checks = []config.Check{defaultCheck(t, "Services box disk used"), defaultCheck(t, "Services box memory used")}
	r.putAgent("disk_used_percent", rootFS, 3, 41)
	r.putAgent("disk_used_percent", dataFS, 3, 97)
	r.putAgent("mem_used_percent", nil, 3, 99)
	r.tick(m)
	r.tick(m)
	if n := r.count(":rotating_light: *Services box disk used (/data)*", "disk_used_percent Maximum is 97"); n != 1 {
		t.Errorf("%d alerts for the full /data, want 1", n)
	}
	if n := r.count(":rotating_light: *Services box disk used (/)*"); n != 0 {
		t.Errorf("%d alerts for / at 41%%", n)
	}
	if n := r.count(":rotating_light: *Services box memory used*"); n != 1 {
		t.Errorf("%d memory alerts at 99%%, want 1", n)
	}
	if n := r.count("Monitoring is blind"); n != 0 {
		t.Errorf("%d blind alerts with data flowing", n)
	}
}

// No datapoints for several periods is its own state: alerted once, with
// the metric and since when, and closed once when data returns.
func TestMonitorBlindIsAlertedOnceAndClearedWhenDataReturns(t *testing.T) {
	t.Parallel()
	r := newMonitorRig(t)
	m := r.app.Monitor
	m.Checks = []config.Check{defaultCheck(t, "Services box disk used")}
	r.putAgent("disk_used_percent", dataFS, 3, 50)
	r.tick(m)
	last := r.now.Add(-30 * time.Second).UTC().Format("15:04")
	for range 8 { // the agent stops: 16 minutes without data
		r.advance(2 * time.Minute)
		r.tick(m)
	}
	blind := func() int {
		return r.count("Monitoring is blind", "Services box disk used (/data)", "since "+last+" UTC")
	}
	if n := blind(); n != 1 {
		t.Fatalf("%d blind alerts after 16 minutes without data, want 1; messages: %v", n, r.slack.Messages(incident))
	}
	if n := r.count("Monitoring sees again"); n != 0 {
		t.Fatalf("cleared without data")
	}
	r.advance(time.Minute)
	r.putAgent("disk_used_percent", dataFS, 2, 52)
	r.tick(m)
	r.advance(time.Minute)
	r.putAgent("disk_used_percent", dataFS, 1, 52)
	r.tick(m)
	if n := r.count("Monitoring sees again", "Services box disk used (/data)"); n != 1 {
		t.Errorf("%d all-clear messages, want 1", n)
	}
	if n := blind(); n != 1 {
		t.Errorf("%d blind alerts in all, want 1", n)
	}
}

// A builder-group check needs Auto Scaling's group metrics collection:
// when it is off the check says so, once, with the command that turns it
// on; with it on, nothing is said.
func TestMonitorSaysWhenGroupMetricsCollectionIsOff(t *testing.T) {
	t.Parallel()
	r := newMonitorRig(t)
	m := r.app.Monitor
	m.Checks = []config.Check{defaultCheck(t, "Builders in service")}
	r.tick(m)
	r.advance(time.Minute)
	r.tick(m)
	if n := r.count("Monitoring is blind", "Builders in service", "group metrics collection", "enable-metrics-collection --auto-scaling-group-name "+r.inst.BuilderASG); n != 1 {
		t.Fatalf("%d group-metrics messages, want 1; messages: %v", n, r.slack.Messages(incident))
	}

	r2 := newMonitorRig(t)
	if _, err := autoscaling.NewFromConfig(r2.aws).EnableMetricsCollection(context.Background(), &autoscaling.EnableMetricsCollectionInput{
		AutoScalingGroupName: aws.String(r2.inst.BuilderASG), Granularity: aws.String("1Minute"), Metrics: []string{"GroupInServiceInstances"}}); err != nil {
		t.Fatal(err)
	}
	m2 := r2.app.Monitor
	m2.Checks = []config.Check{defaultCheck(t, "Builders in service")}
	r2.tick(m2)
	if n := r2.count("group metrics collection"); n != 0 {
		t.Errorf("%d group-metrics messages with collection on", n)
	}
}
