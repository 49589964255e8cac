// Package monitor owns outage detection: CloudWatch metrics of the
// Services box and the builder fleet compared with thresholds, with
// hysteresis and a cooldown, so that an outage gives one alert (with
// buttons that start the right request) and its recovery one notice.
// Alert state lives in bbolt, so a restart neither repeats nor forgets an
// alert.
package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/slackio"
	"github.com/circlebot/circlebot/internal/store"
)

// CloudWatch is the one call the monitor makes.
type CloudWatch interface {
	GetMetricData(context.Context, *cloudwatch.GetMetricDataInput, ...func(*cloudwatch.Options)) (*cloudwatch.GetMetricDataOutput, error)
}

// Poster posts into the incident channel.
type Poster interface {
	Post(ctx context.Context, m chat.Message) (chat.Ref, error)
}

// DefaultChecks are the seed's "typical monitoring": the box's status
// checks, CPU, and — when the CloudWatch agent publishes them — free disk
// and memory; and builders in service.
func DefaultChecks(withBuilders bool) []config.Check {
	m := config.Duration(time.Minute)
	c := []config.Check{
		{Name: "Services box status checks", Namespace: "AWS/EC2", Metric: "StatusCheckFailed", Dimensions: map[string]string{"InstanceId": "{box}"}, Stat: "Maximum", Op: ">", Threshold: 0, Clear: 0, For: 2, Period: m, Action: "failover"},
		{Name: "Services box CPU", Namespace: "AWS/EC2", Metric: "CPUUtilization", Dimensions: map[string]string{"InstanceId": "{box}"}, Stat: "Average", Op: ">", Threshold: 90, Clear: 75, For: 5, Period: m, Action: "status"},
		{Name: "Services box disk used (/data)", Namespace: "CWAgent", Metric: "disk_used_percent", Dimensions: map[string]string{"InstanceId": "{box}", "path": "/data"}, Stat: "Maximum", Op: ">", Threshold: 85, Clear: 80, For: 3, Period: m, Action: "status"},
		{Name: "Services box memory used", Namespace: "CWAgent", Metric: "mem_used_percent", Dimensions: map[string]string{"InstanceId": "{box}"}, Stat: "Average", Op: ">", Threshold: 95, Clear: 85, For: 5, Period: m, Action: "status"},
	}
	if withBuilders {
		c = append(c, config.Check{Name: "Builders in service", Namespace: "AWS/AutoScaling", Metric: "GroupInServiceInstances", Dimensions: map[string]string{"AutoScalingGroupName": "{asg}"}, Stat: "Minimum", Op: "<", Threshold: 1, Clear: 1, For: 3, Period: m, Action: "builders status"})
	}
	return c
}

// State is one check's alert state.
type State struct {
	Check     string    `json:"check"`
	Alerting  bool      `json:"alerting"`
	Since     time.Time `json:"since,omitzero"`      // when the alert was raised
	LastAlert time.Time `json:"last_alert,omitzero"` // for the cooldown
	Value     float64   `json:"value"`
	Box       string    `json:"box,omitempty"`
}

const bucket = "monitor"

// Monitor evaluates the checks every Interval.
type Monitor struct {
	CW       CloudWatch
	EC2      ops.EC2
	Store    *store.Store
	Checks   []config.Check
	NameTag  string
	ASG      string
	Cooldown time.Duration
	Post     Poster
	Slash    string
	Log      *slog.Logger
	Now      func() time.Time
}

func (m *Monitor) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

