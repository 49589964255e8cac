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
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/slackio"
	"github.com/circlebot/circlebot/internal/store"
)

// CloudWatch is what the monitor reads: the metrics a box publishes
// (ListMetrics) and their data.
type CloudWatch interface {
	GetMetricData(context.Context, *cloudwatch.GetMetricDataInput, ...func(*cloudwatch.Options)) (*cloudwatch.GetMetricDataOutput, error)
	ListMetrics(context.Context, *cloudwatch.ListMetricsInput, ...func(*cloudwatch.Options)) (*cloudwatch.ListMetricsOutput, error)
}

// Poster posts into the incident channel.
type Poster interface {
	Post(ctx context.Context, m chat.Message) (chat.Ref, error)
}

// DefaultChecks are the seed's "typical monitoring": the box's status
// checks, CPU, and — when the CloudWatch agent publishes them — free disk
// and memory; and builders in service. Each names the fix that fits its
// signal (the seed: "a simple rebooting of machine, scale up the machine,
// or recovering from a backup"): a failed status check, a reboot; CPU or
// memory exhausted, a bigger instance type (`resize` alone: the next size
// of the box's family). A full disk has no button that fits: a bigger
// instance type does not grow a volume.
func DefaultChecks(withBuilders bool) []config.Check {
	m := config.Duration(time.Minute)
	c := []config.Check{
		{Name: "Services box status checks", Namespace: "AWS/EC2", Metric: "StatusCheckFailed", Dimensions: map[string]string{"InstanceId": "{box}"}, Stat: "Maximum", Op: ">", Threshold: 0, Clear: 0, For: 2, Period: m, Action: "reboot"},
		// Basic monitoring publishes EC2 CPU every 5 minutes.
		{Name: "Services box CPU", Namespace: "AWS/EC2", Metric: "CPUUtilization", Dimensions: map[string]string{"InstanceId": "{box}"}, Stat: "Average", Op: ">", Threshold: 90, Clear: 75, For: 2, Period: config.Duration(5 * time.Minute), Action: "resize"},
		// Every filesystem the agent reports, each by its path (see expand).
		{Name: "Services box disk used", Namespace: "CWAgent", Metric: "disk_used_percent", Dimensions: map[string]string{"InstanceId": "{box}"}, Stat: "Maximum", Op: ">", Threshold: 85, Clear: 80, For: 3, Period: m, Action: "status"},
		{Name: "Services box memory used", Namespace: "CWAgent", Metric: "mem_used_percent", Dimensions: map[string]string{"InstanceId": "{box}"}, Stat: "Average", Op: ">", Threshold: 95, Clear: 85, For: 3, Period: m, Action: "resize"},
	}
	if withBuilders {
		c = append(c, config.Check{Name: "Builders in service", Namespace: "AWS/AutoScaling", Metric: "GroupInServiceInstances", Dimensions: map[string]string{"AutoScalingGroupName": "{asg}"}, Stat: "Minimum", Op: "<", Threshold: 1, Clear: 1, For: 3, Period: m, Action: "builders status"})
	}
	return c
}

// State is one check's alert state.
type State struct {
	Check      string    `json:"check"`
	Alerting   bool      `json:"alerting"`
	Since      time.Time `json:"since,omitzero"`       // when the alert was raised
	ClearSince time.Time `json:"clear_since,omitzero"` // back to normal since (the cooldown runs)
	Value      float64   `json:"value"`
	Box        string    `json:"box,omitempty"`
}

// boxCheck is the check no metric can make: a box that is gone, stopped
// or not unique publishes no status checks at all.
var boxCheck = config.Check{Name: "Services box running", Metric: "state", Stat: "instances", Op: ">", Threshold: 0, Clear: 0, For: 1, Period: config.Duration(time.Minute), Action: "failover"}

const bucket = "monitor"

// EC2 is what the monitor reads: the box, and the instance types its
// zone offers (for the alert's resize button).
type EC2 interface {
	ops.EC2
	ops.TypeOfferings
}

