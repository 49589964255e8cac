package ops

import (
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// A restore from part of a set would boot a box with missing datastores
// and then terminate the old one: refused before anything is planned.
func TestRestoreRefusesAnIncompleteSet(t *testing.T) {
	snap := func(id string, tags ...string) ec2types.Snapshot {
		s := ec2types.Snapshot{SnapshotId: aws.String(id), State: ec2types.SnapshotStateCompleted}
		for i := 0; i+1 < len(tags); i += 2 {
			s.Tags = append(s.Tags, ec2types.Tag{Key: aws.String(tags[i]), Value: aws.String(tags[i+1])})
		}
		return s
	}
	three := []SnapshotRef{{ID: "snap-a"}, {ID: "snap-b"}, {ID: "snap-c"}}
	for _, tc := range []struct {
		name    string
		members []ec2types.Snapshot
		rec     *Backup
		want    string // "" = allowed
	}{
		{"whole, completed", []ec2types.Snapshot{snap("snap-a"), snap("snap-b"), snap("snap-c")}, &Backup{State: StateCompleted, Snapshots: three}, ""},
		{"one deleted by hand", []ec2types.Snapshot{snap("snap-a"), snap("snap-b")}, &Backup{State: StateCompleted, Snapshots: three}, "has 2 of its 3 snapshots"},
		{"partly pruned", []ec2types.Snapshot{snap("snap-a", TagPruning, "op-1")}, &Backup{State: StateCompleted, Snapshots: three, Pruning: "op-1"}, "partly pruned"},
		{"marked but whole (a prune stopped before deleting)", []ec2types.Snapshot{snap("snap-a", TagPruning, "op-1"), snap("snap-b", TagPruning, "op-1"), snap("snap-c", TagPruning, "op-1")}, &Backup{State: StateCompleted, Snapshots: three, Pruning: "op-1"}, ""},
		{"failed per-volume backup", []ec2types.Snapshot{snap("snap-a")}, &Backup{State: StateFailed, Error: "snapshot vol-0b: AWS said InternalError.", Snapshots: three[:1]}, "failed (snapshot vol-0b"},
		{"no record, set size says incomplete", []ec2types.Snapshot{snap("snap-a", TagSetSize, "3")}, nil, "has 1 of its 3 snapshots"},
		{"no record, pruning tag", []ec2types.Snapshot{snap("snap-a", TagPruning, "op-9")}, nil, "partly pruned"},
		{"no record, nothing says otherwise", []ec2types.Snapshot{snap("snap-a")}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := wholeSet("bk-1", tc.members, tc.rec)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want a refusal saying %q", err, tc.want)
			}
			var r *RefusalError
			if err != nil && !errors.As(err, &r) {
				t.Fatalf("%v is not a refusal the user can act on", err)
			}
		})
	}
}

// Two sets carrying one backup's tag (a CreateSnapshots retried after a
// lost answer): the restore takes the recorded one only.
func TestRecordedMembersKeepsOnlyTheRecordedSet(t *testing.T) {
	snap := func(id string) ec2types.Snapshot { return ec2types.Snapshot{SnapshotId: aws.String(id)} }
	members := []ec2types.Snapshot{snap("snap-a1"), snap("snap-b1"), snap("snap-a2"), snap("snap-b2")}
	rec := &Backup{ID: "bk-1", Snapshots: []SnapshotRef{{ID: "snap-a1"}, {ID: "snap-a2"}}}
	got := recordedMembers(members, rec)
	if len(got) != 2 || aws.ToString(got[0].SnapshotId) != "snap-a1" || aws.ToString(got[1].SnapshotId) != "snap-a2" {
		t.Errorf("kept %v", got)
	}
	if len(members) != 4 {
		t.Error("the caller's slice was changed")
	}
	if got := recordedMembers(members, nil); len(got) != 4 {
		t.Errorf("without a record: %d kept, want all 4", len(got))
	}
}
