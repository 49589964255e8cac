package app_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwschemas "github.com/aws/aws-sdk-go-v2/service/cloudwatch/schemas"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/smithy-go/transport/http/protocol/awsquery"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/monitor"
	"github.com/circlebot/circlebot/internal/store"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/ssmbox"
)

type monitorRig struct {
	*env
	mu  sync.Mutex
	now time.Time
	cw  *cloudwatch.Client
}

func newMonitorRig(t *testing.T) *monitorRig {
	// An SSM stand-in on which the box's agent is online: the requests the
	// alert buttons open run their pre-flight, which reads it (moto's SSM
	// cannot answer DescribeInstanceInformation).
	ssmSrv := ssmbox.New(t)
	e := newEnvOn(t, motoserver.ForTest(t), nil, func(o *app.Options) { o.SSMEndpoint = ssmSrv.URL })
	ssmSrv.AddBox(e.inst.ServicesBox.ID)
	r := &monitorRig{env: e, now: time.Now().UTC().Truncate(time.Minute),
		cw: cloudwatch.NewFromConfig(e.aws, func(o *cloudwatch.Options) { o.Protocol = awsquery.New(cwschemas.GraniteServiceVersion20100801) })}
	m := e.app.Monitor
	m.Now = func() time.Time { r.mu.Lock(); defer r.mu.Unlock(); return r.now }
	m.Post = e.slackPoster()
	m.Cooldown = 5 * time.Minute
	minute := config.Duration(time.Minute)
	m.Checks = []config.Check{
		{Name: "Services box status checks", Namespace: "AWS/EC2", Metric: "StatusCheckFailed", Dimensions: map[string]string{"InstanceId": "{box}"}, Stat: "Maximum", Op: ">", Threshold: 0, Clear: 0, For: 2, Period: minute, Action: "failover"},
		{Name: "Services box CPU", Namespace: "AWS/EC2", Metric: "CPUUtilization", Dimensions: map[string]string{"InstanceId": "{box}"}, Stat: "Average", Op: ">", Threshold: 90, Clear: 75, For: 3, Period: minute, Action: "status"},
	}
	return r
}

// put writes value for the last n minutes of metric on the box.
func (r *monitorRig) put(metric string, n int, v float64) {
	r.t.Helper()
	for i := n; i >= 1; i-- {
		_, err := r.cw.PutMetricData(context.Background(), &cloudwatch.PutMetricDataInput{Namespace: aws.String("AWS/EC2"), MetricData: []cwtypes.MetricDatum{{
			MetricName: aws.String(metric), Value: aws.Float64(v), Timestamp: aws.Time(r.now.Add(-time.Duration(i)*time.Minute + 30*time.Second)),
			Dimensions: []cwtypes.Dimension{{Name: aws.String("InstanceId"), Value: aws.String(r.inst.ServicesBox.ID)}},
		}}})
		if err != nil {
			r.t.Fatal(err)
		}
	}
}

func (r *monitorRig) advance(d time.Duration) { r.mu.Lock(); r.now = r.now.Add(d); r.mu.Unlock() }

func (r *monitorRig) tick(m *monitor.Monitor) {
	r.t.Helper()
	if err := m.Tick(context.Background()); err != nil {
		r.t.Fatal(err)
	}
}

func (r *monitorRig) count(parts ...string) int {
	n := 0
	for _, m := range r.slack.Messages(incident) {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(m.AllText(), p)
		}
		if ok {
			n++
		}
	}
	return n
}

