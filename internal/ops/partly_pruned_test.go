package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/store"
)

// snapEC2 answers DescribeSnapshots from a fixed list (one page); any
// other EC2 call panics.
type snapEC2 struct {
	EC2
	snaps []ec2types.Snapshot
}

func (f *snapEC2) DescribeSnapshots(context.Context, *ec2.DescribeSnapshotsInput, ...func(*ec2.Options)) (*ec2.DescribeSnapshotsOutput, error) {
	return &ec2.DescribeSnapshotsOutput{Snapshots: f.snaps}, nil
}

var t0 = time.Date(2026, 11, 28, 6, 0, 0, 0, time.UTC)

// botSnap is a completed snapshot of bot backup id, with extra tags.
func botSnap(id, snap string, kv ...string) ec2types.Snapshot {
	tags := []ec2types.Tag{{Key: aws.String(TagBackupID), Value: aws.String(id)}, {Key: aws.String(TagTrigger), Value: aws.String("scheduled")}}
	for i := 0; i+1 < len(kv); i += 2 {
		tags = append(tags, ec2types.Tag{Key: aws.String(kv[i]), Value: aws.String(kv[i+1])})
	}
	return ec2types.Snapshot{SnapshotId: aws.String(snap), Description: aws.String(BackupDescription(t0)), StartTime: aws.Time(t0),
		State: ec2types.SnapshotStateCompleted, VolumeSize: aws.Int32(8), Tags: tags}
}

func record(id string, pruning string, snaps ...string) *Backup {
	b := &Backup{ID: id, Method: MethodEBS, State: StateCompleted, Trigger: "scheduled", Started: t0, Pruning: pruning}
	for _, s := range snaps {
		b.Snapshots = append(b.Snapshots, SnapshotRef{ID: s, SizeGiB: 8, State: "completed"})
	}
	return b
}

// A set a prune marked and then deleted part of is partly pruned — not a
// failed backup, not a restore point — whether the mark is on the
// snapshots (record or not) or only in the record. Everything else reads
// as before: a set missing snapshots without a mark is failed, and a
// marked set that is whole is the restore point it was.
func TestRestorePointsPartlyPruned(t *testing.T) {
	const op = "op-20261128-070000-abcd"
	mark := []string{TagPruning, op, TagSetSize, "3"}
	cases := []struct {
		name      string
		snaps     []ec2types.Snapshot
		recs      []*Backup
		state     string
		prunedBy  string
		setSize   int
		errSubstr string
	}{
		{"tagged, 2 of 3 left, with its record",
			[]ec2types.Snapshot{botSnap("bk-a", "snap-2", mark...), botSnap("bk-a", "snap-3", mark...)},
			[]*Backup{record("bk-a", "", "snap-1", "snap-2", "snap-3")}, StatePartlyPruned, op, 3, ""},
		{"tagged, 1 of 3 left, its record lost: the tag says how many it had",
			[]ec2types.Snapshot{botSnap("bk-a", "snap-3", mark...)},
			nil, StatePartlyPruned, op, 3, ""},
		{"marked in the record only (the tags could not be written)",
			[]ec2types.Snapshot{botSnap("bk-a", "snap-2"), botSnap("bk-a", "snap-3")},
			[]*Backup{record("bk-a", op, "snap-1", "snap-2", "snap-3")}, StatePartlyPruned, op, 3, ""},
		{"snapshots deleted by someone, no mark: a failed restore point as before",
			[]ec2types.Snapshot{botSnap("bk-a", "snap-2"), botSnap("bk-a", "snap-3")},
			[]*Backup{record("bk-a", "", "snap-1", "snap-2", "snap-3")}, StateFailed, "", 3, "2 of its 3 snapshots remain"},
		{"marked but whole: the prune stopped before its first deletion",
			[]ec2types.Snapshot{botSnap("bk-a", "snap-1", mark...), botSnap("bk-a", "snap-2", mark...), botSnap("bk-a", "snap-3", mark...)},
			[]*Backup{record("bk-a", op, "snap-1", "snap-2", "snap-3")}, StateCompleted, op, 3, ""},
		{"tag write failed part-way and nothing else marks it: not the prune's doing",
			[]ec2types.Snapshot{botSnap("bk-a", "snap-2", mark...), botSnap("bk-a", "snap-3")},
			[]*Backup{record("bk-a", "", "snap-1", "snap-2", "snap-3")}, StateFailed, "", 3, "2 of its 3 snapshots remain"},
		{"hand-made snapshots carrying the tag are not the bot's",
			[]ec2types.Snapshot{{SnapshotId: aws.String("snap-9"), Description: aws.String(BackupDescription(t0)), StartTime: aws.Time(t0), State: ec2types.SnapshotStateCompleted,
				Tags: []ec2types.Tag{{Key: aws.String(TagPruning), Value: aws.String(op)}, {Key: aws.String(TagSetSize), Value: aws.String("3")}}}},
			nil, StateCompleted, "", 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pts, err := RestorePoints(t.Context(), &snapEC2{snaps: c.snaps}, c.recs)
			if err != nil {
				t.Fatal(err)
			}
			if len(pts) != 1 {
				t.Fatalf("%d points: %+v", len(pts), pts)
			}
			p := pts[0]
			if p.State != c.state || p.PrunedBy != c.prunedBy || p.SetSize != c.setSize || !strings.Contains(p.Error, c.errSubstr) {
				t.Errorf("state %q by %q of %d (%q), want %q by %q of %d (%q)", p.State, p.PrunedBy, p.SetSize, p.Error, c.state, c.prunedBy, c.setSize, c.errSubstr)
			}
			if p.PartlyPruned() && (p.Usable() || p.Error != "") {
				t.Errorf("a partly pruned set is usable or an error: %+v", p)
			}
			if _, ok := Newest(pts); ok != (c.state == StateCompleted) {
				t.Errorf("Newest found a restore point: %v", ok)
			}
		})
	}
}