// Monitor evaluates the checks every Interval.
type Monitor struct {
	CW      CloudWatch
	EC2     EC2
	Store   *store.Store
	Checks  []config.Check
	NameTag string
	ASG     string
	// ASGAPI reads whether the builder group collects the metrics its
	// checks watch; nil: not checked.
	ASGAPI   AutoScaling
	Cooldown time.Duration
	Post     Poster
	Slash    string
	Log      *slog.Logger
	// Leader gates each round (replicas: only the leader alerts); nil:
	// this is the only replica.
	Leader func() bool
	Now    func() time.Time

	// seen is the box as this round read it (nil: none, or not one).
	seen *ec2types.Instance
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
		// With replicas, only the leader watches: one alert per outage.
		if m.Leader == nil || m.Leader() {
			if err := m.Tick(ctx); err != nil && ctx.Err() == nil {
				m.Log.Warn("outage detection round failed", "err", err)
			}
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
	in, err := ops.FindBox(ctx, m.EC2, m.NameTag)
	var amb *ops.AmbiguousError
	m.seen = nil
	switch {
	case err == nil:
		box = aws.ToString(in.InstanceId)
		m.seen = &in
		bad := 0.0
		if in.State.Name != "running" {
			bad = 1
		}
		if held := m.operation(ctx); bad == 1 && held != "" {
			// An approved restore or failover stops the box on purpose:
			// its own messages say so; no page suggesting a failover.
			m.Log.Info("box not running during an operation", "box", box, "op", held)
			break
		}
		if err := m.evaluate(ctx, boxCheck, []float64{bad}, box, m.now(), "is "+string(in.State.Name)); err != nil {
			return err
		}
	case errors.Is(err, ops.ErrNotFound) && m.operation(ctx) != "":
		m.Log.Info("no Services box during an operation", "op", m.operation(ctx))
	case errors.Is(err, ops.ErrNotFound):
		if err := m.evaluate(ctx, boxCheck, []float64{1}, "", m.now(), "no instance is tagged Name="+m.NameTag); err != nil {
			return err
		}
	case errors.As(err, &amb):
		if err := m.evaluate(ctx, boxCheck, []float64{1}, "", m.now(), amb.Error()); err != nil {
			return err
		}
	default:
		// AWS cannot answer: that is unknown, not down; no alert on it
		// alone (status and failover say unknown too).
		m.Log.Warn("outage detection: cannot read the Services box", "err", err)
	}
	var queries []cwtypes.MetricDataQuery
	var checks []watched
	longest := time.Duration(0)
	for _, c := range m.Checks {
		dims, ok := m.dimensions(c, box)
		if !ok {
			continue
		}
		for _, w := range m.expand(ctx, c, dims) {
			checks = append(checks, w)
			period := max(c.Period.D(), time.Minute)
			// CloudWatch publishes a few minutes late: look back that much more.
			longest = max(longest, period*time.Duration(max(c.For, 1))+5*time.Minute)
			queries = append(queries, cwtypes.MetricDataQuery{
				Id: aws.String(fmt.Sprintf("m%d", len(queries))),
				MetricStat: &cwtypes.MetricStat{
					Metric: &cwtypes.Metric{Namespace: aws.String(c.Namespace), MetricName: aws.String(c.Metric), Dimensions: w.dims},
					Period: aws.Int32(int32(period.Seconds())), Stat: aws.String(c.Stat),
				},
			})
		}
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
	newest := map[string]time.Time{}
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
		if len(pts) > 0 && pts[0].t.After(newest[aws.ToString(r.Id)]) {
			newest[aws.ToString(r.Id)] = pts[0].t
		}
		for _, p := range pts {
			values[aws.ToString(r.Id)] = append(values[aws.ToString(r.Id)], p.v)
		}
	}
	boxUp := m.seen != nil && m.seen.State != nil && m.seen.State.Name == ec2types.InstanceStateNameRunning && m.operation(ctx) == ""
	for i, w := range checks {
		id := fmt.Sprintf("m%d", i)
		if err := m.watchData(ctx, w, newest[id], now, boxUp); err != nil {
			return err
		}
		if err := m.evaluate(ctx, w.c, values[id], box, now, ""); err != nil {
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

// evaluate moves one check's state. values are newest first. An alert is
// posted as soon as a check crosses; it is closed only after the values
// have stayed on the good side of the clear level for the cooldown, so a
// flapping metric keeps one alert open instead of posting many. State is
// saved only after the message went out: a post that fails is tried
// again next round.
func (m *Monitor) evaluate(ctx context.Context, c config.Check, values []float64, box string, now time.Time, seen string) error {
	var st State
	if err := m.Store.Get(ctx, bucket, c.Name, &st); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	st.Check = c.Name
	if !aboutBox(c) {
		box = "" // builders' checks are not about a box: a new box changes nothing
	}
	if st.Alerting && st.Box != "" && box != "" && st.Box != box {
		// A failover or restore replaced the box: the old alert is about
		// an instance that is no longer the Services box.
		if _, err := m.Post.Post(ctx, chat.Text(fmt.Sprintf(":information_source: The alert *%s* of %s UTC was about `%s`; the Services box is now `%s`. Closed; the new box is watched from now on.", c.Name, st.Since.UTC().Format("15:04"), st.Box, box))); err != nil {
			return err
		}
		st = State{Check: c.Name}
	}
	need := max(c.For, 1)
	if len(values) < need {
		return m.Store.Put(ctx, bucket, c.Name, st) // no (or not enough) data: nothing changes
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
		st.Alerting, st.Since, st.ClearSince, st.Box = true, now, time.Time{}, box
		if _, err := m.Post.Post(ctx, m.alert(ctx, c, st, need, seen)); err != nil {
			return err
		}
	case st.Alerting && clear:
		if st.ClearSince.IsZero() {
			st.ClearSince = now
		}
		if now.Sub(st.ClearSince) >= m.Cooldown {
			if _, err := m.Post.Post(ctx, chat.Text(fmt.Sprintf(":white_check_mark: *Recovered: %s* — %s is %s again (clear level %s) since %s UTC. The alert of %s UTC (%s) is closed.",
				c.Name, metricName(c), num(st.Value), num(c.Clear), st.ClearSince.UTC().Format("15:04"), st.Since.UTC().Format("15:04"), now.Sub(st.Since).Round(time.Second)))); err != nil {
				return err
			}
			st.Alerting, st.ClearSince = false, time.Time{}
		}
	case st.Alerting:
		st.ClearSince = time.Time{} // not clear (yet, or again): the alert stays open
	}
	return m.Store.Put(ctx, bucket, c.Name, st)
}

// operation names the operation running on the Services box right now
// (a restore or failover stops it on purpose), if any. One that stopped
// part-way does not count: the box is down and nobody is at it. The key is
// the one the bot's operations lock: box/<Name tag>.
func (m *Monitor) operation(ctx context.Context) string {
	locks, err := m.Store.Locks(ctx)
	if err != nil {
		return ""
	}
	for _, l := range locks {
		if l.Key != "box/"+m.NameTag || !strings.HasPrefix(l.OpID, "op-") {
			continue
		}
		if op, err := (journal.Store{KV: m.Store.KV()}).Get(ctx, l.OpID); err == nil && op.State == journal.Running {
			return l.OpID
		}
	}
	return ""
}

func aboutBox(c config.Check) bool {
	return c.Name == boxCheck.Name || strings.Contains(fmt.Sprint(c.Dimensions), "{box}")
}

func metricName(c config.Check) string { return c.Metric + " " + c.Stat }

func num(v float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")
}

func (m *Monitor) alert(ctx context.Context, c config.Check, st State, need int, seen string) chat.Message {
	where := ""
	if st.Box != "" && aboutBox(c) {
		where = " on `" + st.Box + "`"
	}
	text := fmt.Sprintf(":rotating_light: *%s*%s: %s %s is %s (alert %s %s) for %d period(s) of %s, since %s UTC.",
		c.Name, where, c.Metric, c.Stat, num(st.Value), c.Op, num(c.Threshold), need, ops.Span(c.Period.D()), st.Since.UTC().Format("15:04"))
	if seen != "" {
		text = fmt.Sprintf(":rotating_light: *%s*%s: no — %s, since %s UTC.", c.Name, where, seen, st.Since.UTC().Format("15:04"))
	}
	var buttons []slack.BlockElement
	if aboutBox(c) {
		fit, fixes := m.fixes(ctx, c)
		text += "\n" + fit
		if len(fixes) > 0 {
			text += "\nEach button asks for an ordinary request: nothing runs until a second person approves its plan."
		}
		buttons = append(fixes, button("status", "Status", ""))
	} else if c.Action != "" {
		text += fmt.Sprintf(" Suggested: `%s %s`.", m.Slash, c.Action)
		buttons = append(buttons, button(c.Action, "Request "+c.Action, ""))
	}
	if !aboutBox(c) && c.Action != "status" {
		buttons = append(buttons, button("status", "Status", ""))
	}
	blocks := chat.Section(text)
	// One button per actions block: Slack wants the action IDs within a
	// block to differ, and every command button carries the one action
	// ID the transports read its command from.
	for i, b := range buttons {
		blocks = append(blocks, slack.NewActionBlock(fmt.Sprintf("alert-%d", i), b))
	}
	return chat.Message{Text: fmt.Sprintf("Alert: %s %s is %s", c.Name, c.Metric, num(st.Value)), Blocks: blocks}
}

func button(command, label, style string) *slack.ButtonBlockElement {
	b := slack.NewButtonBlockElement(slackio.ButtonActionID, command, slack.NewTextBlockObject(slack.PlainTextType, label, false, false))
	if style != "" {
		b = b.WithStyle(slack.Style(style))
	}
	return b
}

// fixes are the buttons an alert about the box carries — reboot (a
// running box), resize to the next size of its family (when AWS offers
// one in its zone), restore latest and failover — each a command that
// opens an ordinary request, and the line that says which fits the
// signal: the check's action (a failed status check: reboot; CPU or
// memory: resize; the box not running: failover or restore).
func (m *Monitor) fixes(ctx context.Context, c config.Check) (string, []slack.BlockElement) {
	action := c.Action
	if c.Name == boxCheck.Name {
		action = "failover"
	}
	verb, arg, _ := strings.Cut(action, " ")
	running := m.seen != nil && m.seen.State != nil && m.seen.State.Name == ec2types.InstanceStateNameRunning
	resizeTo, noResize := "", ""
	if verb == "resize" {
		resizeTo = arg // a check may name the type
	}
	if resizeTo == "" && m.seen != nil {
		resizeTo, noResize = m.nextSize(ctx)
	}

	fit, why := "", ""
	switch {
	case verb == "reboot" && running:
		fit, why = "reboot", "a failed status check often clears with a reboot (same instance, IP and data); if it does not, failover or restore latest"
	case verb == "resize" && resizeTo != "":
		fit, why = "resize "+resizeTo, "the box is short of CPU or memory: a bigger instance type, stopped, changed and started on the same IP and volumes"
	case verb == "resize":
		why = fmt.Sprintf("a bigger instance type, but %s; choose one with `%s resize <type> --dry-run`", noResize, m.Slash)
	case verb == "restore":
		fit, why = "restore latest", "restore latest onto a new box, or failover to the replica"
	case verb == "reboot", verb == "failover":
		fit, why = "failover", "failover to the replica, or restore latest onto a new box"
		if !running {
			why = "the box is not running or cannot be found: " + why + "; a reboot cannot help"
		}
	case strings.Contains(c.Metric, "disk"):
		why = "none of the buttons: a bigger instance type does not grow a full disk. Grow the volume (EBS ModifyVolume) and its filesystem, or free space; `status` shows the box's volumes"
	default:
		why = "none of the buttons for certain; `status` shows the box"
	}
	line := "*Fits this signal:* " + why + "."
	if fit != "" {
		line = fmt.Sprintf("*Fits this signal:* `%s %s` — %s.", m.Slash, fit, why)
	}

	var cmds []string
	if running {
		cmds = append(cmds, "reboot")
	}
	if resizeTo != "" {
		cmds = append(cmds, "resize "+resizeTo)
	}
	cmds = append(cmds, "restore latest", "failover")
	// The fitting fix first and marked; those that replace the box are
	// marked dangerous otherwise.
	slices.SortStableFunc(cmds, func(a, b string) int {
		switch {
		case a == fit && b != fit:
			return -1
		case b == fit && a != fit:
			return 1
		}
		return 0
	})
	var out []slack.BlockElement
	for _, cmd := range cmds {
		style := ""
		switch {
		case cmd == fit:
			style = string(slack.StylePrimary)
		case cmd == "failover" || cmd == "restore latest":
			style = string(slack.StyleDanger)
		}
		label := "Request " + cmd
		if strings.HasPrefix(cmd, "resize ") {
			label = "Request resize to " + strings.TrimPrefix(cmd, "resize ")
		}
		out = append(out, button(cmd, label, style))
	}
	return line, out
}

// nextSize is the next size of the box's family offered in its zone, or
// why there is none.
func (m *Monitor) nextSize(ctx context.Context) (next, none string) {
	typ, az := string(m.seen.InstanceType), ""
	if m.seen.Placement != nil {
		az = aws.ToString(m.seen.Placement.AvailabilityZone)
	}
	next, err := ops.NextSize(ctx, m.EC2, typ, az)
	switch {
	case err != nil:
		m.Log.Warn("outage detection: the next instance size cannot be read", "type", typ, "err", err)
		return "", fmt.Sprintf("the next size of %s could not be read (%s)", typ, strings.TrimSuffix(ops.Explain(err), "."))
	case next == "":
		return "", fmt.Sprintf("no larger size of %s is offered in %s", typ, az)
	}
	return next, ""
}
