package monitor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/store"
)

// AutoScaling is what the monitor reads of the builder group: whether it
// collects the group metrics a check watches.
type AutoScaling interface {
	DescribeAutoScalingGroups(context.Context, *autoscaling.DescribeAutoScalingGroupsInput, ...func(*autoscaling.Options)) (*autoscaling.DescribeAutoScalingGroupsOutput, error)
}

// agentNamespace is the CloudWatch agent's. The agent adds dimensions of
// its own to what it publishes (disk: device, fstype, path; often
// ImageId and InstanceType, per its append_dimensions), and CloudWatch
// answers a query only for the exact dimension set, so a check in it
// never queries the dimensions it was configured with: it finds the
// sets the agent really publishes for the box.
const agentNamespace = "CWAgent"

// watched is one metric stream a check watches: the check (named for the
// filesystem when there are several) and the exact dimension set. blind
// says why it cannot have data, when that is known.
type watched struct {
	c     config.Check
	dims  []cwtypes.Dimension
	blind string
	// definite: blind for certain (collection is off), not only so far.
	definite bool
}

// expand turns a check into the metric streams it watches. A CWAgent
// check about the box watches every dimension set ListMetrics finds for
// the box that carries the configured dimensions (the configured ones
// are filters: {"path": "/data"} watches /data alone, none watches every
// filesystem). A builder-group check says when the group does not
// collect its metric. A read that fails leaves the configured query.
func (m *Monitor) expand(ctx context.Context, c config.Check, dims []cwtypes.Dimension) []watched {
	one := []watched{{c: c, dims: dims}}
	switch {
	case c.Namespace == agentNamespace && aboutBox(c):
		found, err := m.listMetrics(ctx, c, dims)
		if err != nil {
			m.Log.Warn("outage detection: cannot list the agent's metrics; querying the configured dimensions", "check", c.Name, "err", err)
			return one
		}
		if len(found) == 0 {
			one[0].blind = fmt.Sprintf("CloudWatch holds no %s %s metric with %s (ListMetrics found none): is the CloudWatch agent installed, running and allowed to publish on the box?", c.Namespace, c.Metric, dimText(dims))
			return one
		}
		out := make([]watched, 0, len(found))
		for _, d := range found {
			w := watched{c: c, dims: d}
			if _, filtered := c.Dimensions["path"]; !filtered {
				if p := dimValue(d, "path"); p != "" {
					w.c.Name = c.Name + " (" + p + ")"
				}
			}
			out = append(out, w)
		}
		slices.SortFunc(out, func(a, b watched) int { return strings.Compare(a.c.Name, b.c.Name) })
		return out
	case c.Namespace == "AWS/AutoScaling" && m.ASG != "" && m.ASGAPI != nil:
		if why := m.groupMetricsOff(ctx, c); why != "" {
			one[0].blind, one[0].definite = why, true
		}
	}
	return one
}

func (m *Monitor) listMetrics(ctx context.Context, c config.Check, dims []cwtypes.Dimension) ([][]cwtypes.Dimension, error) {
	var filters []cwtypes.DimensionFilter
	for _, d := range dims {
		filters = append(filters, cwtypes.DimensionFilter{Name: d.Name, Value: d.Value})
	}
	in := &cloudwatch.ListMetricsInput{Namespace: aws.String(c.Namespace), MetricName: aws.String(c.Metric), Dimensions: filters}
	var out [][]cwtypes.Dimension
	seen := map[string]bool{}
	for page := 0; page < 20; page++ { // 500 per page: far beyond one box's filesystems
		res, err := m.CW.ListMetrics(ctx, in)
		if err != nil {
			return nil, err
		}
		for _, mt := range res.Metrics {
			// Queried as listed: CloudWatch ignores the order, moto 5.2.1
			// does not (its Dimension sorts wrongly).
			sorted := slices.Clone(mt.Dimensions)
			slices.SortFunc(sorted, func(a, b cwtypes.Dimension) int { return strings.Compare(aws.ToString(a.Name), aws.ToString(b.Name)) })
			if k := dimText(sorted); !seen[k] {
				seen[k] = true
				out = append(out, mt.Dimensions)
			}
		}
		if aws.ToString(res.NextToken) == "" {
			break
		}
		in.NextToken = res.NextToken
	}
	return out, nil
}

