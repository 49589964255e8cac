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
	"github.com/aws/smithy-go/transport/http/protocol/awsquery"
)

// Metric data put into moto that crosses a threshold gives exactly one
// alert, with a button for the right request; recovery gives exactly one
// notice; a value between the clear level and the threshold neither
// recovers nor re-alerts (hysteresis); a new crossing inside the cooldown
// is not posted.
func TestOutageDetectionAlertsOnceAndRecoversOnce(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	cw := cloudwatch.NewFromConfig(e.aws, func(o *cloudwatch.Options) { o.Protocol = awsquery.New(cwschemas.GraniteServiceVersion20100801) })
	var mu sync.Mutex
	now := time.Now().UTC().Truncate(time.Minute)
	e.app.Monitor.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e.app.Monitor.Post = e.slackPoster()
	put := func(metric string, at time.Time, v float64) {
		t.Helper()
		_, err := cw.PutMetricData(ctx, &cloudwatch.PutMetricDataInput{Namespace: aws.String("AWS/EC2"), MetricData: []cwtypes.MetricDatum{{
			MetricName: aws.String(metric), Value: aws.Float64(v), Timestamp: aws.Time(at),
			Dimensions: []cwtypes.Dimension{{Name: aws.String("InstanceId"), Value: aws.String(e.inst.ServicesBox.ID)}},
		}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	tick := func() {
		t.Helper()
		if err := e.app.Monitor.Tick(ctx); err != nil {
			t.Fatal(err)
		}
	}
	count := func(parts ...string) int {
		n := 0
		for _, m := range e.slack.Messages(incident) {
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

	// The box fails its status checks for two minutes.
	put("StatusCheckFailed", now.Add(-90*time.Second), 1)
	put("StatusCheckFailed", now.Add(-30*time.Second), 1)
	for range 3 {
		tick()
	}
	if n := count("Services box status checks", e.inst.ServicesBox.ID); n != 1 {
		t.Fatalf("%d alerts after three rounds, want 1", n)
	}
	var buttons string
	for _, c := range e.slack.Calls() {
		if strings.Contains(e.slack.Text(c), "Services box status checks") {
			buttons = c.BlocksJSON
		}
	}
	if !strings.Contains(buttons, `"value":"failover"`) || !strings.Contains(buttons, "Request failover") {
		t.Errorf("the alert offers no failover request: %s", buttons)
	}
	// It recovers.
	advance(2 * time.Minute)
	put("StatusCheckFailed", now.Add(-90*time.Second), 0)
	put("StatusCheckFailed", now.Add(-30*time.Second), 0)
	tick()
	tick()
	if n := count("Recovered: Services box status checks"); n != 1 {
		t.Fatalf("%d recovery notices, want 1", n)
	}
	// Failing again within the cooldown is not posted again.
	advance(2 * time.Minute)
	put("StatusCheckFailed", now.Add(-90*time.Second), 1)
	put("StatusCheckFailed", now.Add(-30*time.Second), 1)
	tick()
	if n := count("Services box status checks", "since"); n != 1 {
		t.Errorf("%d alerts, want 1 (the second crossing is inside the cooldown)", n)
	}

	// CPU: 95 % for five minutes alerts; 80 % (between the clear level 75
	// and the threshold 90) keeps the alert without a second one; 70 %
	// recovers.
	advance(10 * time.Minute)
	series := func(v float64) {
		for i := 5; i >= 1; i-- {
			put("CPUUtilization", now.Add(-time.Duration(i)*time.Minute+10*time.Second), v)
		}
	}
	series(95)
	tick()
	advance(5 * time.Minute)
	series(80)
	tick()
	tick()
	if a, r := count("Services box CPU*", "CPUUtilization"), count("Recovered: Services box CPU"); a != 1 || r != 0 {
		t.Fatalf("CPU: %d alerts, %d recoveries after 95 then 80; want 1 and 0", a, r)
	}
	advance(5 * time.Minute)
	series(70)
	tick()
	if r := count("Recovered: Services box CPU"); r != 1 {
		t.Fatalf("CPU: %d recoveries after 70, want 1", r)
	}
}