// A partly pruned set is finished whatever the policy says of it — even
// a policy that keeps it many times over, and even when it is the newest
// bot set — except while an AMI uses one of its snapshots; the rest of
// retention's rules are as they were.
func TestRetainFinishesAPartlyPrunedSet(t *testing.T) {
	day := func(d, h int) time.Time { return time.Date(2026, 11, d, h, 0, 0, 0, time.UTC) }
	partly := pt("p1", day(28, 20), true, StatePartlyPruned)
	partly.Snapshots, partly.PrunedBy, partly.SetSize = []string{"snap-p1b", "snap-p1c"}, "op-1", 3
	points := []Point{
		partly, // newest of all
		pt("a1", day(28, 18), true, StateFailed),
		pt("a2", day(28, 12), true, StateCompleted), // newest completed
		pt("manual", day(28, 3), false, StateCompleted),
		pt("b1", day(27, 18), true, StateCompleted),
	}
	cases := []struct {
		name   string
		policy Policy
		inUse  map[string]bool
		pruned []string
		finish bool
	}{
		{"a generous policy still finishes it", Policy{KeepLast: 10, KeepDaily: 10, KeepWeekly: 10}, nil, []string{"p1"}, true},
		{"keep last 1", Policy{KeepLast: 1}, nil, []string{"p1", "b1"}, true},
		{"an AMI uses what is left", Policy{KeepLast: 1}, map[string]bool{"snap-p1c": true}, []string{"b1"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var pruned []string
			vs := Retain(points, c.policy, c.inUse)
			for _, v := range vs {
				if !v.Keep {
					pruned = append(pruned, v.Point.ID)
				}
				if v.Point.ID != "p1" && v.Finish {
					t.Errorf("%s is finished: %+v", v.Point.ID, v)
				}
			}
			if fmt.Sprint(pruned) != fmt.Sprint(c.pruned) {
				t.Errorf("pruned %v, want %v", pruned, c.pruned)
			}
			if v := vs[0]; v.Finish != c.finish || !strings.Contains(v.Why, "partly pruned") || !strings.Contains(v.Why, "op-1") {
				t.Errorf("partly pruned set: %+v", v)
			}
			if v := vs[2]; !v.Keep || !v.Newest {
				t.Errorf("the newest completed restore point: %+v", v)
			}
		})
	}
}