// A crossing gives exactly one alert, with a button for the right request,
// also across a restart; recovery is announced once, only after the values
// stayed normal for the cooldown; a metric flapping meanwhile keeps the
// one alert open; a value between the clear level and the threshold does
// not recover (hysteresis); a new crossing after recovery alerts at once.
func TestOutageDetectionAlertsOnceAndRecoversOnce(t *testing.T) {
	t.Parallel()
	r := newMonitorRig(t)
	m := r.app.Monitor
	alerts := func() int { return r.count(":rotating_light: *Services box status checks*") }
	recoveries := func() int { return r.count("Recovered: Services box status checks") }

	r.put("StatusCheckFailed", 2, 1)
	r.tick(m)
	r.tick(m)
	restarted := *m // a new bot process on the same store
	r.tick(&restarted)
	if a := alerts(); a != 1 {
		t.Fatalf("%d alerts after three rounds and a restart, want 1", a)
	}
	var buttons string
	for _, c := range r.slack.Calls() {
		if strings.Contains(r.slack.Text(c), "Services box status checks") {
			buttons = c.BlocksJSON
		}
	}
	if !strings.Contains(buttons, `"value":"failover"`) || !strings.Contains(buttons, "Request failover") {
		t.Errorf("the alert offers no failover request: %s", buttons)
	}

	// Normal again, then a flap inside the cooldown: still one alert, no
	// recovery.
	r.advance(2 * time.Minute)
	r.put("StatusCheckFailed", 2, 0)
	r.tick(m)
	r.advance(2 * time.Minute)
	r.put("StatusCheckFailed", 2, 1)
	r.tick(m)
	if a, rec := alerts(), recoveries(); a != 1 || rec != 0 {
		t.Fatalf("after a flap: %d alerts, %d recoveries; want 1 and 0", a, rec)
	}
	// Normal for the whole cooldown: one recovery.
	r.advance(2 * time.Minute)
	r.put("StatusCheckFailed", 2, 0)
	r.tick(m)
	for range 3 {
		r.advance(2 * time.Minute)
		r.put("StatusCheckFailed", 2, 0)
		r.tick(m)
	}
	if a, rec := alerts(), recoveries(); a != 1 || rec != 1 {
		t.Fatalf("after the cooldown: %d alerts, %d recoveries; want 1 and 1", a, rec)
	}
	// A new outage after the recovery is reported at once.
	r.advance(2 * time.Minute)
	r.put("StatusCheckFailed", 2, 1)
	r.tick(m)
	if a := alerts(); a != 2 {
		t.Fatalf("a new crossing gave %d alerts in all, want 2", a)
	}

	// CPU: 95 % alerts; 80 % (between the clear level 75 and the threshold
	// 90) never recovers; 70 % does, after the cooldown.
	r.advance(10 * time.Minute)
	r.put("CPUUtilization", 3, 95)
	r.tick(m)
	for range 4 {
		r.advance(3 * time.Minute)
		r.put("CPUUtilization", 3, 80)
		r.tick(m)
	}
	if a, rec := r.count(":rotating_light: *Services box CPU*"), r.count("Recovered: Services box CPU"); a != 1 || rec != 0 {
		t.Fatalf("CPU: %d alerts, %d recoveries after 95 then 80; want 1 and 0", a, rec)
	}
	for range 3 {
		r.advance(3 * time.Minute)
		r.put("CPUUtilization", 3, 70)
		r.tick(m)
	}
	if rec := r.count("Recovered: Services box CPU"); rec != 1 {
		t.Fatalf("CPU: %d recoveries after 70, want 1", rec)
	}
}

// A stopped box publishes no status checks: its state itself alerts —
// except while an approved operation that stops it on purpose runs; once
// that operation has stopped part-way, the down box alerts.
func TestOutageDetectionAlertsOnAStoppedBox(t *testing.T) {
	t.Parallel()
	r := newMonitorRig(t)
	m := r.app.Monitor
	if _, err := ec2.NewFromConfig(r.aws).StopInstances(context.Background(), &ec2.StopInstancesInput{InstanceIds: []string{r.inst.ServicesBox.ID}}); err != nil {
		t.Fatal(err)
	}
	op := &journal.Op{ID: "op-20261128-050000-abcd", Kind: "restore", State: journal.Running, Process: r.app.Store.Process(), Steps: []journal.Step{{Name: "Stop the old instance", State: journal.StepRunning}}}
	if err := r.app.Journal.Create(t.Context(), op); err != nil {
		t.Fatal(err)
	}
	if _, err := r.app.Store.TryLock(t.Context(), store.Lock{Key: "box/" + r.app.Config.ServicesBox.NameTag, OpID: op.ID, What: "restore", Process: r.app.Store.Process()}); err != nil {
		t.Fatal(err)
	}
	r.tick(m)
	if n := r.count(":rotating_light: *Services box running*"); n != 0 {
		t.Fatalf("%d alerts while a restore stops the box on purpose", n)
	}
	if _, err := r.app.Journal.Update(t.Context(), op.ID, func(o *journal.Op) error { o.State = journal.Stopped; return nil }); err != nil {
		t.Fatal(err)
	}
	r.tick(m)
	r.tick(m)
	if n := r.count(":rotating_light: *Services box running*", "is stopped"); n != 1 {
		t.Fatalf("%d alerts for the stopped box, want 1", n)
	}
}
