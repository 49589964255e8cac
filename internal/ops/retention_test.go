package ops

import (
	"fmt"
	"testing"
	"time"
)

func pt(id string, started time.Time, bot bool, state string) Point {
	return Point{ID: id, Method: "ebs", State: state, Started: started, MadeByBot: bot, Snapshots: []string{"snap-" + id}}
}

func TestRetain(t *testing.T) {
	day := func(d, h int) time.Time { return time.Date(2026, 11, d, h, 0, 0, 0, time.UTC) }
	// Newest first: four a day on Nov 28 and 27, one on the 20th and the 10th.
	points := []Point{
		pt("a1", day(28, 18), true, StateFailed),    // newest, but failed
		pt("a2", day(28, 12), true, StateCompleted), // newest completed
		pt("a3", day(28, 6), true, StateCompleted),
		pt("manual", day(28, 3), false, StateCompleted),
		pt("a4", day(28, 0), true, StateCompleted),
		pt("b1", day(27, 18), true, StateCompleted),
		pt("b2", day(27, 6), true, StateCompleted),
		pt("c1", day(20, 6), true, StateCompleted),
		pt("d1", day(10, 6), true, StateCompleted),
		pt("run", day(9, 6), true, StateRunning),
	}
	cases := []struct {
		name   string
		policy Policy
		inUse  map[string]bool
		pruned []string
	}{
		{"no policy keeps all", Policy{}, nil, nil},
		{"keep last 1 still keeps hand-made, failed, running", Policy{KeepLast: 1}, nil, []string{"a3", "a4", "b1", "b2", "c1", "d1"}},
		{"keep last 2", Policy{KeepLast: 2}, nil, []string{"a4", "b1", "b2", "c1", "d1"}},
		{"daily 2", Policy{KeepDaily: 2}, nil, []string{"a3", "a4", "b2", "c1", "d1"}},
		{"weekly 2: weeks 48 and 47", Policy{KeepWeekly: 2}, nil, []string{"a3", "a4", "b1", "b2", "d1"}},
		{"AMI in use is kept", Policy{KeepLast: 1}, map[string]bool{"snap-c1": true}, []string{"a3", "a4", "b1", "b2", "d1"}},
		{"last 1 + daily 3 + weekly 3", Policy{KeepLast: 1, KeepDaily: 3, KeepWeekly: 3}, nil, []string{"a3", "a4", "b2"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var pruned []string
			for _, v := range Retain(points, c.policy, c.inUse) {
				if v.Why == "" {
					t.Errorf("%s has no reason", v.Point.ID)
				}
				if !v.Keep {
					pruned = append(pruned, v.Point.ID)
				}
			}
			if fmt.Sprint(pruned) != fmt.Sprint(c.pruned) {
				t.Errorf("pruned %v, want %v", pruned, c.pruned)
			}
		})
	}
}

func TestRetainNeverPrunesTheNewestCompleted(t *testing.T) {
	// Even a policy that would keep nothing of the bot's keeps the newest.
	now := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	points := []Point{pt("x", now, true, StateCompleted), pt("y", now.Add(-time.Hour), true, StateCompleted)}
	vs := Retain(points, Policy{KeepWeekly: 1}, nil)
	if !vs[0].Keep || vs[0].Why != "the newest completed restore point" || vs[1].Keep {
		t.Fatalf("%+v", vs)
	}
}