// pruneEC2 records the pruning calls in order and fails those a test
// names.
type pruneEC2 struct {
	calls     []string
	tagErr    error
	deleteErr map[string]error
	gone      map[string]bool
}

func (f *pruneEC2) DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error) {
	return &ec2.DescribeImagesOutput{}, nil
}

func (f *pruneEC2) CreateTags(_ context.Context, in *ec2.CreateTagsInput, _ ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error) {
	var kv []string
	for _, t := range in.Tags {
		kv = append(kv, aws.ToString(t.Key)+"="+aws.ToString(t.Value))
	}
	f.calls = append(f.calls, "CreateTags "+strings.Join(in.Resources, ",")+" "+strings.Join(kv, ","))
	return &ec2.CreateTagsOutput{}, f.tagErr
}

func (f *pruneEC2) DeleteSnapshot(_ context.Context, in *ec2.DeleteSnapshotInput, _ ...func(*ec2.Options)) (*ec2.DeleteSnapshotOutput, error) {
	id := aws.ToString(in.SnapshotId)
	f.calls = append(f.calls, "DeleteSnapshot "+id)
	if f.gone[id] {
		return nil, apiErr("DeleteSnapshot", "InvalidSnapshot.NotFound")
	}
	return &ec2.DeleteSnapshotOutput{}, f.deleteErr[id]
}

func doomed(id string, snaps ...string) Verdict {
	return Verdict{Point: Point{ID: id, Method: MethodEBS, State: StateCompleted, MadeByBot: true, Snapshots: snaps, SetSize: len(snaps)}, Why: "past the retention policy"}
}

type markCall struct{ id, op string }

// pruneLog is a Progress that keeps the log lines.
type pruneLog struct{ lines []string }

func (l *pruneLog) Begin(int, string)             {}
func (l *pruneLog) Done(int, string)              {}
func (l *pruneLog) Skip(int, string)              {}
func (l *pruneLog) Fail(int, error)               {}
func (l *pruneLog) Progress(int, float64, string) {}
func (l *pruneLog) Log(line string)               { l.lines = append(l.lines, line) }
func (l *pruneLog) has(sub string) bool {
	return slices.ContainsFunc(l.lines, func(s string) bool { return strings.Contains(s, sub) })
}

// The mark goes on every snapshot of a set, in one call, before the
// first of them is deleted; the record is marked too. A deletion that
// fails stops the prune with the set marked and partly deleted.
func TestPrunerMarksEverySnapshotBeforeDeletingAny(t *testing.T) {
	api := &pruneEC2{deleteErr: map[string]error{"snap-b2": apiErr("DeleteSnapshot", "InternalError")}}
	var marks []markCall
	pr := Pruner{EC2: api, Op: "op-9", Mark: func(_ context.Context, id, op string) error {
		marks = append(marks, markCall{id, op})
		return nil
	}}
	keep := Verdict{Point: Point{ID: "bk-new", Snapshots: []string{"snap-n1"}}, Keep: true}
	deleted, err := pr.Prune(t.Context(), []Verdict{keep, doomed("bk-a", "snap-a1", "snap-a2", "snap-a3"), doomed("bk-b", "snap-b1", "snap-b2", "snap-b3")}, &pruneLog{})
	if err == nil || !strings.Contains(err.Error(), "snap-b2 of bk-b") {
		t.Fatalf("err = %v", err)
	}
	if fmt.Sprint(deleted) != "[snap-a1 snap-a2 snap-a3 snap-b1]" {
		t.Errorf("deleted %v", deleted)
	}
	want := []string{
		"CreateTags snap-a1,snap-a2,snap-a3 circlebot:pruning=op-9,circlebot:set-size=3",
		"DeleteSnapshot snap-a1", "DeleteSnapshot snap-a2", "DeleteSnapshot snap-a3",
		"CreateTags snap-b1,snap-b2,snap-b3 circlebot:pruning=op-9,circlebot:set-size=3",
		"DeleteSnapshot snap-b1", "DeleteSnapshot snap-b2",
	}
	if !slices.Equal(api.calls, want) {
		t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(api.calls, "\n"), strings.Join(want, "\n"))
	}
	if fmt.Sprint(marks) != "[{bk-a op-9} {bk-b op-9}]" {
		t.Errorf("records marked: %v", marks)
	}
}

