package ops

import (
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// A gp2 volume's record carries its baseline IOPS (DescribeVolumes reports
// them); CreateVolume refuses IOPS for gp2 and throughput for anything
// but gp3, so the in-place restore must not send them.
func TestInPlaceCreateVolumeSendsOnlyWhatTheTypeTakes(t *testing.T) {
	plan := RestorePlan{Source: "bk-1", NameTag: "circleci_services", InPlace: &InPlacePlan{AZ: "us-east-1a"}}
	for _, c := range []struct {
		v          InPlaceVolume
		iops, thru int32
	}{
		{InPlaceVolume{Device: "/dev/sda1", Type: "gp2", IOPS: 300, SizeGiB: 100}, 0, 0},
		{InPlaceVolume{Device: "/dev/sdf", Type: "io2", IOPS: 4000, Throughput: 125}, 4000, 0},
		{InPlaceVolume{Device: "/dev/sdg", Type: "gp3", IOPS: 3000, Throughput: 250}, 3000, 250},
		{InPlaceVolume{Device: "/dev/sdh", Type: "st1", IOPS: 500, Throughput: 40}, 0, 0},
	} {
		in := createVolumeInput(plan, c.v, "op-1")
		if aws.ToInt32(in.Iops) != c.iops || aws.ToInt32(in.Throughput) != c.thru {
			t.Errorf("%s %s: iops %d throughput %d, want %d %d", c.v.Device, c.v.Type, aws.ToInt32(in.Iops), aws.ToInt32(in.Throughput), c.iops, c.thru)
		}
	}
}
