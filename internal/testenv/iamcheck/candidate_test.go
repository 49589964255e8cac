package iamcheck

import "testing"

// A replica refresh launches the new replica as <replica tag>-candidate
// and renames it <replica tag> once the old one is retired. With tags
// that share no prefix (so that the boxes' own rename statement cannot
// stand in for it, as it does with the e2e suite's circleci_services and
// circleci_services_replica), only that rename is allowed: the candidate
// never becomes a box, no other instance becomes the replica, and no other
// key rides along.
func TestOnlyTheCandidateIsNamedTheReplica(t *testing.T) {
	c := testConfig()
	c.ServicesBox.NameTag, c.Replica.NameTag = "ci-box", "standby"
	ev := newPolicy(t, c)
	rename := func(from, to string, keys ...string) Check {
		ctx := tags("aws:ResourceTag/Name", from, "aws:RequestTag/Name", to)
		ctx["aws:TagKeys"] = append([]string{"Name"}, keys...)
		return Check{Action: "ec2:CreateTags", Type: "instance", Resource: instance("i-1"), Context: ctx}
	}
	for _, tc := range []struct {
		name  string
		check Check
		allow bool
	}{
		{"the verified candidate named the replica", rename("standby-candidate", "standby"), true},
		{"another instance named the replica", rename("web", "standby"), false},
		{"the candidate named the box", rename("standby-candidate", "ci-box"), false},
		{"another key with the rename", rename("standby-candidate", "standby", "circlebot:replica-of"), false},
		{"the retired replica named the replica again", rename("standby-retired", "standby"), false},
	} {
		d := decide(t, ev, tc.check)
		if d.Allowed != tc.allow {
			t.Errorf("%s: allowed %v (%s), want %v", tc.name, d.Allowed, d.Why, tc.allow)
		}
	}
}