// A set neither the tags nor the record could mark is not touched; one
// the record marks is deleted even when the tags cannot be written.
func TestPrunerDeletesOnlyWhatItMarked(t *testing.T) {
	denied := apiErr("CreateTags", "UnauthorizedOperation")
	t.Run("neither", func(t *testing.T) {
		api := &pruneEC2{tagErr: denied}
		pr := Pruner{EC2: api, Op: "op-9", Mark: func(context.Context, string, string) error { return fmt.Errorf("backup bk-a: %w", ErrNotFound) }}
		deleted, err := pr.Prune(t.Context(), []Verdict{doomed("bk-a", "snap-a1", "snap-a2")}, &pruneLog{})
		if err == nil || len(deleted) != 0 || !strings.Contains(err.Error(), "nothing of it was deleted") {
			t.Errorf("deleted %v, err %v", deleted, err)
		}
		if slices.ContainsFunc(api.calls, func(c string) bool { return strings.HasPrefix(c, "DeleteSnapshot") }) {
			t.Errorf("deleted an unmarked set: %v", api.calls)
		}
	})
	t.Run("no record store either", func(t *testing.T) {
		api := &pruneEC2{tagErr: denied}
		deleted, err := Pruner{EC2: api, Op: "op-9"}.Prune(t.Context(), []Verdict{doomed("bk-a", "snap-a1")}, &pruneLog{})
		if err == nil || len(deleted) != 0 {
			t.Errorf("deleted %v, err %v", deleted, err)
		}
	})
	t.Run("the record", func(t *testing.T) {
		api := &pruneEC2{tagErr: denied}
		log := &pruneLog{}
		pr := Pruner{EC2: api, Op: "op-9", Mark: func(context.Context, string, string) error { return nil }}
		deleted, err := pr.Prune(t.Context(), []Verdict{doomed("bk-a", "snap-a1", "snap-a2")}, log)
		if err != nil || len(deleted) != 2 {
			t.Errorf("deleted %v, err %v", deleted, err)
		}
		if !log.has("the bot's record marks it") {
			t.Errorf("log: %v", log.lines)
		}
	})
}

// A partly pruned set is finished without marking it again: what is
// left is deleted, what is already gone is skipped.
func TestPrunerFinishesAPartlyPrunedSet(t *testing.T) {
	api := &pruneEC2{gone: map[string]bool{"snap-a2": true}}
	v := doomed("bk-a", "snap-a2", "snap-a3")
	v.Finish, v.Point.State, v.Point.SetSize, v.Point.PrunedBy = true, StatePartlyPruned, 3, "op-1"
	log := &pruneLog{}
	pr := Pruner{EC2: api, Op: "op-9", Mark: func(context.Context, string, string) error { t.Error("marked again"); return nil }}
	deleted, err := pr.Prune(t.Context(), []Verdict{v}, log)
	if err != nil || fmt.Sprint(deleted) != "[snap-a3]" {
		t.Errorf("deleted %v, err %v", deleted, err)
	}
	if want := []string{"DeleteSnapshot snap-a2", "DeleteSnapshot snap-a3"}; !slices.Equal(api.calls, want) {
		t.Errorf("calls %v, want %v", api.calls, want)
	}
	if !log.has("finished pruning bk-a") || !log.has("op-1") {
		t.Errorf("log: %v", log.lines)
	}
}

