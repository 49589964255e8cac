package bot

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/circlebot/circlebot/internal/ops"
)

// A volume encrypted under a key the policy does not name would make a
// restore's launch fail after the old box is gone: doctor fails it, naming
// the key and the device.
func TestDoctorKMSCheckNamesAKeyThePolicyDoesNotCover(t *testing.T) {
	const known, other = "arn:aws:kms:us-east-1:111122223333:key/known", "arn:aws:kms:us-east-1:111122223333:key/other"
	vols := []ops.VolumeSpec{
		{Device: "/dev/sda1"},
		{Device: "/dev/sdf", Encrypted: true, KMSKeyID: known},
		{Device: "/dev/sdg", Encrypted: true, KMSKeyID: other},
	}
	d := &Doctor{KMSKeys: []string{known}, Volumes: func(context.Context) ([]ops.VolumeSpec, error) { return vols, nil }}
	c := d.kmsCheck(context.Background())
	if c.Verdict != VerdictFail || !strings.Contains(c.Detail, other) || !strings.Contains(c.Detail, "/dev/sdg") || strings.Contains(c.Detail, known) || !strings.Contains(c.Fix, "aws.kms_key_arns") {
		t.Errorf("an uncovered key: %+v", c)
	}
	d.KMSKeys = []string{known, other}
	if c := d.kmsCheck(context.Background()); c.Verdict != VerdictOK || !strings.Contains(c.Detail, "2 key(s)") {
		t.Errorf("both covered: %+v", c)
	}
	d.Volumes = func(context.Context) ([]ops.VolumeSpec, error) { return nil, errors.New("boom") }
	if c := d.kmsCheck(context.Background()); c.Verdict != VerdictFail {
		t.Errorf("unreadable volumes: %+v", c)
	}
}
