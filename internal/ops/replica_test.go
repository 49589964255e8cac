package ops

import (
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// The replica's age comes from the build's tag (else its launch), and each
// change of the box since is a warning: another type, another AMI, a
// newer launch; so is an age past replica.max_age.
func TestAgeOfWarnsAboutWhatChangedSinceTheReplicaWasBuilt(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	built := now.Add(-48 * time.Hour)
	tags := func(kv ...string) []ec2types.Tag {
		var out []ec2types.Tag
		for i := 0; i+1 < len(kv); i += 2 {
			out = append(out, ec2types.Tag{Key: aws.String(kv[i]), Value: aws.String(kv[i+1])})
		}
		return out
	}
	rep := ec2types.Instance{InstanceType: "m5.2xlarge", LaunchTime: aws.Time(built.Add(time.Hour)),
		Tags: tags(TagReplicaData, built.Format(time.RFC3339), TagBoxImage, "ami-1", TagBoxType, "m5.2xlarge")}
	box := ec2types.Instance{InstanceType: "m5.2xlarge", ImageId: aws.String("ami-1"), LaunchTime: aws.Time(built.Add(-time.Hour))}

	a := AgeOf(box, rep, 0, now)
	if !a.Built || !a.AsOf.Equal(built) || len(a.Warnings) != 0 {
		t.Fatalf("unchanged box: %+v", a)
	}
	if a := AgeOf(box, rep, 24*time.Hour, now); len(a.Warnings) != 1 || !strings.Contains(a.Warnings[0], "replica.max_age") {
		t.Errorf("past max_age: %v", a.Warnings)
	}
	changed := box
	changed.InstanceType, changed.ImageId, changed.LaunchTime = "m5.4xlarge", aws.String("ami-2"), aws.Time(now.Add(-time.Hour))
	a = AgeOf(changed, rep, 0, now)
	got := strings.Join(a.Warnings, "\n")
	for _, want := range []string{"is m5.4xlarge now", "new AMI (ami-2", "was launched"} {
		if !strings.Contains(got, want) {
			t.Errorf("warnings lack %q:\n%s", want, got)
		}
	}
	// A replica made by hand: its launch is its age, its own type the one
	// compared.
	hand := ec2types.Instance{InstanceType: "m5.xlarge", LaunchTime: aws.Time(built)}
	if a := AgeOf(box, hand, 0, now); a.Built || !a.AsOf.Equal(built) || len(a.Warnings) != 1 || !strings.Contains(a.Warnings[0], "built when it was m5.xlarge") {
		t.Errorf("hand-made replica: %+v", a)
	}
}
