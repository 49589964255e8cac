package app_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/slackio"
)

// alertButton is one button of an alert as Slack would get it.
type alertButton struct {
	Block, ActionID, Value, Text, Style string
}

// alertOf finds the alert whose text has name and returns its text and
// buttons, in order.
func (r *monitorRig) alertOf(name string) (string, []alertButton) {
	r.t.Helper()
	for _, c := range r.slack.Calls() {
		if c.Method != "chat.postMessage" || !strings.Contains(r.slack.Text(c), name) || !strings.Contains(r.slack.Text(c), ":rotating_light:") {
			continue
		}
		var blocks []struct {
			Type     string `json:"type"`
			BlockID  string `json:"block_id"`
			Elements []struct {
				ActionID string `json:"action_id"`
				Value    string `json:"value"`
				Style    string `json:"style"`
				Text     struct {
					Text string `json:"text"`
				} `json:"text"`
			} `json:"elements"`
		}
		if err := json.Unmarshal([]byte(c.BlocksJSON), &blocks); err != nil {
			r.t.Fatal(err)
		}
		var out []alertButton
		for _, b := range blocks {
			if b.Type != "actions" {
				continue
			}
			ids := map[string]bool{}
			for _, e := range b.Elements {
				if ids[e.ActionID] {
					r.t.Errorf("block %s has the action ID %s twice: Slack refuses such a message", b.BlockID, e.ActionID)
				}
				ids[e.ActionID] = true
				out = append(out, alertButton{Block: b.BlockID, ActionID: e.ActionID, Value: e.Value, Text: e.Text.Text, Style: e.Style})
			}
		}
		return r.slack.Text(c), out
	}
	r.t.Fatalf("no alert %q", name)
	return "", nil
}

func (r *monitorRig) putIn(namespace, metric string, n int, v float64) {
	r.t.Helper()
	for i := n; i >= 1; i-- {
		_, err := r.cw.PutMetricData(context.Background(), &cloudwatch.PutMetricDataInput{Namespace: aws.String(namespace), MetricData: []cwtypes.MetricDatum{{
			MetricName: aws.String(metric), Value: aws.Float64(v), Timestamp: aws.Time(r.now.Add(-time.Duration(i)*time.Minute + 30*time.Second)),
			Dimensions: []cwtypes.Dimension{{Name: aws.String("InstanceId"), Value: aws.String(r.inst.ServicesBox.ID)}},
		}}})
		if err != nil {
			r.t.Fatal(err)
		}
	}
}

func values(bs []alertButton) []string {
	var v []string
	for _, b := range bs {
		v = append(v, b.Value)
	}
	return v
}

// An outage alert about the Services box offers the fixes — reboot,
// resize to the next size of its family that AWS offers in its zone,
// restore latest, failover — and says which fits the signal: a failed
// status check, a reboot; memory exhausted, a resize; the box not
// running, failover or restore (and no reboot). A click opens an
// ordinary request that waits for a second person.
func TestOutageAlertsOfferTheFixesThatFitTheSignal(t *testing.T) {
	r := newMonitorRig(t)
	m := r.app.Monitor
	minute := config.Duration(time.Minute)
	m.Checks = []config.Check{
		{Name: "Services box status checks", Namespace: "AWS/EC2", Metric: "StatusCheckFailed", Dimensions: map[string]string{"InstanceId": "{box}"}, Stat: "Maximum", Op: ">", Threshold: 0, Clear: 0, For: 2, Period: minute, Action: "reboot"},
		{Name: "Services box memory used", Namespace: "CWAgent", Metric: "mem_used_percent", Dimensions: map[string]string{"InstanceId": "{box}"}, Stat: "Average", Op: ">", Threshold: 95, Clear: 85, For: 3, Period: minute, Action: "resize"},
	}

	r.put("StatusCheckFailed", 2, 1)
	r.tick(m)
	text, buttons := r.alertOf("Services box status checks")
	if got, want := strings.Join(values(buttons), ","), "reboot,resize m5.4xlarge,restore latest,failover,status"; got != want {
		t.Errorf("status-check alert buttons %s, want %s", got, want)
	}
	if buttons[0].Style != "primary" || buttons[0].ActionID != slackio.ButtonActionID {
		t.Errorf("the fitting button is %+v, want reboot first, primary, a command button", buttons[0])
	}
	for _, want := range []string{"Fits this signal:* `/circleci reboot`", "second person approves"} {
		if !strings.Contains(text, want) {
			t.Errorf("status-check alert lacks %q: %s", want, text)
		}
	}

	// The buttons open ordinary requests, as the person who clicks.
	r.click(alice, "reboot", "alert.reboot")
	r.waitText("reboot request", "Approval needed", "/circleci reboot", "RebootInstances")
	r.click(alice, "resize m5.4xlarge", "alert.resize")
	r.waitText("resize request", "Approval needed", "/circleci resize m5.4xlarge", "m5.2xlarge (8 vCPUs")
	r.server.Wait()
	if all, _ := r.app.Approvals.Store.All(t.Context()); len(all) != 2 {
		t.Errorf("%d requests after two clicks, want 2 waiting for approval", len(all))
	}

	r.putIn("CWAgent", "mem_used_percent", 3, 99)
	r.tick(m)
	text, buttons = r.alertOf("Services box memory used")
	if len(buttons) == 0 || buttons[0].Value != "resize m5.4xlarge" || buttons[0].Style != "primary" || !strings.Contains(text, "Fits this signal:* `/circleci resize m5.4xlarge`") {
		t.Errorf("memory alert: %s\nbuttons %+v", text, buttons)
	}

	// The box stopped: no reboot; failover fits.
	if _, err := ec2.NewFromConfig(r.aws).StopInstances(context.Background(), &ec2.StopInstancesInput{InstanceIds: []string{r.inst.ServicesBox.ID}}); err != nil {
		t.Fatal(err)
	}
	r.tick(m)
	text, buttons = r.alertOf("Services box running")
	if got := strings.Join(values(buttons), ","); got != "failover,resize m5.4xlarge,restore latest,status" {
		t.Errorf("stopped-box alert buttons %s", got)
	}
	if !strings.Contains(text, "Fits this signal:* `/circleci failover`") || !strings.Contains(text, "a reboot cannot help") {
		t.Errorf("stopped-box alert: %s", text)
	}
}