// More snapshots than one CreateTags may name are tagged in parts of
// AWS's limit.
func TestPrunerTagsAtMostAThousandSnapshotsACall(t *testing.T) {
	snaps := make([]string, maxTagResources+1)
	for i := range snaps {
		snaps[i] = fmt.Sprintf("snap-%05d", i)
	}
	api := &pruneEC2{}
	if _, err := (Pruner{EC2: api, Op: "op-9"}).Prune(t.Context(), []Verdict{doomed("bk-a", snaps...)}, &pruneLog{}); err != nil {
		t.Fatal(err)
	}
	var tags []int
	for _, c := range api.calls {
		if strings.HasPrefix(c, "CreateTags ") {
			tags = append(tags, strings.Count(strings.Fields(c)[1], ",")+1)
		}
	}
	if fmt.Sprint(tags) != "[1000 1]" || !strings.HasPrefix(api.calls[2], "DeleteSnapshot") {
		t.Errorf("CreateTags calls of %v snapshots; first calls %v", tags, api.calls[:3])
	}
}

// The record of a backup keeps its state and notes the prune.
func TestMarkPruningKeepsTheRecordsState(t *testing.T) {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	recs := Records{Store: st}
	if err := recs.SaveBackup(t.Context(), record("bk-a", "", "snap-1")); err != nil {
		t.Fatal(err)
	}
	if err := recs.MarkPruning(t.Context(), "bk-a", "op-9"); err != nil {
		t.Fatal(err)
	}
	b, err := recs.Backup(t.Context(), "bk-a")
	if err != nil || b.Pruning != "op-9" || b.State != StateCompleted {
		t.Errorf("record %+v, err %v", b, err)
	}
	for _, id := range []string{"bk-none", "snap-1x"} {
		if err := recs.MarkPruning(t.Context(), id, "op-9"); !errors.Is(err, ErrNotFound) {
			t.Errorf("mark %s: %v", id, err)
		}
	}
}

// The daily report does not count a partly pruned set as a failed
// backup, nor as a restore point; it says retention finishes it, and
// the set's history as a restore point (the RPO sawtooth) stays.
func TestReportOfAPartlyPrunedSet(t *testing.T) {
	const op = "op-20261128-070000-abcd"
	snaps := []ec2types.Snapshot{botSnap("bk-a", "snap-2", TagPruning, op, TagSetSize, "3"), botSnap("bk-a", "snap-3", TagPruning, op, TagSetSize, "3")}
	recs := []*Backup{record("bk-a", op, "snap-1", "snap-2", "snap-3")}
	pts, err := RestorePoints(t.Context(), &snapEC2{snaps: snaps}, recs)
	if err != nil {
		t.Fatal(err)
	}
	r := BuildReport(ReportInput{Now: t0.Add(2 * time.Hour), Points: pts, Records: recs, RPO: 24 * time.Hour, Prune: Retain(pts, Policy{KeepLast: 5}, nil)})
	if len(r.Failed) != 0 || r.Count != 0 || r.Newest != nil {
		t.Errorf("failed %+v, count %d, newest %+v", r.Failed, r.Count, r.Newest)
	}
	if len(r.Recent) != 1 || r.Recent[0].State != StatePartlyPruned {
		t.Errorf("recent %+v", r.Recent)
	}
	if len(r.PruneNext) != 1 || r.PruneNext[0].ID != "bk-a" {
		t.Errorf("prune next %+v", r.PruneNext)
	}
	if last := r.Age[len(r.Age)-1]; last.Age < 0 {
		t.Errorf("the sawtooth forgot the set: %+v", last)
	}
}