// groupMetricsOff says why a builder-group check cannot have data: Auto
// Scaling publishes group metrics only when collection is enabled for
// them (DescribeAutoScalingGroups EnabledMetrics).
func (m *Monitor) groupMetricsOff(ctx context.Context, c config.Check) string {
	out, err := m.ASGAPI.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{m.ASG}})
	if err != nil || len(out.AutoScalingGroups) == 0 {
		if err != nil {
			m.Log.Warn("outage detection: cannot read the builder group", "group", m.ASG, "err", err)
		}
		return ""
	}
	for _, em := range out.AutoScalingGroups[0].EnabledMetrics {
		if aws.ToString(em.Metric) == c.Metric {
			return ""
		}
	}
	return fmt.Sprintf("group metrics collection for %s is off for the builder group %s, so Auto Scaling publishes no data for it. Turn it on: `aws autoscaling enable-metrics-collection --auto-scaling-group-name %s --granularity 1Minute --metrics %s`.", c.Metric, m.ASG, m.ASG, c.Metric)
}

func dimValue(dims []cwtypes.Dimension, name string) string {
	for _, d := range dims {
		if aws.ToString(d.Name) == name {
			return aws.ToString(d.Value)
		}
	}
	return ""
}

func dimText(dims []cwtypes.Dimension) string {
	var parts []string
	for _, d := range dims {
		parts = append(parts, aws.ToString(d.Name)+"="+aws.ToString(d.Value))
	}
	return strings.Join(parts, ", ")
}

// blindState is whether a watched stream has data: no datapoints for
// several periods is a state of its own ("monitoring is blind"), alerted
// once and closed when data returns. A check without data otherwise
// looks exactly like a healthy one.
type blindState struct {
	Check    string    `json:"check"`
	Watching time.Time `json:"watching"`           // first round that watched it
	LastData time.Time `json:"last_data,omitzero"` // newest datapoint seen
	Blind    bool      `json:"blind"`
	Since    time.Time `json:"since,omitzero"` // when the blind alert went out
}

// blindAfter is how long a stream may go without data: several periods,
// on top of the few minutes CloudWatch publishes late.
func blindAfter(c config.Check) time.Duration {
	return 3 * max(c.Period.D(), time.Minute)
}

// watchData moves the blind state of one stream. newest is its newest
// datapoint in this round's window (zero: none). A box that is not
// running publishes nothing; the box check speaks for it.
func (m *Monitor) watchData(ctx context.Context, w watched, newest time.Time, now time.Time, boxUp bool) error {
	key := "blind/" + w.c.Name
	var st blindState
	if err := m.Store.Get(ctx, bucket, key, &st); err != nil && !isNotFound(err) {
		return err
	}
	st.Check = w.c.Name
	if st.Watching.IsZero() {
		st.Watching = now
	}
	what := fmt.Sprintf("*%s* (`%s %s`, %s)", w.c.Name, w.c.Namespace, w.c.Metric, dimText(w.dims))
	switch {
	case !newest.IsZero():
		if newest.After(st.LastData) {
			st.LastData = newest
		}
		if st.Blind {
			if _, err := m.Post.Post(ctx, chat.Text(fmt.Sprintf(":eyes: Monitoring sees again: %s has data again (newest %s UTC); it was blind since %s UTC.", what, newest.UTC().Format("15:04"), st.Since.UTC().Format("15:04")))); err != nil {
				return err
			}
			st.Blind, st.Since = false, time.Time{}
		}
	case st.Blind || (aboutBox(w.c) && !boxUp):
	default:
		ref, since := st.Watching, "since the bot began watching it at "+st.Watching.UTC().Format("15:04")+" UTC"
		if !st.LastData.IsZero() {
			ref, since = st.LastData.Add(5*time.Minute), "since "+st.LastData.UTC().Format("15:04")+" UTC"
		}
		if !w.definite && now.Sub(ref) < blindAfter(w.c) {
			break
		}
		why := w.blind
		if why == "" {
			why = fmt.Sprintf("No datapoints for %s.", ops.Span(now.Sub(st.LastDataOr(st.Watching))))
		}
		if _, err := m.Post.Post(ctx, chat.Text(fmt.Sprintf(":see_no_evil: Monitoring is blind: no data for %s %s. %s Until data returns this check cannot alert; this message is not repeated.", what, since, why))); err != nil {
			return err
		}
		st.Blind, st.Since = true, now
	}
	return m.Store.Put(ctx, bucket, key, st)
}

// LastDataOr is the newest datapoint seen, or t when none was.
func (s blindState) LastDataOr(t time.Time) time.Time {
	if s.LastData.IsZero() {
		return t
	}
	return s.LastData
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }
