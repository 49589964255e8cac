package motoserver

import (
	"context"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// After a mutation, a read answered before it is answered the same until
// the lag has passed; a read never answered before, and any read after
// the lag, sees moto as it is.
func TestLaggedServesThePreviousStateAfterAMutation(t *testing.T) {
	t.Parallel()
	s := ForTest(t)
	const lag = 500 * time.Millisecond
	p := Lagged(s.URL, lag)
	t.Cleanup(p.Close)
	ctx := context.Background()
	api := ec2.NewFromConfig(AWSConfig(p.URL))
	count := func() int {
		out, err := api.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{})
		if err != nil {
			t.Fatal(err)
		}
		return len(out.Vpcs)
	}
	before := count()
	start := time.Now()
	vpc, err := api.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String("10.9.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	if got := count(); got != before && time.Since(start) < lag {
		t.Errorf("right after CreateVpc: %d VPCs, want the %d from before", got, before)
	}
	// Another read, first asked now, is fresh.
	out, err := api.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{VpcIds: []string{aws.ToString(vpc.Vpc.VpcId)}})
	if err != nil || len(out.Vpcs) != 1 {
		t.Errorf("a read first asked after the mutation: %v %+v", err, out)
	}
	if p.Stale()["DescribeVpcs"] == 0 {
		t.Error("no stale answer counted")
	}
	deadline := time.Now().Add(10 * time.Second)
	for count() != before+1 {
		if time.Now().After(deadline) {
			t.Fatal("the new VPC never showed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if time.Since(start) < lag {
		t.Errorf("the new VPC showed after %s, before the lag of %s", time.Since(start), lag)
	}
}