// Run ticks until ctx ends.
func (m *Monitor) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := m.Tick(ctx); err != nil && ctx.Err() == nil {
			m.Log.Warn("outage detection round failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Tick reads the metrics once and raises or clears alerts.
func (m *Monitor) Tick(ctx context.Context) error {
	box := ""
	if in, err := ops.FindBox(ctx, m.EC2, m.NameTag); err == nil {
		box = aws.ToString(in.InstanceId)
	} else if !errors.Is(err, ops.ErrNotFound) {
		// The box cannot be read: say nothing new about it (its metrics
		// would be resolved against nothing); status explains.
		m.Log.Warn("outage detection: cannot read the Services box", "err", err)
	}
	var queries []cwtypes.MetricDataQuery
	var checks []config.Check
	longest := time.Duration(0)
	for _, c := range m.Checks {
		dims, ok := m.dimensions(c, box)
		if !ok {
			continue
		}
		checks = append(checks, c)
		period := max(c.Period.D(), time.Minute)
		longest = max(longest, period*time.Duration(max(c.For, 1)+2))
		queries = append(queries, cwtypes.MetricDataQuery{
			Id: aws.String(fmt.Sprintf("m%d", len(queries))),
			MetricStat: &cwtypes.MetricStat{
				Metric: &cwtypes.Metric{Namespace: aws.String(c.Namespace), MetricName: aws.String(c.Metric), Dimensions: dims},
				Period: aws.Int32(int32(period.Seconds())), Stat: aws.String(c.Stat),
			},
		})
	}
	if len(queries) == 0 {
		return nil
	}
	now := m.now()
	out, err := m.CW.GetMetricData(ctx, &cloudwatch.GetMetricDataInput{MetricDataQueries: queries, StartTime: aws.Time(now.Add(-longest)), EndTime: aws.Time(now), ScanBy: cwtypes.ScanByTimestampDescending})
	if err != nil {
		return fmt.Errorf("read CloudWatch: %w", err)
	}
	values := map[string][]float64{} // newest first
	for _, r := range out.MetricDataResults {
		type point struct {
			t time.Time
			v float64
		}
		var pts []point
		for i := range r.Values {
			if i < len(r.Timestamps) {
				pts = append(pts, point{r.Timestamps[i], r.Values[i]})
			}
		}
		slices.SortFunc(pts, func(a, b point) int { return b.t.Compare(a.t) })
		for _, p := range pts {
			values[aws.ToString(r.Id)] = append(values[aws.ToString(r.Id)], p.v)
		}
	}
	for i, c := range checks {
		if err := m.evaluate(ctx, c, values[fmt.Sprintf("m%d", i)], box, now); err != nil {
			return err
		}
	}
	return nil
}

func (m *Monitor) dimensions(c config.Check, box string) ([]cwtypes.Dimension, bool) {
	var dims []cwtypes.Dimension
	for k, v := range c.Dimensions {
		switch {
		case strings.Contains(v, "{box}"):
			if box == "" {
				return nil, false
			}
			v = strings.ReplaceAll(v, "{box}", box)
		case strings.Contains(v, "{asg}"):
			if m.ASG == "" {
				return nil, false
			}
			v = strings.ReplaceAll(v, "{asg}", m.ASG)
		}
		dims = append(dims, cwtypes.Dimension{Name: aws.String(k), Value: aws.String(v)})
	}
	slices.SortFunc(dims, func(a, b cwtypes.Dimension) int { return strings.Compare(*a.Name, *b.Name) })
	return dims, true
}

func beyond(op string, v, limit float64) bool {
	if op == "<" {
		return v < limit
	}
	return v > limit
}

// recovered: back on the good side of the clear level (the hysteresis).
func recovered(op string, v, clear float64) bool {
	if op == "<" {
		return v >= clear
	}
	return v <= clear
}

// evaluate moves one check's state. values are newest first.
func (m *Monitor) evaluate(ctx context.Context, c config.Check, values []float64, box string, now time.Time) error {
	var st State
	if err := m.Store.Get(bucket, c.Name, &st); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	st.Check = c.Name
	need := max(c.For, 1)
	if len(values) < need {
		return nil // no data (or not enough): nothing changes
	}
	recent := values[:need]
	breach, clear := true, true
	for _, v := range recent {
		breach = breach && beyond(c.Op, v, c.Threshold)
		clear = clear && recovered(c.Op, v, c.Clear)
	}
	st.Value = recent[0]
	switch {
	case !st.Alerting && breach:
		if !st.LastAlert.IsZero() && now.Sub(st.LastAlert) < m.Cooldown {
			m.Log.Info("alert suppressed by the cooldown", "check", c.Name, "value", st.Value, "last", st.LastAlert)
			return nil
		}
		st.Alerting, st.Since, st.LastAlert, st.Box = true, now, now, box
		if err := m.Store.Put(bucket, c.Name, st); err != nil {
			return err
		}
		_, err := m.Post.Post(ctx, m.alert(c, st, need))
		return err
	case st.Alerting && clear:
		st.Alerting = false
		if err := m.Store.Put(bucket, c.Name, st); err != nil {
			return err
		}
		_, err := m.Post.Post(ctx, chat.Text(fmt.Sprintf(":white_check_mark: *Recovered: %s* — %s %s is %s again (clear level %s) after %s. The alert of %s UTC is closed.",
			c.Name, c.Metric, c.Stat, num(st.Value), num(c.Clear), now.Sub(st.Since).Round(time.Second), st.Since.UTC().Format("15:04"))))
		return err
	}
	return m.Store.Put(bucket, c.Name, st)
}

func num(v float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")
}

func (m *Monitor) alert(c config.Check, st State, need int) chat.Message {
	where := ""
	if st.Box != "" && strings.Contains(fmt.Sprint(c.Dimensions), "{box}") {
		where = " on `" + st.Box + "`"
	}
	text := fmt.Sprintf(":rotating_light: *%s*%s: %s %s is %s (alert %s %s) for %d period(s) of %s, since %s UTC.",
		c.Name, where, c.Metric, c.Stat, num(st.Value), c.Op, num(c.Threshold), need, c.Period.D(), st.Since.UTC().Format("15:04"))
	if c.Action != "" {
		text += fmt.Sprintf(" Suggested: `%s %s`", m.Slash, c.Action)
		if c.Action == "failover" {
			text += " (it asks a second person to approve, and refuses if the box's state cannot be read)"
		}
		text += "."
	}
	blocks := chat.Section(text)
	var buttons []slack.BlockElement
	if c.Action != "" {
		b := slack.NewButtonBlockElement(slackio.ButtonActionID, c.Action, slack.NewTextBlockObject(slack.PlainTextType, "Request "+c.Action, false, false))
		if c.Action == "failover" {
			b = b.WithStyle(slack.StyleDanger)
		}
		buttons = append(buttons, b)
	}
	if c.Action != "status" {
		buttons = append(buttons, slack.NewButtonBlockElement(slackio.ButtonActionID, "status", slack.NewTextBlockObject(slack.PlainTextType, "Status", false, false)))
	}
	blocks = append(blocks, slack.NewActionBlock("alert", buttons...))
	return chat.Message{Text: fmt.Sprintf("Alert: %s %s is %s", c.Name, c.Metric, num(st.Value)), Blocks: blocks}
}
